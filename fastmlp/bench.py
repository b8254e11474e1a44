"""Throughput on the standard workloads (docs/design.md): fastmlp's engine next to NumPy and PyTorch baselines.

Every implementation has one signature, `prepare(x, y, M, H, L, B, lr, seed) -> run(epochs)`: prepare builds M
independent ReLU MLPs (D -> H x L -> 2, softmax cross-entropy, plain SGD) and compiles what it needs; run trains
them for a fixed number of epochs, each epoch a fresh random order per network, and is all that is timed. The
baselines are what a competent engineer writes without custom kernels: all M networks batched through one batched
matmul per layer, backward by hand, float32, updates in place.

Shape legend: M networks, B minibatch (b for the last, smaller one), N samples, D input dim, H hidden width,
L hidden layers, C = 2 classes, K fan-in of a layer.
"""

import functools
import importlib.util
import json
import os
import statistics
import time

import numpy as np

from .backend import gpu_available
from .isa import ISA_ENV, target_info
from .provenance import cpu_name
from .reference import useful_flops_per_sample

# name: (M, D, H, L, B, N).  W5 is the paper's width at the scale of a search batch; W6 has fewer networks than
# cores (the final repeats' tail, one slow network left), where the engine splits each network over the threads.
WORKLOADS = {
    "W1": dict(M=40, D=500, H=100, L=1, B=50, N=1000),
    "W2": dict(M=40, D=500, H=100, L=5, B=50, N=1000),
    "W3": dict(M=40, D=100, H=100, L=9, B=50, N=1000),
    "W4": dict(M=10, D=1000, H=500, L=3, B=50, N=5000),
    "W5": dict(M=20, D=500, H=500, L=5, B=50, N=8000),
    "W6": dict(M=1, D=500, H=500, L=3, B=50, N=5000),
}

# Epochs per timed call: about 0.5-5 s for the NumPy and PyTorch baselines on the project's 2-core CPU.
DEFAULT_EPOCHS = {"W1": 15, "W2": 8, "W3": 7, "W4": 1, "W5": 1, "W6": 3}
SGEMM_N = 4096   # the machine's large-sgemm rate: one (N, N) @ (N, N) float32 product through NumPy's BLAS

# The peers' switches to an instruction set (`fastmlp bench --isa`), read when each library loads, so set before the
# process starts: OpenBLAS's core type (NumPy's BLAS, and the sgemm ceiling), MKL's and PyTorch's dispatch, and
# NumPy's own SIMD loops (its AVX-512 targets turned off).  The engine's is fastmlp.isa.ISA_ENV.
PEER_ISA_ENV = {"avx2": {"OPENBLAS_CORETYPE": "Haswell", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                         "ATEN_CPU_CAPABILITY": "avx2", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}}

BENCH_LR = 0.01  # small enough that no network diverges: non-finite values would time a different code path
C = 2            # output classes


# ---------------------------------------------------------------------------------------------------------------
# Shared by both baselines, so that the same seed gives the same initial weights and minibatch orders.

def _init_params(rng, M, D, H, L):
    """He init N(0, 2/K) for hidden layers, N(0, 1/K) for the output layer, zero biases: [(W (M,K,F), b (M,F))]."""
    sizes = [D] + [H] * L + [C]
    params = []
    for l, (k, f) in enumerate(zip(sizes[:-1], sizes[1:])):
        gain = 2.0 if l < L else 1.0
        W = rng.standard_normal((M, k, f), dtype=np.float32) * np.float32(np.sqrt(gain / k))  # (M, K, F)
        params.append((W, np.zeros((M, f), np.float32)))                                     # (M, F)
    return params


def _epoch_orders(rng, M, N):
    """A fresh random order of the N samples for each network."""
    return rng.permuted(np.tile(np.arange(N, dtype=np.int64), (M, 1)), axis=1)  # (M, N)


def _lr_column(lr, M):
    """Scalar or per-network learning rate as an (M, 1, 1) float32 column."""
    return np.broadcast_to(np.asarray(lr, np.float32), (M,)).reshape(M, 1, 1).copy()


# ---------------------------------------------------------------------------------------------------------------
# Baselines

