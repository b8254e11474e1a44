"""Does the size of the dataset slow the CPU engine?  One workload's networks trained on its whole dataset and on
its first --small rows, side by side: the same shapes and the same number of steps per timed call (the small
dataset runs N / small epochs per call), the two calls alternating, and the ratio of their rates taken per pair.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_dataset.py W5 --networks 4 --pairs 9

A minibatch reads B random rows of the dataset; a dataset larger than the cache (W5: 8000 x 504 floats, 16 MB) could
push the weights out of it.  A ratio (small / whole) well above 1 says it does; about 1 says the dataset is not
what limits the step.  Prints one JSON line per pair, then the median ratio with its quartiles.
"""
import argparse
import json
import time

import numpy as np

from fastmlp import bench
from fastmlp.cpu_engine import Engine


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=list(bench.WORKLOADS))
    ap.add_argument("--small", type=int, default=1000, help="rows of the small dataset (must divide N)")
    ap.add_argument("--networks", type=int, default=None, help="networks M (default: the workload's)")
    ap.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    ap.add_argument("--pairs", type=int, default=9)
    args = ap.parse_args()
    w = bench.WORKLOADS[args.workload]
    N, M = w["N"], args.networks or w["M"]
    if N % args.small:
        ap.error(f"--small {args.small} does not divide N = {N}")
    if args.threads:
        bench.set_threads(args.threads)
    x, y = bench.workload_data(args.workload)
    sides = {}
    for name, n in (("whole", N), ("small", args.small)):
        eng = Engine(x[:n], y[:n], hidden_width=w["H"], depth=w["L"], batch_size=w["B"],
                     lrs=np.full(M, bench.BENCH_LR), seeds=np.arange(M), init="he")
        eng.compile()
        eng.train_epochs(1)   # warm-up
        sides[name] = (eng.train_epochs, N // n)
    flop = M * N * bench.useful_flops_per_sample(w["D"], w["H"], w["L"])
    ratios = []
    for p in range(args.pairs):
        rates = {}
        for name in (("whole", "small") if p % 2 == 0 else ("small", "whole")):
            run, epochs = sides[name]
            time.sleep(bench.PAUSE)
            t0 = time.perf_counter()
            run(epochs)
            rates[name] = flop / (time.perf_counter() - t0) / 1e9
        ratios.append(rates["small"] / rates["whole"])
        print(json.dumps({"workload": args.workload, "pair": p, "gflops": rates}), flush=True)
    q1, median, q3 = bench._quartiles(ratios)
    print(json.dumps({"workload": args.workload, "networks": M, "whole_N": N, "small_N": args.small,
                      "small_over_whole": median, "q1": q1, "q3": q3, "pairs": args.pairs}))


if __name__ == "__main__":
    main()
