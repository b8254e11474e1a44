"""How long `fastmlp sweep FILE --dry-run` takes to list a sweep of many jobs: the whole command in a fresh process
(reading and checking the grid, hashing every job's identity, looking up the store, printing one line a job), for
grids of 10^4 to 10^6 jobs; one JSON line per size with the median seconds and microseconds per job.

    python bench/bench_dry_run.py --sizes 10000,100000,1000000 --repeats 3

The grid is 2-local with seed, N and L as its axes (a fixed lr, so that no search settings are resolved).
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep_file(directory, n_jobs):
    """A sweep file of n_jobs jobs (a multiple of 100): n_jobs / 100 seeds x 10 N x 10 L."""
    seeds = n_jobs // 100
    text = (f'task = "2-local"\nlr = 0.1\nseed = {list(range(seeds))}\nN = {[1000 * (i + 1) for i in range(10)]}\n'
            f"L = {list(range(1, 11))}\n")
    path = Path(directory) / f"dry-{n_jobs}.toml"
    path.write_text(text)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="numbers of jobs, multiples of 100")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n_jobs in (int(s) for s in args.sizes.split(",")):
            path = sweep_file(tmp, n_jobs)
            cmd = [sys.executable, "-m", "fastmlp.cli", "sweep", str(path), "--dry-run", "--store", f"{tmp}/store"]
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                times.append(time.perf_counter() - t0)
                lines = out.stdout.count("\n")
                if lines != n_jobs:
                    sys.exit(f"expected {n_jobs} lines, got {lines}")
            median = statistics.median(times)
            print(json.dumps({"jobs": n_jobs, "seconds_median": median, "us_per_job": median / n_jobs * 1e6,
                              "repeats": args.repeats, "seconds": times}), flush=True)


if __name__ == "__main__":
    main()