def prepare_numpy(x, y, M, H, L, B, lr, seed):
    """M networks trained with NumPy batched matmul (np.matmul on (M, B, K) @ (M, K, F) stacks), float32.

    x (N, D) float32, y (N,) int8 in {0, 1}; lr a scalar or (M,). Returns run(epochs) -> [(W (M, K, F), b (M, F))],
    which trains for that many more epochs (setup stays out of any timing of run).
    """
    x = np.ascontiguousarray(x, np.float32)
    N = x.shape[0]
    rng = np.random.default_rng(seed)
    params = _init_params(rng, M, x.shape[1], H, L)
    lr_w = _lr_column(lr, M)                            # (M, 1, 1)
    lr_b = lr_w[:, 0]                                   # (M, 1)
    onehot = np.eye(C, dtype=np.float32)[y]             # (N, C)

    def run(epochs):
        for _ in range(epochs):
            _numpy_epoch(x, onehot, params, rng, lr_w, lr_b, M, N, L, B)
        return params

    return run


def _numpy_epoch(x, onehot, params, rng, lr_w, lr_b, M, N, L, B):
    """One epoch of the NumPy baseline, updating params in place."""
    order = _epoch_orders(rng, M, N)                # (M, N)
    for start in range(0, N, B):
        idx = order[:, start:start + B]             # (M, b)
        b = idx.shape[1]
        acts = [x[idx]]                             # (M, b, D)
        for l, (W, bias) in enumerate(params):
            z = np.matmul(acts[-1], W)              # (M, b, F)
            z += bias[:, None, :]
            if l < L:
                np.maximum(z, 0, out=z)
            acts.append(z)

        # softmax cross-entropy, mean over the minibatch: dlogits = (p - onehot) / b
        dz = acts.pop()                             # (M, b, C)
        dz -= dz.max(axis=2, keepdims=True)
        np.exp(dz, out=dz)
        dz /= dz.sum(axis=2, keepdims=True)
        dz -= onehot[idx]
        dz *= np.float32(1.0 / b)

        for l in range(L, -1, -1):
            W, bias = params[l]
            a = acts[l]                             # (M, b, K)
            dW = np.matmul(a.transpose(0, 2, 1), dz)  # (M, K, F)
            db = dz.sum(axis=1)                     # (M, F)
            if l > 0:
                dz = np.matmul(dz, W.transpose(0, 2, 1))  # (M, b, K), with W before its update
                dz *= a > 0                         # ReLU'
            dW *= lr_w
            W -= dW
            db *= lr_b
            bias -= db


