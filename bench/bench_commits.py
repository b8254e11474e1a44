"""The CPU engine of this checkout against an earlier commit, side by side, as paired timed calls.

For each workload, one worker process per commit builds the workload's networks, compiles and warms up, and then
waits.  The two workers take turns: one timed call of the first, one of the second, and so on for `--pairs` pairs,
with the order inside a pair alternating (ABBA...).  Only one worker runs at a time; the other blocks on its pipe.
The ratio of a pair's rates (new / old) compares two calls made seconds apart, so whatever else slows the machine
for a while slows both; the median of the pairs' ratios is printed with its quartiles, one JSON line per workload.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_commits.py HEAD~1
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_commits.py 6fa0238 --new 0a35e5d

`--new COMMIT` puts a commit in the checkout's place, so that any change in the history can be measured against the
commit before it.  Each commit other than the checkout is checked out into a temporary git worktree (its kernels
compile there once, in its first worker, before any timing).  The workers use the `fastmlp.bench` names
that every commit since the first release has (WORKLOADS, workload_data, set_threads, prepare_fastmlp_cpu).

Why pairs: on a shared 2-core virtual machine the same binary's rate moved by up to 40% between rounds a few minutes
apart (W1: 116 to 183 GFLOP/s), and rounds of whole `fastmlp bench` runs gave per-round ratios from 0.80 to 1.38
for one change; pairs of calls seconds apart are what can resolve a few percent there.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from checkouts import checkouts, short

# A worker: build the workload with the commit's own bench module, one warm-up epoch (compiles or loads the
# kernels), then one timed call of `epochs` epochs per line read from stdin; its seconds on stdout.
WORKER = r"""
import sys, time
from fastmlp import bench as b
name, threads, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
w = b.WORKLOADS[name]
b.set_threads(threads)
x, y = b.workload_data(name)
run = b.prepare_fastmlp_cpu(x, y, w["M"], w["H"], w["L"], w["B"], b.BENCH_LR, 0)
run(1)
print("ready", flush=True)
for _ in sys.stdin:
    t0 = time.perf_counter()
    run(epochs)
    print(time.perf_counter() - t0, flush=True)
"""

# Epochs per timed call: about 0.2 to 1 s of the engine on 2 cores.
EPOCHS = {"W1": 5, "W2": 3, "W3": 3, "W4": 1, "W5": 1, "W6": 2}


class Worker:
    def __init__(self, src, workload, threads, epochs):
        env = os.environ | {"PYTHONPATH": str(src)}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, workload, str(threads), str(epochs)], cwd=src,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.close()
            raise RuntimeError(f"the worker in {src} did not start (said {line!r}); its stderr is above")

    def call(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def workloads_of(src):
    """The names of the standard workloads the commit checked out at `src` defines."""
    out = subprocess.run([sys.executable, "-c", "from fastmlp import bench; print(*bench.WORKLOADS)"], cwd=src,
                         env=os.environ | {"PYTHONPATH": str(src)}, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def quartiles(xs):
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("commit", help="the commit to compare against, e.g. HEAD~1")
    ap.add_argument("--new", default=None, help="a commit to measure in place of the checkout")
    ap.add_argument("--pairs", type=int, default=21, help="timed pairs per workload (the median ratio is printed)")
    ap.add_argument("--workload", action="append", default=None, help="default: W1-W4")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="engine threads (default: every core)")
    args = ap.parse_args()
    workloads = args.workload or ["W1", "W2", "W3", "W4"]
    unknown = [w for w in workloads if w not in EPOCHS]
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; choose from {sorted(EPOCHS)}")
    old = short(args.commit)
    new = short(args.new) if args.new else "checkout"
    with checkouts(old, args.new and new) as (old_src, new_src):
        sides = [(old, old_src), (new, new_src)]
        for name, src in sides:   # before any timing: a workload one commit lacks would stop the run half-way
            missing = [w for w in workloads if w not in workloads_of(src)]
            if missing:
                sys.exit(f"bench_commits: {name} has no workload {', '.join(missing)}")
        for workload in workloads:
            epochs = EPOCHS[workload]
            workers = {name: Worker(src, workload, args.threads, epochs) for name, src in sides}
            try:
                ratios = []
                for p in range(args.pairs):
                    order = sides if p % 2 == 0 else sides[::-1]
                    seconds = {name: workers[name].call() for name, _ in order}
                    ratios.append(seconds[old] / seconds[new])    # rate ratio new / old
                    print(json.dumps({"workload": workload, "pair": p, "seconds": seconds}), flush=True)
            finally:
                for w in workers.values():
                    w.close()
            lo, hi = quartiles(ratios)
            print(json.dumps({"workload": workload, "commit": new, "against": old,
                              "ratio": statistics.median(ratios), "q1": lo, "q3": hi, "pairs": args.pairs,
                              "epochs_per_call": epochs, "threads": args.threads}), flush=True)

if __name__ == "__main__":
    main()
