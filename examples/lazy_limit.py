"""The lazy limit under the NTK's own conditions: networks in the NTK parameterization trained with the squared loss
to a small training loss, against kernel regression with the analytic NTK of the same depth, on the same training
and test points, as the width H grows.

With --f0 subtract every network trains and is scored as its change from its initial function, f - f0 (exactly 0
at the start: fastmlp.engine.F0S), the setting in which the lazy limit is the NTK predictor itself.

For each task, H and learning rate it trains S networks (seeds 0..S-1) in one engine call and writes one CSV row:
  test_error_net      mean test error of the S networks (sign of f = z_1 - z_0)
  test_error_ntk      test error of the NTK predictor f_ntk(x*) = Theta(x*, X) Theta(X, X)^-1 y
  test_error_lin      mean test error of the S lazy predictions f_lin,s (below), each with its network's f0
  test_error_ens      test error of the seeds' average function mean_s f_s (f0 averages out as 1/sqrt(S))
  dist_mean           |mean_s f_s - f_ntk| / |f_ntk| on the test points (the seeds' average against the kernel)
  dist_each           mean_s |f_s - f_ntk| / |f_ntk|
  dist_lin            mean_s |f_s - f_lin,s| / |f_lin,s|, f_lin,s = f_ntk + f0_s(x*) - Theta(x*, X) Theta^-1 f0_s(X):
                      the lazy prediction that keeps network s's own initial function f0_s (it does not vanish in the
                      NTK parameterization; averaging over seeds removes it only as 1/sqrt(S))
  init_rms            rms of f0 on the test points
  epochs_mean, converged   how long training took, and how many reached the target loss
Norms are root-mean-square over the test points.  The NTK is float64; the networks float32.

    python examples/lazy_limit.py --out docs/results/lazy-limit.csv            # the measurement of docs/results.md
    python examples/lazy_limit.py --H 100,300,1000 --lr 0.1 --out lr01.csv     # the same at a smaller rate
    python examples/lazy_limit.py --plot docs/results/lazy-limit.png --out docs/results/lazy-limit.csv  # its figure
    python examples/lazy_limit.py --H 100,300 --seeds 2 --out quick.csv         # a quick look
    python examples/lazy_limit.py --f0 subtract --out docs/results/lazy-limit-f0.csv   # f - f0 against the NTK
"""
import argparse
import csv
import sys
import time

import numpy as np
import scipy.linalg

from fastmlp import reference
from fastmlp.cpu_engine import Engine
from fastmlp.ntk import ntk_kernel
from fastmlp.tasks import generate, parse_task

COLUMNS = ("task", "D", "N", "L", "H", "lr", "f0", "seeds", "target_loss", "test_error_net", "test_error_net_std",
           "test_error_ntk", "test_error_lin", "test_error_ens", "dist_mean", "dist_each", "dist_lin", "init_rms",
           "epochs_mean", "converged", "train_s")


def rms(a, axis=-1):
    return np.sqrt(np.mean(np.asarray(a) ** 2, axis=axis))


def ntk_operators(x, x_test, L, sigma_w2):
    """(Theta(x*, X) Theta(X, X)^-1 as a function of targets, Theta's Cholesky): f_ntk for any targets (N, k)."""
    K = ntk_kernel(x, None, L, sigma_w2, 0.0)                                   # (N, N)
    K_test = ntk_kernel(x_test, x, L, sigma_w2, 0.0)                            # (n_test, N)
    factor = scipy.linalg.cho_factor(K, lower=True)

    def predict(targets):                                                       # (N, k) -> (n_test, k)
        return K_test @ scipy.linalg.cho_solve(factor, targets)
    return predict