def _numpy_process(x, y, M, H, L, B, lr, seed, start, done):
    """One process of prepare_numpy_procs: its networks on one BLAS thread, timed from `start` (a barrier)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        run = prepare_numpy(x, y, M, H, L, B, lr, seed)
        for n in iter(start.get, None):              # a number of epochs: one timed call; 0: send the parameters
            t0 = time.perf_counter()
            params = run(n)
            done.put(time.perf_counter() - t0 if n else params)


def prepare_numpy_procs(x, y, M, H, L, B, lr, seed, processes=None):
    """The NumPy baseline split over single-threaded processes, one per thread (networks dealt out as evenly as they
    go; process i trains prepare_numpy's networks of seed + i): what a careful user does with NumPy on several cores.
    run(epochs) returns the slowest process's time for the call; run.params() every process's parameters."""
    import multiprocessing as mp

    processes = min(M, processes or _threads())
    ctx = mp.get_context("spawn")    # not fork: this process already runs BLAS and Numba threads
    starts, done = [ctx.Queue() for _ in range(processes)], ctx.Queue()   # a queue to each process, one back
    shares = [M // processes + (i < M % processes) for i in range(processes)]
    procs = [ctx.Process(target=_numpy_process, args=(x, y, m, H, L, B, lr, seed + i, starts[i], done),
                         daemon=True) for i, m in enumerate(shares)]
    for p in procs:
        p.start()

    def run(epochs):
        for start in starts:
            start.put(epochs)
        return max(done.get() for _ in procs)

    def params():
        """Every process's parameters, in process order ([(W, b)] per process)."""
        out = []
        for start in starts:   # one at a time, so that the answer is this process's
            start.put(0)
            out.append(done.get())
        return out

    def close():
        for start in starts:
            start.put(None)
        for p in procs:
            p.join()

    run.timed = True          # run() returns its own time: the processes' setup is outside it
    run.info = lambda: {"processes": processes}
    run.params, run.close = params, close
    return run


def _threads():
    import numba
    return numba.get_num_threads()


def train_numpy(x, y, M, H, L, B, lr, epochs, seed, return_params=False):
    """Train with prepare_numpy for `epochs` epochs; with return_params, a copy of the final parameters."""
    params = prepare_numpy(x, y, M, H, L, B, lr, seed)(epochs)
    return [(W.copy(), bias.copy()) for W, bias in params] if return_params else None


def prepare_torch(x, y, M, H, L, B, lr, seed, threads=None):
    """M networks trained with torch.bmm and a hand-written backward (no autograd), float32, on the CPU.

    Initial weights and minibatch orders come from NumPy exactly as in prepare_numpy, so the same seed trains
    the same networks. Returns run(epochs) -> [(W (M, K, F), b (M, F))] as torch tensors.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    x = np.ascontiguousarray(x, np.float32)
    N = x.shape[0]
    rng = np.random.default_rng(seed)
    params = [(torch.from_numpy(W), torch.from_numpy(bias)) for W, bias in _init_params(rng, M, x.shape[1], H, L)]
    neg_lr_w = torch.from_numpy(-_lr_column(lr, M))     # (M, 1, 1)
    neg_lr_b = neg_lr_w[:, 0]                           # (M, 1)
    xt = torch.from_numpy(x)                            # (N, D)
    onehot = torch.from_numpy(np.eye(C, dtype=np.float32)[y])  # (N, C)

    def run(epochs):
        with torch.no_grad():
            for _ in range(epochs):
                _torch_epoch(torch, xt, onehot, params, rng, neg_lr_w, neg_lr_b, M, N, L, B)
        return params

    return run


def _torch_epoch(torch, xt, onehot, params, rng, neg_lr_w, neg_lr_b, M, N, L, B):
    """One epoch of the PyTorch baseline, updating params in place."""
    order = torch.from_numpy(_epoch_orders(rng, M, N))  # (M, N)
    for start in range(0, N, B):
        idx = order[:, start:start + B]         # (M, b)
        b = idx.shape[1]
        acts = [xt[idx]]                        # (M, b, D)
        for l, (W, bias) in enumerate(params):
            z = torch.baddbmm(bias.unsqueeze(1), acts[-1], W)  # (M, b, F)
            if l < L:
                z.relu_()
            acts.append(z)

        dz = torch.softmax(acts.pop(), dim=2)   # (M, b, C)
        dz.sub_(onehot[idx]).mul_(1.0 / b)

        for l in range(L, -1, -1):
            W, bias = params[l]
            a = acts[l]                         # (M, b, K)
            dW = torch.bmm(a.transpose(1, 2), dz)  # (M, K, F)
            db = dz.sum(dim=1)                  # (M, F)
            if l > 0:
                dz = torch.bmm(dz, W.transpose(1, 2))  # (M, b, K), with W before its update
                dz.mul_(a > 0)                  # ReLU'
            W.addcmul_(dW, neg_lr_w)
            bias.addcmul_(db, neg_lr_b)


def train_torch(x, y, M, H, L, B, lr, epochs, seed, return_params=False, threads=None):
    """Train with prepare_torch for `epochs` epochs; with return_params, NumPy copies of the final parameters."""
    params = prepare_torch(x, y, M, H, L, B, lr, seed, threads)(epochs)
    return [(W.numpy().copy(), bias.numpy().copy()) for W, bias in params] if return_params else None


def prepare_fastmlp_cpu(x, y, M, H, L, B, lr, seed, loss="xent"):
    """fastmlp's batched engine on the CPU backend; run(epochs) trains with no stop rule (fixed work)."""
    from .backend import engine_class

    eng = engine_class("cpu")(x, y, hidden_width=H, depth=L, batch_size=B, lrs=np.full(M, lr),
                              seeds=np.arange(M) + seed, loss=loss, init="he")   # the baselines' init: comparable
    eng.compile()

    def run(epochs):
        eng.train_epochs(epochs)
        if eng.diverged.any():   # a diverged network would stop costing compute and inflate the rate
            raise RuntimeError(f"bench: {int(eng.diverged.sum())} networks diverged at lr {lr}")
        return eng.params()

    return run


def _prepare_fastmlp_gpu(graphs=True, tf32=False):
    """prepare() of fastmlp's engine on the GPU backend: CUDA graphs on or off, TF32 GEMMs or strict float32."""

    def prepare(x, y, M, H, L, B, lr, seed):
        from .backend import engine_class
        from .provenance import gpu_info

        eng = engine_class("gpu")(x, y, hidden_width=H, depth=L, batch_size=B, lrs=np.full(M, lr),
                                  seeds=np.arange(M) + seed, graphs=graphs, tf32=tf32)
        eng.compile()
        eng.train_epochs(2)      # the first epoch of a shape runs eagerly, the second is captured: neither is timed

        def run(epochs):
            eng.train_epochs(epochs)      # ends with the epoch's report copied to the host: the GPU is done
            if eng.diverged.any():
                raise RuntimeError(f"bench: {int(eng.diverged.sum())} networks diverged at lr {lr}")
            return eng

        run.info = lambda: {"device": gpu_info()["device"], "graphs": eng.graphs, "graph_error": eng.graph_error,
                            "graph_launches": eng.graph_launches, "tf32": eng.tf32,
                            "launches_per_step": eng.launches_per_step()}
        return run

    return prepare


def _torch_available():
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


# name -> prepare(x, y, M, H, L, B, lr, seed) -> run(epochs)
IMPLS = {"fastmlp-cpu": prepare_fastmlp_cpu, "numpy": prepare_numpy, "numpy-procs": prepare_numpy_procs}
if _torch_available():
    IMPLS["torch"] = prepare_torch
# The CPU engine with the squared losses (asked for by name): their cost against cross-entropy's, side by side.
LOSS_IMPLS = {f"fastmlp-cpu-{loss}": functools.partial(prepare_fastmlp_cpu, loss=loss) for loss in ("mse", "hinge2")}

# The GPU engine, as used (graphs, float32), with one launch per kernel (no graphs: the launch overhead measured),
# and with TF32 tensor-core GEMMs (asked for explicitly; recorded in the JSON line).
GPU_IMPLS = {"fastmlp-gpu": _prepare_fastmlp_gpu(), "fastmlp-gpu-nograph": _prepare_fastmlp_gpu(graphs=False),
             "fastmlp-gpu-tf32": _prepare_fastmlp_gpu(tf32=True)}


# ---------------------------------------------------------------------------------------------------------------
# Timing

def set_threads(threads):
    """Use `threads` threads in Numba, PyTorch (if installed) and the BLAS behind NumPy (through threadpoolctl).

    Without threadpoolctl, NumPy's BLAS keeps the threads it started with (OPENBLAS_NUM_THREADS or all cores).
    """
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if _torch_available():
        import torch

        torch.set_num_threads(threads)
    if importlib.util.find_spec("threadpoolctl") is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")


def workload_data(workload):
    """The workload's training set: x standard normal (N, D) float32, y = (x0 * x1 > 0) int8 (N,)."""
    w = WORKLOADS[workload]
    x = np.random.default_rng(0).standard_normal((w["N"], w["D"]), dtype=np.float32)  # (N, D)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int8)                                         # (N,)
    return x, y


def _timed(run, epochs):
    """Seconds of one call run(epochs): the run's own timing when it keeps one (``run.timed``), else the wall time."""
    t0 = time.perf_counter()
    own = run(epochs)
    return own if getattr(run, "timed", False) else time.perf_counter() - t0


PAUSE = 1.0   # seconds between two timed calls: the BLAS and OpenMP threads of the last one stop spinning first


def bench_impls(impls, workload, epochs, repeats, threads, lr=BENCH_LR, seed=0, networks=None, sgemm=False):
    """Every impl (name -> prepare) on one workload, in rounds; returns (records, rounds).

    All are set up (initialization, JIT compilation) and run one warm-up epoch first; then each of `repeats` rounds
    times one call of `epochs` epochs of each impl, the order rotating from round to round, and with ``sgemm`` one
    large-sgemm product (bench_sgemm's), so that a busy or quiet spell of the machine falls on every impl alike.
    Calls are PAUSE seconds apart: a thread pool that spins on after its call would otherwise take cores from the
    next one.
    Each timed call continues training the same networks, so every call does the same work.  records: one dict per
    impl (the median of its calls; what bench_impl returns); rounds: per round, name -> seconds ("sgemm" included).
    ``networks`` overrides the workload's M.  A run function may carry ``info()``, extra fields for its record (the
    GPU's device name, graphs, TF32), and ``close()``, called at the end."""
    w = WORKLOADS[workload]
    M, D, H, L, B, N = (w[k] for k in ("M", "D", "H", "L", "B", "N"))
    M = int(networks or M)
    set_threads(threads)
    x, y = workload_data(workload)

    runs = {}
    rounds = []
    try:
        for name, prepare in impls.items():
            runs[name] = prepare(x, y, M, H, L, B, lr, seed)
            runs[name](1)
        if sgemm:
            runs["sgemm"] = _sgemm_call(SGEMM_N)
            runs["sgemm"](1)
        names = list(runs)
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            rnd = {}
            for name in order:
                time.sleep(PAUSE)
                rnd[name] = _timed(runs[name], 1 if name == "sgemm" else epochs)
            rounds.append(rnd)
    finally:
        for run in runs.values():
            if callable(getattr(run, "close", None)):
                run.close()

    records = []
    for name in impls:
        median = statistics.median(rnd[name] for rnd in rounds)
        rate = M * N * epochs / median
        info = runs[name].info() if callable(getattr(runs[name], "info", None)) else {}
        records.append({
            "workload": workload, "impl": name,
            "M": M, "D": D, "H": H, "L": L, "B": B, "N": N,
            "epochs": epochs, "repeats": repeats,
            "seconds_median": median,
            "network_samples_per_s": rate,
            "gflops": rate * useful_flops_per_sample(D, H, L) / 1e9,
            "threads": threads, "dtype": "float32",
            "device": cpu_name(),
            **info,
        })
    return records, rounds


def bench_impl(name, prepare, workload, epochs, repeats, threads, lr=BENCH_LR, seed=0, networks=None):
    """Median wall time of `repeats` training runs of `epochs` epochs of one impl on a workload, as one JSON-ready
    dict (bench_impls with that impl alone)."""
    return bench_impls({name: prepare}, workload, epochs, repeats, threads, lr, seed, networks)[0][0]


def _quartiles(values):
    """(first quartile, median, third quartile) of a list."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def round_ratios(records, rounds, ours="fastmlp"):
    """Per impl whose name starts with `ours`, its ratios measured round by round, as JSON-ready dicts: its rate over
    the best peer's of the same round (peers: the impls not starting with `ours`), and over the sgemm rate of the same
    round when the rounds hold one; medians and quartiles over the rounds.  A ratio of two medians taken minutes apart
    moves with the machine's load; a ratio within a round does much less."""
    by_name = {r["impl"]: r for r in records}
    work = {name: r["gflops"] * r["seconds_median"] for name, r in by_name.items()}   # GFLOP per call
    peers = [n for n in by_name if not n.startswith(ours)]
    out = []
    for name in by_name:
        if not name.startswith(ours) or not (peers or "sgemm" in rounds[0]):
            continue
        line = {"workload": by_name[name]["workload"], "impl": name, "ratios": "per round", "rounds": len(rounds)}
        if peers:
            best = [max(peers, key=lambda p: work[p] / rnd[p]) for rnd in rounds]
            q1, q2, q3 = _quartiles([work[name] / rnd[name] / (work[b] / rnd[b]) for rnd, b in zip(rounds, best)])
            line.update(best_peer=max(peers, key=best.count), vs_best_peer=q2, vs_best_peer_q1=q1,
                        vs_best_peer_q3=q3)
        if "sgemm" in rounds[0] and "gpu" not in name:   # the CPU's ceiling; no measure of a GPU
            sgemm_gflop = 2 * SGEMM_N ** 3 / 1e9
            q1, q2, q3 = _quartiles([work[name] / rnd[name] / (sgemm_gflop / rnd["sgemm"]) for rnd in rounds])
            line.update(of_sgemm=q2, of_sgemm_q1=q1, of_sgemm_q3=q3)
        out.append(line)
    return out


def _sgemm_call(n):
    """run(k): k (n, n) @ (n, n) float32 products through NumPy's BLAS, on the threads set_threads gave it."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)   # (n, n)
    b = a.T.copy()

    def run(k):
        for _ in range(k):
            a @ b
    return run


def bench_sgemm(threads, repeats=3, n=SGEMM_N):
    """The machine's large-sgemm rate: the median of `repeats` (n, n) @ (n, n) float32 products through NumPy's BLAS on
    `threads` threads, as one JSON-ready dict (the ceiling a GEMM on shapes made for it reaches here)."""
    set_threads(threads)
    run = _sgemm_call(n)
    run(1)                                                                    # warm-up: BLAS threads started
    median = statistics.median(_timed(run, 1) for _ in range(repeats))
    return {"workload": f"sgemm {n}", "impl": "sgemm", "seconds_median": median, "gflops": 2 * n**3 / median / 1e9,
            "repeats": repeats, "threads": threads, "dtype": "float32", "device": cpu_name()}


def isa_env(isa):
    """The environment of a run restricted to an instruction set ('native': none): the engine's and the peers'."""
    return {} if isa == "native" else {**ISA_ENV[isa], **PEER_ISA_ENV[isa]}


def isa_report(isa="native"):
    """What this process runs on, as each library reports it (JSON-ready): the engine's kernel family and target,
    the BLAS libraries threadpoolctl finds (OpenBLAS's core type is its 'architecture'), PyTorch's CPU capability,
    NumPy's AVX-512 dispatch, and the switches of isa_env as set.  MKL says nothing of its dispatch: its switch is
    reported as set, not as taken."""
    out = {"isa": isa, "fastmlp-cpu": target_info()}
    if importlib.util.find_spec("threadpoolctl") is not None:
        from threadpoolctl import threadpool_info
        out["blas"] = [{k: lib.get(k) for k in ("internal_api", "version", "architecture")}
                       for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if _torch_available():
        import torch
        out["torch"] = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "mkl": torch.backends.mkl.is_available()}
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        out["numpy_dispatch"] = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    except ImportError:   # NumPy 1.x keeps them elsewhere; leave them out
        pass
    keys = sorted({k for env in PEER_ISA_ENV.values() for k in env} | {k for env in ISA_ENV.values() for k in env})
    out["env"] = {k: os.environ[k] for k in keys if k in os.environ}
    return out


def run_bench(workloads=tuple(WORKLOADS), impls=None, epochs=None, repeats=3, threads=None, emit=print,
              networks=None, sgemm=True, isa=None):
    """Every impl on every workload, side by side in this process, in rounds (bench_impls); through `emit`, one JSON
    line per (workload, impl), then per workload one line of per-round ratios for each fastmlp impl (round_ratios).

    impls: names from IMPLS or GPU_IMPLS, or a dict name -> trainer (default: all of IMPLS, and fastmlp-gpu when
    a GPU is usable). epochs: an int for every workload, or None for DEFAULT_EPOCHS. networks: M for every workload
    instead of its own. sgemm: first a line with the machine's large-sgemm rate (bench_sgemm), and one sgemm
    product in every round. isa: a name of isa_env that this process was started under: first a line that says what
    each library runs (isa_report).
    """
    known = {**IMPLS, **LOSS_IMPLS, **GPU_IMPLS}
    if impls is None:
        impls = dict(IMPLS)
        if gpu_available():
            impls["fastmlp-gpu"] = GPU_IMPLS["fastmlp-gpu"]
    elif not isinstance(impls, dict):
        unknown = [n for n in impls if n not in known]
        if unknown:
            raise ValueError(f"unknown impl(s) {unknown}; choose from {list(known)} (torch needs PyTorch installed)")
        impls = {n: known[n] for n in impls}
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    threads = threads or os.cpu_count()

    if isa is not None:
        emit(json.dumps(isa_report(isa)))
    if sgemm:   # the ceiling, measured in the same run as the workloads
        emit(json.dumps(bench_sgemm(threads, repeats)))
    for workload in workloads:
        n_epochs = DEFAULT_EPOCHS[workload] if epochs is None else epochs
        records, rounds = bench_impls(impls, workload, n_epochs, repeats, threads, networks=networks, sgemm=sgemm)
        for line in records + round_ratios(records, rounds):
            emit(json.dumps(line))
