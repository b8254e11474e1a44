"""NTK kernel regression: Gram-matrix and Cholesky-solve time for N = 5,000 and 20,000 training samples of 2-local,
D = 500, L = 3 (float64), with the process's peak memory; one JSON line per N.

    python bench/bench_ntk.py                    # N = 5000 and 20000, median of 3 timed fits each
    python bench/bench_ntk.py --N 5000 --repeats 1

Each N runs in a fresh subprocess, so its peak resident memory (ru_maxrss) is its own. The fit is checked first:
it must interpolate its training labels. The Gram matrix alone is 8 N^2 bytes (3.2 GB at N = 20,000).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

D, L, TASK = 500, 3, "2-local"


def one(N, repeats, tile):
    """Time kernel_regression on N samples in this process; print its JSON line."""
    from fastmlp import ntk
    from fastmlp.provenance import cpu_info
    from fastmlp.tasks import generate, parse_task

    spec = parse_task(TASK, D=D)
    x, y = generate(spec, 0, "train", 0, N)
    ntk.kernel_regression(x[:200], y[:200], L, tile=tile)           # warm-up: data generator, BLAS, LAPACK
    fits, walls = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit = ntk.kernel_regression(x, y, L, tile=tile)
        walls.append(time.perf_counter() - t0)
        if fit.train_error != 0.0 or fit.train_residual > 1e-6:
            raise SystemExit(f"N = {N}: the fit does not interpolate (residual {fit.train_residual:g})")
        fits.append(fit)
    kernel_s = statistics.median(f.kernel_s for f in fits)
    solve_s = statistics.median(f.solve_s for f in fits)
    info = cpu_info()
    info.pop("threads")                       # Numba's; the kernel runs on NumPy/OpenBLAS threads
    print(json.dumps({
        "bench": "ntk", "task": TASK, "D": D, "L": L, "N": N, "tile": tile, "repeats": repeats,
        "kernel_s": kernel_s, "solve_s": solve_s, "total_s": statistics.median(walls),
        "kernel_entries_per_s": N * N / kernel_s,
        "cholesky_gflops": N ** 3 / 3 / solve_s / 1e9,           # the factorization's FLOP count, N^3 / 3
        "jitter": max(f.jitter for f in fits), "train_residual": max(f.train_residual for f in fits),
        "gram_gb": 8 * N * N / 1e9,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        **info, "numpy": np.__version__,
    }), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, action="append", help="training samples (repeatable) [5000 and 20000]")
    ap.add_argument("--repeats", type=int, default=3, help="timed fits per N; medians are reported")
    ap.add_argument("--tile", type=int, default=None, help="kernel tile size [fastmlp.ntk.TILE]")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)   # the per-N child process
    args = ap.parse_args()
    from fastmlp.ntk import TILE
    tile = args.tile or TILE
    if args.one:
        one(args.N[0], args.repeats, tile)
        return
    for N in args.N or [5000, 20000]:
        subprocess.run([sys.executable, __file__, "--one", "--N", str(N), "--repeats", str(args.repeats),
                        "--tile", str(tile)], check=True)


if __name__ == "__main__":
    main()