def measure(task, D, N, L, H_list, lrs, n_seeds, n_test, target, max_epochs, sigma_w2, emit, f0="keep"):
    spec = parse_task(task, D=D)
    x, y = generate(spec, 0, "train", 0, N)
    x_test, y_test = generate(spec, 0, "test", 0, n_test)
    t = 2.0 * y_test - 1.0
    predict = ntk_operators(x.astype(np.float64), x_test.astype(np.float64), L, sigma_w2)
    f_ntk = predict((2.0 * y - 1.0)[:, None])[:, 0]                             # (n_test,)
    err_ntk = float(np.mean(np.sign(f_ntk) != t))
    for H in H_list:
        for lr in lrs:
            e = Engine(x, y, H, L, 50, [lr] * n_seeds, np.arange(n_seeds), param="ntk", sigma_w2=sigma_w2,
                       loss="mse", stop="loss", target_loss=target, f0=f0)
            f0_train = reference.margin(e.logits(x).astype(np.float64))        # (S, N)
            f0_test = reference.margin(e.logits(x_test).astype(np.float64))    # (S, n_test)
            t0 = time.perf_counter()
            e.fit(max_epochs)
            train_s = time.perf_counter() - t0
            f = reference.margin(e.logits(x_test).astype(np.float64))          # (S, n_test)
            f_lin = f_ntk + f0_test - predict(f0_train.T).T                     # (S, n_test)
            err = np.mean(np.sign(f) != t, axis=1)                              # (S,)
            row = {"task": task, "D": D, "N": N, "L": L, "H": H, "lr": lr, "f0": f0, "seeds": n_seeds,
                   "target_loss": target,
                   "test_error_net": float(err.mean()), "test_error_net_std": float(err.std(ddof=1)),
                   "test_error_ntk": err_ntk,
                   "test_error_lin": float(np.mean(np.sign(f_lin) != t)),
                   "test_error_ens": float(np.mean(np.sign(f.mean(axis=0)) != t)),
                   "dist_mean": float(rms(f.mean(axis=0) - f_ntk) / rms(f_ntk)),
                   "dist_each": float(np.mean(rms(f - f_ntk) / rms(f_ntk))),
                   "dist_lin": float(np.mean(rms(f - f_lin) / rms(f_lin))),
                   "init_rms": float(rms(f0_test).mean()), "epochs_mean": float(e.epochs.mean()),
                   "converged": int(e.converged.sum()), "train_s": train_s}
            emit(row)


def plot(csv_path, out):
    """Two panels per task from a CSV of this script: the relative distances against H, and the test errors."""
    from matplotlib.figure import Figure
    rows = list(csv.DictReader(open(csv_path)))
    tasks = sorted({r["task"] for r in rows})
    fig = Figure(figsize=(9, 3.6 * len(tasks)), layout="constrained")
    for i, task in enumerate(tasks):
        rs = sorted((r for r in rows if r["task"] == task), key=lambda r: int(r["H"]))
        H = [int(r["H"]) for r in rs]
        ax = fig.add_subplot(len(tasks), 2, 2 * i + 1)
        for key, label in (("dist_lin", "network vs its lazy prediction (with its f0)"),
                           ("dist_mean", "mean of the seeds vs the NTK predictor"),
                           ("dist_each", "network vs the NTK predictor")):
            ax.plot(H, [float(r[key]) for r in rs], marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="width H", ylabel="relative distance on the test points",
               title=f"{task} (D = {rs[0]['D']}, N = {rs[0]['N']}, L = {rs[0]['L']})")
        ax.legend(fontsize="x-small")
        ax = fig.add_subplot(len(tasks), 2, 2 * i + 2)
        for key, label in (("test_error_net", "networks"), ("test_error_lin", "their lazy predictions"),
                           ("test_error_ens", "mean function of the seeds"), ("test_error_ntk", "NTK predictor")):
            ax.plot(H, [float(r[key]) for r in rs], marker="o", label=label)
        ax.set(xscale="log", xlabel="width H", ylabel="test error", title=f"{task}: test error")
        ax.legend(fontsize="x-small")
    fig.savefig(out, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="1-local,2-global")
    ap.add_argument("--D", type=int, default=100, help="input dimension of every task")
    ap.add_argument("--N", type=int, default=1000)
    ap.add_argument("--L", type=int, default=1)
    ap.add_argument("--H", default="100,300,1000,2000,4000")
    ap.add_argument("--lr", default="0.5")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--target-loss", type=float, default=1e-3)
    ap.add_argument("--max-epochs", type=int, default=5000)
    ap.add_argument("--sigma-w2", type=float, default=2.0)
    ap.add_argument("--f0", choices=("keep", "subtract"), default="keep",
                    help="subtract: train and score f - f0, the network's change from its initial function")
    ap.add_argument("--out", required=True, help="CSV file (rows are appended as they are measured)")
    ap.add_argument("--plot", default=None, help="draw the figure of the CSV --out to this file; measure nothing")
    args = ap.parse_args()
    if args.plot:
        plot(args.out, args.plot)
        return
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()

        def emit(row):
            writer.writerow(row)
            fh.flush()
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  file=sys.stderr, flush=True)

        for task in args.tasks.split(","):
            measure(task, args.D, args.N, args.L, [int(h) for h in args.H.split(",")],
                    [float(v) for v in args.lr.split(",")], args.seeds, args.n_test, args.target_loss,
                    args.max_epochs, args.sigma_w2, emit, args.f0)


if __name__ == "__main__":
    main()
