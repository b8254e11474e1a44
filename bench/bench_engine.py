"""Throughput of the CPU engine next to the NumPy and PyTorch baselines on W1-W6, after the machine's large-sgemm
rate; one JSON line each.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_engine.py --repeats 5 --out bench.jsonl

The same as `fastmlp bench`; --out also appends the lines to a file.
"""
import argparse

from fastmlp.bench import WORKLOADS, run_bench


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", action="append", choices=sorted(WORKLOADS), help="default: all")
    ap.add_argument("--impl", action="append", choices=["fastmlp-cpu", "numpy", "numpy-procs", "torch"],
                    help="default: all")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="append the JSON lines to this file too")
    args = ap.parse_args()

    def emit(line):
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")

    run_bench(workloads=tuple(args.workload or WORKLOADS), impls=args.impl, repeats=args.repeats,
              threads=args.threads, emit=emit)


if __name__ == "__main__":
    main()
