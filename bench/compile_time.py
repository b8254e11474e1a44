"""How long the CPU engine takes to compile on a first run: the checkout against a commit, each in an empty Numba cache,
side by side, and where the time goes (the generated micro-kernels one by one, and the rest).

    python bench/compile_time.py HEAD~1                   # the checkout against a commit, float32
    python bench/compile_time.py HEAD~1 --dtype float64 --rounds 2

Each round compiles both sides once, in turn (the order alternating), every compile in a fresh process with its own
empty cache, as a fresh install does on its first run.  Prints one JSON line per compile: the seconds
``Engine.compile`` took, and the seconds Numba spent on each micro-kernel (its compile timer, LLVM included); then
one line per side with the median.  Compile time is single-threaded work: a busy machine lengthens it.
"""
import argparse
import json
import statistics
import sys
import tempfile

from checkouts import checkouts, short, worker_json


def worker(dtype):
    """In the side's environment: compile a small engine of every path (narrow and wide hidden layers share the
    kernels: one engine compiles them all), then print the seconds as JSON."""
    import numpy as np

    from fastmlp import _microkernels as mk
    from fastmlp.cpu_engine import Engine
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 13))
    eng = Engine(x, (x[:, 0] > 0).astype(np.int8), hidden_width=7, depth=2, batch_size=10, lrs=np.full(3, 0.1),
                 seeds=np.arange(3), dtype=np.dtype(dtype), threads=2)
    total = eng.compile()
    kernels = {}
    for name in sorted(dir(mk)):
        f = getattr(mk, name)
        for sig in getattr(f, "signatures", []):
            kernels[name] = kernels.get(name, 0.0) + f.get_metadata(sig)["timers"]["compiler_lock"]
    print(json.dumps({"compile_s": total, "kernels_s": kernels}))


def compile_once(src, dtype):
    with tempfile.TemporaryDirectory() as cache:
        return worker_json(__file__, src, [dtype], {"NUMBA_CACHE_DIR": cache})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="a commit")
    ap.add_argument("new", nargs="?", default=None, help="another commit (default: the checkout)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    names = (short(args.old), short(args.new) if args.new else "checkout")
    seconds = {name: [] for name in names}
    with checkouts(args.old, args.new) as sources:
        for r in range(args.rounds):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for i in order:
                res = compile_once(sources[i], args.dtype)
                seconds[names[i]].append(res["compile_s"])
                kernels = res["kernels_s"]
                print(json.dumps({"side": names[i], "round": r, "dtype": args.dtype,
                                  "compile_s": round(res["compile_s"], 1),
                                  "kernels_s": round(sum(kernels.values()), 1),
                                  "by_kernel": {k: round(v, 1) for k, v in kernels.items()}}), flush=True)
    for name in names:
        median = statistics.median(seconds[name])
        print(json.dumps({"side": name, "dtype": args.dtype, "median_compile_s": round(median, 1)}))


if __name__ == "__main__":
    worker(sys.argv[2]) if sys.argv[1:2] == ["--worker"] else main()
