"""The CPU engine of this checkout against an earlier commit, side by side: W1-W4 (or chosen workloads) trained
by each in turn, round after round, in separate processes; prints one JSON line per (round, commit, workload) and
then the ratio of the medians (this checkout / the other), one line per workload.  The two take turns at
going first.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_commits.py HEAD~1 --rounds 3

The other commit is checked out into a temporary git worktree and run from there (its kernels compile once, before
any timing).  Run it on an idle machine: anything else on the cores moves the ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(src, workloads, repeats, extra):
    """`fastmlp bench --impl fastmlp-cpu` of the package in src -> {workload: network-samples/s}."""
    cmd = [sys.executable, "-m", "fastmlp.cli", "bench", "--impl", "fastmlp-cpu", "--repeats", str(repeats),
           *[a for w in workloads for a in ("--workload", w)], *extra]
    env = os.environ | {"PYTHONPATH": str(src)}
    out = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {d["workload"]: d for d in lines if d["workload"] in workloads}   # not the sgemm line of newer commits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("commit", help="the commit to compare against, e.g. HEAD~1")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median over them is compared")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls inside each bench (their median)")
    ap.add_argument("--workload", action="append", default=None, help="default: W1-W4")
    ap.add_argument("--extra", default="", help="more `fastmlp bench` arguments, e.g. '--threads 1'")
    args = ap.parse_args()
    workloads = args.workload or ["W1", "W2", "W3", "W4"]
    extra = args.extra.split()
    rev = subprocess.run(["git", "rev-parse", "--short", args.commit], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for src in (other, ROOT):   # compile both before any timing
                bench(src, workloads[:1], 1, extra + ["--epochs", "1"])
            rates = {rev: {w: [] for w in workloads}, "checkout": {w: [] for w in workloads}}
            for r in range(args.rounds):
                pair = ((rev, other), ("checkout", ROOT))
                for name, src in pair if r % 2 == 0 else pair[::-1]:   # alternate who goes first
                    for w, d in bench(src, workloads, args.repeats, extra).items():
                        rates[name][w].append(d["network_samples_per_s"])
                        print(json.dumps({"round": r, "commit": name, "workload": w, "gflops": d["gflops"],
                                          "network_samples_per_s": d["network_samples_per_s"],
                                          "device": d["device"], "threads": d["threads"]}), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, capture_output=True)
    for w in workloads:
        new, old = statistics.median(rates["checkout"][w]), statistics.median(rates[rev][w])
        print(json.dumps({"workload": w, "against": rev, "ratio": new / old, "checkout_median": new,
                          "other_median": old, "rounds": args.rounds}), flush=True)


if __name__ == "__main__":
    main()
