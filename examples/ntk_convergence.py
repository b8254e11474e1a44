"""The empirical NTK of finite networks against the analytic kernel as the width grows: the relative Frobenius
distance between the mean of S networks' empirical kernels (`fastmlp.ntk.empirical_ntk`, NTK parameterization,
seeds 0..S-1) and `fastmlp.ntk.ntk_kernel`, on 6 inputs of 2-local (D = 10), one CSV row per depth and width.

    python examples/ntk_convergence.py --out docs/results/ntk-convergence.csv      # the numbers of docs/ntk.md

tests/test_ntk.py checks the same convergence on the same inputs; this script writes the numbers it sees.
"""
import argparse
import csv
import sys

import numpy as np

from fastmlp import ntk, reference
from fastmlp.tasks import generate, parse_task

# (depth, widths, networks averaged): test_ntk.py's cases
CASES = ((1, (64, 512, 4096, 32768), 4), (3, (64, 256, 1024), 16))


def rows():
    x, _ = generate(parse_task("2-local", D=10), 0, "train", 0, 6)
    x = x.astype(np.float64)
    for L, widths, n_networks in CASES:
        analytic = ntk.ntk_kernel(x, None, L)
        for H in widths:
            params = reference.init_params(10, H, L, np.arange(n_networks), "ntk")
            emp = ntk.empirical_ntk(params, x).mean(axis=0)
            yield {"L": L, "H": H, "networks": n_networks,
                   "rel_error": float(np.linalg.norm(emp - analytic) / np.linalg.norm(analytic))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="-", help="CSV file (default: stdout)")
    args = ap.parse_args(argv)
    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="")
    writer = csv.DictWriter(out, fieldnames=["L", "H", "networks", "rel_error"], lineterminator="\n")
    writer.writeheader()
    for row in rows():
        writer.writerow(row)
        out.flush()
    if out is not sys.stdout:
        out.close()


if __name__ == "__main__":
    main()
