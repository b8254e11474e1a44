"""Time to result of the whole protocol (`fastmlp run`), batched against network by network; JSON lines.

    python bench/bench_protocol.py --repeats 1

The quick protocol of the issue: 2-local, D = 500, N = 1000, L = 3, H = 100, 10 folds, 20 learning rates in batches
of 4, 10 final repeats, 10,000 test samples.  "batched" trains every optimizer batch (4 x 10 fold networks) in one
engine call and the repeats in another; "per-network" runs the same protocol with one network per engine call, the
way a per-network script does.  Both give the same record (tests/test_protocol.py checks it on a small run), so
the ratio of their wall times is what batching buys.  The two modes alternate, and compilation is done before any
timing.
"""
import argparse
import json
import statistics

from fastmlp import protocol
from fastmlp.provenance import cpu_info
from fastmlp.tasks import parse_task

QUICK = dict(N=1000, L=3, H=100, B=50, folds=10, bo_calls=20, bo_batch=4, repeats=10, n_test=10000, seed=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each mode; the median is reported")
    ap.add_argument("--modes", default="batched,per-network")
    args = ap.parse_args()
    spec = parse_task("2-local", D=500)
    protocol.run(spec, **{**QUICK, "bo_calls": 1, "bo_batch": 1, "folds": 2, "repeats": 1, "n_test": 10,
                          "max_epochs": 1})   # compile (or load) the kernels
    modes = {"batched": None, "per-network": 1}
    wall = {m: [] for m in args.modes.split(",")}
    for _ in range(args.repeats):
        for mode in wall:
            rec = protocol.run(spec, per_call=modes[mode], **QUICK)
            wall[mode].append(rec["timing"]["wall_s"])
            print(json.dumps({"bench": "protocol", "mode": mode, **QUICK, "task": spec.name, "D": spec.D,
                              "wall_s": rec["timing"]["wall_s"], "search_s": rec["timing"]["search_s"],
                              "final_s": rec["timing"]["final_s"], **rec["throughput"],
                              "selected_lr": rec["selected_lr"], "test_error": rec["final"]["test_error"]["mean"],
                              **cpu_info()}), flush=True)
    if len(wall) == 2:
        medians = {m: statistics.median(t) for m, t in wall.items()}
        print(json.dumps({"bench": "protocol", "summary": True, "repeats": args.repeats,
                          "wall_s_median": medians,
                          "per_network_over_batched": medians["per-network"] / medians["batched"]}))


if __name__ == "__main__":
    main()
