"""Time to result of Engine.fit: 30 networks (3 learning rates x 10 seeds) of 2-local, D = 500, N = 2000, L = 3,
H = 100, trained to zero training error with the per-epoch stop check; one JSON line.

    python bench/bench_fit.py --repeats 3

Unlike `fastmlp bench` (fixed epochs, training steps only), this includes the stop check and the shrinking active
set, so it is the rate a protocol run sees.
"""
import argparse
import json
import statistics
import time

import numpy as np

from fastmlp import Engine, generate, parse_task
from fastmlp.reference import useful_flops_per_sample
from fastmlp.provenance import cpu_info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    D, N, H, L, B = 500, 2000, 100, 3, 50
    x, y = generate(parse_task("2-local", D=D), 0, "train", 0, N)
    lrs = np.repeat([0.01, 0.02, 0.05], 10)
    seeds = np.tile(np.arange(10), 3)
    times = []
    for _ in range(args.repeats + 1):          # the first run is a warm-up (compilation, page faults)
        engine = Engine(x, y, H, L, B, lrs, seeds)
        engine.compile()
        t0 = time.perf_counter()
        engine.fit(max_epochs=2000)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times[1:])
    samples = int(np.sum(engine.epochs * engine.n_train))
    print(json.dumps({"bench": "fit", "task": "2-local", "D": D, "N": N, "H": H, "L": L, "B": B,
                      "networks": len(lrs), "epochs_total": int(engine.epochs.sum()),
                      "converged": int(engine.converged.sum()), "seconds_median": median,
                      "train_network_samples_per_s": samples / median,
                      "gflops_training_steps": samples * useful_flops_per_sample(D, H, L) / median / 1e9,
                      **cpu_info()}))


if __name__ == "__main__":
    main()
