"""The CPU engine's layer kernels one by one, on one thread, at a workload's shapes: where a step's time goes.

For a standard workload (bench.WORKLOADS), each kernel of one SGD step of one network runs many times over as many
distinct weight matrices as the network has (so that, as in training, they do not all sit in the core's cache), and
its useful rate is printed (GFLOP/s, counting the minibatch's B rows, not the padding), beside its share of a step's
FLOPs.  The last line trains one network of the workload on one thread (the engine's own step, loss and output layer
included) for the same comparison.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_kernels.py W5 --repeats 5
    python bench/bench_kernels.py W5 --isa avx2     # the AVX2 family (compiled for Haswell), on any x86-64 machine

Kernels: fwd0 / dweight0, the first layer (K = D, reading the minibatch's rows out of the dataset; on the wide path
fwd0 also stores them transposed in its first panel, dweight0's operand, as the engine's does); fwd / dinp /
dweight, a hidden layer (K = J = H) by the path the engine takes at that width (cpu.WIDE_H), and on the wide path
dinp once more with its first tiles alone (8 x 32 on AVX-512), the minibatch padded to a multiple of their width
(the layout before the 56-column tiles); output+loss, the output layer forward, the loss, the gradient below it and
its update (12 B H FLOP).  Medians of --repeats.  Every line names the kernel family (codegen.FAMILIES) it timed:
`--isa avx2` runs the whole script again in a process compiled for AVX2 + FMA (fastmlp.isa.ISA_ENV; Numba keeps
that target's compiled kernels beside this machine's, under keys of their own).  `--against COMMIT` compares two
commits: whole runs of each, taking turns, `--rounds` of each, every line tagged with its commit and round.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_kernels.py W4 --isa avx2 --against ce501be
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit

from fastmlp import bench, cpu, isa
from fastmlp.cpu_engine import Engine


@njit(cache=False)
def _fwd(reps, outs, outT, tr, A, rows, nbp, Ws, K, bias, AT, ta):
    for r in range(reps):
        for l in range(Ws.shape[0]):
            cpu._fwd_layer(outs[l], outT, tr, A, rows, nbp, Ws[l], K, bias, np.float32(1), np.float32(1), AT, ta)


@njit(cache=False)
def _dweight(reps, Ws, WTs, form, K, bias, A, rows, AT, dZ, nb):
    """form: 0 the wide path's dweight, 1 the narrow path's first layer's, 2 dweight_t (its hidden layers')."""
    one = np.float32(1)
    for r in range(reps):
        for l in range(Ws.shape[0]):
            if form == 2:
                cpu._dweight_t_layer(Ws[l], WTs[l], K, bias, A, rows, dZ, nb, np.float32(1e-6), one, one)
            else:   # the wide path's kernels read AT on a family with AT_WIDE
                cpu._dweight_layer(Ws[l], K, bias, A, rows, AT, dZ, nb, np.float32(1e-6), one, one, form == 0)


@njit(cache=False)
def _dinp(reps, dZp, dZpT, ApT, dZT, Ws, K):
    for r in range(reps):
        for l in range(Ws.shape[0]):
            cpu._dinp_layer(dZp, dZpT, ApT, dZT, Ws[l], K, np.float32(1))


@njit(cache=False)
def _dinp_32(reps, dZp, dZpT, ApT, dZT, Ws, K):
    """dinp with its first tiles alone (DR x DC: 8 x 32 on AVX-512), the minibatch padded to a multiple of DC
    columns: the layout before the 56-wide tiles, for comparison."""
    J = Ws.shape[1] // K
    for r in range(reps):
        for l in range(Ws.shape[0]):
            for k0 in range(0, K - cpu.DR + 1, cpu.DR):
                for b0 in range(0, ApT.shape[1], cpu.DC):
                    cpu._dinp_d(dZp, dZpT, ApT, dZT, Ws[l], k0, b0, K, J, np.float32(1))


@njit(cache=False)
def _dinp_t(reps, dZp, Ap, dZ, WTs, J, nbp):
    for r in range(reps):
        for l in range(WTs.shape[0]):
            cpu._dinp_t_layer(dZp, Ap, dZ, WTs[l], J, nbp, np.float32(1))


@njit(cache=False)
def _output(reps, Y, rows, nb, nbp, Wo, bo, c, s, wide, aL, g, gT, z, F0):
    for r in range(reps):
        cpu._output_forward(z, aL, Wo, bo, nb, c[-1], s[-1], rows, F0)
        cpu._loss_and_output(Y, rows, nb, nbp, Wo, bo, c, s, np.float32(1e-6), 0, wide, aL, g, gT, z)


def timed(fn, args, reps, repeats):
    with cpu.slp_vectorize():   # as the engine compiles its kernels
        fn(1, *args)            # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(reps, *args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def against(args):
    """Runs of this checkout and of another commit, taking turns (old, new, old, new...), one process each: a
    kernel's rate moves between runs minutes apart on a shared machine, so each commit gets as many runs, spread
    over the same minutes; compare the medians over rounds."""
    from checkouts import checkouts, short
    rest = [args.workload, "--isa", args.isa, "--repeats", str(args.repeats), "--reps", str(args.reps)]
    with checkouts(args.against, None) as (old, new):
        for r in range(args.rounds):
            for src, name in ((old, short(args.against)), (new, "checkout")):
                out = subprocess.run([sys.executable, str(Path(src) / "bench" / "bench_kernels.py"), *rest],
                                     cwd=src, env=os.environ | {"PYTHONPATH": str(src)}, capture_output=True,
                                     text=True)
                if out.returncode:
                    sys.exit(f"bench_kernels in {src} failed:\n{out.stderr}")
                for line in out.stdout.splitlines():
                    if line.startswith("{"):
                        print(json.dumps(json.loads(line) | {"commit": name, "round": r}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", choices=list(bench.WORKLOADS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reps", type=int, default=200, help="kernel calls per layer in one timed run")
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="the kernel family of this CPU, or the AVX2 family (in a subprocess compiled for Haswell)")
    ap.add_argument("--against", metavar="COMMIT",
                    help="alternate whole runs of this checkout with runs of COMMIT's own script in a worktree of it, "
                         "--rounds of each, every line tagged with its commit and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.against:
        return against(args)
    env = {} if args.isa == "native" else isa.ISA_ENV[args.isa]
    if any(os.environ.get(k) != v for k, v in env.items()):   # Numba reads its target as it loads
        sys.exit(subprocess.run([sys.executable, __file__, *sys.argv[1:]], env=os.environ | env).returncode)
    numba.set_num_threads(1)
    w = bench.WORKLOADS[args.workload]
    D, H, L, B, N = w["D"], w["H"], w["L"], w["B"], w["N"]
    Dp, Hp = cpu.round_up(D, cpu.PAD), cpu.round_up(H, cpu.PAD)
    Bp = cpu.round_up(B, cpu.MR_ROWS)
    Bt = cpu.dinp_columns(Bp)
    wide = Hp >= cpu.WIDE_H
    nh = max(L - 1, 2)                                   # distinct hidden weight matrices to cycle through
    rng = np.random.default_rng(0)
    f32 = np.float32
    X = rng.standard_normal((N, Dp), dtype=f32)
    rows = rng.choice(N, Bp, replace=False).astype(cpu.ROW_INDEX)
    ident = np.arange(Bp, dtype=cpu.ROW_INDEX)
    W0 = (rng.standard_normal((1, Dp * Hp), dtype=f32) * f32(0.03))
    Wh = (rng.standard_normal((nh, Hp * Hp), dtype=f32) * f32(0.05))
    WhT = Wh.copy()
    bias = np.zeros(Hp, f32)
    act = np.abs(rng.standard_normal((nh, Bp, Hp), dtype=f32))
    actT = np.zeros((Hp, Bt), f32)
    act0T = np.zeros((Hp, Bt), f32)                      # dweight's operands: the input transposed
    act0T[:, :Bp] = act[0].T
    XT = np.zeros((Dp, Bt), f32)
    XT[:, :Bp] = X[rows].T
    dz = rng.standard_normal((Bt, Hp), dtype=f32) * f32(0.01)
    dzT = cpu.to_tiles(dz.T)                             # dinp's operand, transposed and tiled as the engine's
    dz2, dz2T = np.zeros_like(dz), np.zeros_like(dzT)

    flop_h = 2.0 * B * Hp * Hp
    flop_0 = 2.0 * B * Dp * Hp
    step_flop = 2 * flop_0 + (L - 1) * 3 * flop_h
    results = [
        ("fwd0", _fwd, (act[:1], actT, wide, X, rows, Bp, W0, Dp, bias, XT.copy(), wide and cpu.AT_WIDE), 1,
         flop_0),
        ("dweight0", _dweight, (W0, W0, 0 if wide else 1, Dp, bias, X, rows, XT, dz, B), 1, flop_0),
    ]
    if L > 1:
        results += [("fwd", _fwd, (act, actT, wide, act[0], ident, Bp, Wh, Hp, bias, XT, False), nh, flop_h)]
        if wide:
            B32 = cpu.round_up(Bp, cpu.DC)
            pad32 = [np.zeros(Hp * B32, f32), np.zeros((B32, Hp), f32), np.zeros((Hp, B32), f32),
                     np.zeros((Hp, B32), f32)]
            pad32[2][:, :Bt], pad32[3][:, :Bt] = actT, dz.T   # the same real columns, more padding
            pad32[3] = cpu.to_tiles(pad32[3])
            results += [(f"dinp ({Bt} columns)", _dinp, (dz2, dz2T, actT, dzT, Wh, Hp), nh, flop_h),
                        (f"dinp, {cpu.DR} x {cpu.DC} tiles only ({B32} columns)", _dinp_32,
                         (pad32[1], pad32[0], pad32[2], pad32[3], Wh, Hp), nh, flop_h),
                        ("dweight", _dweight, (Wh, Wh, 0, Hp, bias, act[0], ident, act0T, dz, B), nh, flop_h)]
        else:
            results += [("dinp_t", _dinp_t, (dz2, act[0], dz, WhT, Hp, Bp), nh, flop_h),
                        ("dweight_t", _dweight, (Wh, WhT, 2, Hp, bias, act[0], ident, act0T, dz, B), nh, flop_h)]
    Y = (X[:, 0] > 0).astype(np.int8)
    Wo = rng.standard_normal((2, Hp), dtype=f32) * f32(0.05)
    cs = np.ones(L + 1, f32)
    results += [("output+loss", _output, (Y, rows, B, Bp, Wo, np.zeros(2, f32), cs, cs, wide, act[0], dz2, dz2T,
                                          np.zeros((Bp, 2), f32), np.zeros((0, 2), f32)), 1, 12.0 * B * Hp)]
    for name, fn, fargs, per_rep, flop in results:
        sec = timed(fn, fargs, args.reps, args.repeats)
        calls = args.reps * per_rep
        share = flop * (L - 1 if per_rep > 1 else 1) / step_flop   # the hidden layers' kernels cycle nh >= 2
        print(json.dumps({"workload": args.workload, "family": cpu.FAMILY.name, "kernel": name,
                          "gflops": flop * calls / sec / 1e9, "us_per_call": sec / calls * 1e6,
                          "share_of_step_flops": round(share, 3),
                          "wide": wide}), flush=True)

    # one network, one thread, the engine's whole step
    x, y = bench.workload_data(args.workload)
    eng = Engine(x, y, hidden_width=H, depth=L, batch_size=B, lrs=np.full(1, bench.BENCH_LR), seeds=np.arange(1),
                 init="he", threads=1)
    eng.compile()
    eng.train_epochs(1)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        eng.train_epochs(1)
        times.append(time.perf_counter() - t0)
    rate = N / statistics.median(times)
    print(json.dumps({"workload": args.workload, "family": cpu.FAMILY.name, "kernel": "engine, one network",
                      "network_samples_per_s": rate,
                      "gflops": rate * bench.useful_flops_per_sample(D, H, L) / 1e9}), flush=True)


if __name__ == "__main__":
    main()
