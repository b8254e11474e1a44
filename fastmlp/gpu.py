"""CuPy backend: typed launchers over kernels/*.cu, cuBLAS strided-batched GEMMs, and the GPU engine.

Shape legend (STYLE.md): M networks, S of them in the leading *slots* a call works on, B minibatch, R rows of a
chunk, N samples, D input dim, H hidden width, L hidden layers, C = 2 classes, P the longest training subset.

The engine keeps every network's parameters in the reference layout, one dense array per layer,
W_l (M, fan_in, fan_out) and b_l (M, fan_out), so that each layer of every network is one strided-batched cuBLAS
GEMM. One training step of the S live networks is

    gather_rows                           (S, B, D) minibatches, one per network, from the epoch's order
    L+1 x [GEMM (alpha = c_l), bias_relu]  forward; the last GEMM gives raw logits
    softmax_xent                          loss, dlogits, -lr dlogits, output-bias update
    L x [GEMM da = c dz W^T, GEMM W += c a^T (-lr dz) (beta = 1), relu_backward], GEMM W_0 += c x^T (-lr dz_0)

5 L + 4 launches, and no weight gradient is ever stored: the SGD update is the GEMM's beta = 1 accumulation of
the per-network-scaled gradient. An epoch is `epoch_begin`, `permutation`, the steps, the stop check (the
forward pass over each network's training subset, chunked, and `evaluate`), and `epoch_end`; with graphs on
(the default), the second run of an epoch of the same shape and every later one is one CUDA graph launch.
Networks that stop are masked at once and compacted out of the leading slots once a quarter of the slots is
idle, so finished networks stop costing compute.

CuPy is imported lazily: importing this module never needs it, and `engine_class()` says in one line when the
backend is not usable.
"""
import contextlib
import ctypes
import importlib
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np

from . import reference
from .engine import Engine, _check_positive, check_engine_args, init_stop_state
from .constants import (N_CLASSES, PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1, STREAM_FOLD,
                        STREAM_INIT, STREAM_ORDER, STREAM_TEST_X, STREAM_TRAIN_X)
from .errors import UsageError
from .tasks import SPLIT_STREAMS, _check_sample_range

NO_GPU = "--backend gpu needs CuPy and a CUDA device, and none is usable here; use --backend cpu"

# stem -> the kernels of kernels/<stem>.cu; DTYPE_FREE stems do not use REAL and are compiled once
KERNELS = {
    "rng": ("philox_words", "permutation"),
    "tasks": ("labeled_rows", "gaussian_rows"),
    "forward": ("gather_rows", "bias_relu"),
    "softmax_xent": ("softmax_xent",),
    "backward": ("relu_backward",),
    "evaluate": ("evaluate",),
    "stop": ("epoch_begin", "epoch_end"),
}
DTYPE_FREE = ("rng", "tasks", "stop")
REPORT = ("epochs", "converged", "diverged", "stopped", "train_loss", "train_error")   # epoch_end's report columns

SHARED_WORDS = 48 * 1024 // 4     # 32-bit words of shared memory a block gets without opting in
CUBLAS_WORKSPACE_BYTES = 32 << 20  # NVIDIA's recommendation for Hopper; set explicitly so graph capture never allocates
EVAL_BYTES = 512 << 20             # activations of one stop-check / evaluation chunk of every network
EVAL_ROWS_MAX = 4096
REPACK_AT = 0.75                   # compact the slots when at most this share of them is still training
MAX_NETWORKS = 65535               # grid.y of the per-network kernels


def graphs_default():
    """CUDA graphs on unless FASTMLP_GPU_GRAPHS=0."""
    return os.environ.get("FASTMLP_GPU_GRAPHS", "1") != "0"


# ---------------------------------------------------------------------------------------------- sources
def kernel_dir():
    """The CUDA sources: fastmlp/kernels inside an installed wheel, kernels/ beside the package in a checkout."""
    here = Path(__file__).resolve().parent
    for d in (here / "kernels", here.parent / "kernels"):
        if (d / "common.cuh").is_file():
            return d
    raise FileNotFoundError(f"fastmlp's CUDA sources (kernels/*.cu) are neither in {here / 'kernels'} nor in "
                            f"{here.parent / 'kernels'}; reinstall fastmlp")


_INCLUDE = re.compile(r'^#include "([^"]+)"[ \t]*$', re.M)


def source(stem):
    """kernels/<stem>.cu with its #include "..." lines replaced by the headers' text (once each), so that CuPy's
    on-disk cache, keyed by the source text, sees every byte that is compiled."""
    root = kernel_dir()
    seen = set()

    def expand(path):
        def include(m):
            if m.group(1) in seen:
                return f"// {m.group(1)}: included above"
            seen.add(m.group(1))
            return expand(root / m.group(1))
        return _INCLUDE.sub(include, path.read_text())

    return expand(root / f"{stem}.cu")


def defines(dtype=np.float32):
    """The macros every kernel is compiled with: REAL, and the shared constants of fastmlp.constants."""
    from .rng import _TWO_PI
    real = {"float32": "float", "float64": "double"}[np.dtype(dtype).name]
    return {
        "REAL": real,
        "N_CLASSES": N_CLASSES,
        "PHILOX_M0": f"{PHILOX_M0:#x}u", "PHILOX_M1": f"{PHILOX_M1:#x}u",
        "PHILOX_W0": f"{PHILOX_W0:#x}u", "PHILOX_W1": f"{PHILOX_W1:#x}u",
        "PHILOX_ROUNDS": PHILOX_ROUNDS,
        "STREAM_TRAIN_X": f"{STREAM_TRAIN_X}u", "STREAM_TEST_X": f"{STREAM_TEST_X}u", "STREAM_INIT": f"{STREAM_INIT}u",
        "STREAM_ORDER": f"{STREAM_ORDER}u", "STREAM_FOLD": f"{STREAM_FOLD}u",
        "BOX_MULLER_TWO_PI": repr(float(_TWO_PI)),
    }


def compile_options(dtype=np.float32):
    """NVRTC / nvcc options: C++17 and the -D macros of `defines`."""
    return ("-std=c++17",) + tuple(f"-D{k}={v}" for k, v in defines(dtype).items())


# ---------------------------------------------------------------------------------------------- device
def _cupy():
    try:
        import cupy
    except ImportError:
        raise UsageError(NO_GPU) from None
    return cupy


def available():
    """True when CuPy is importable and reaches a CUDA device."""
    from .provenance import gpu_info
    return gpu_info() is not None


def _require():
    """cupy, or UsageError (one line) when CuPy or a device is missing."""
    if not available():
        raise UsageError(NO_GPU)
    return _cupy()


def engine_class():
    """GpuEngine, or UsageError (one line) when no GPU is usable."""
    _require()
    return GpuEngine


def device_name():
    """The current CUDA device's name."""
    cp = _cupy()
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


class _Device:
    """Per CUDA device: the stream all of fastmlp's GPU work runs on, and its cuBLAS handles."""

    def __init__(self, cp):
        self.stream = cp.cuda.Stream(non_blocking=True)
        self._blas = {}

    def blas(self, tf32):
        if tf32 not in self._blas:
            self._blas[tf32] = Cublas(self.stream, tf32)
        return self._blas[tf32]


_DEVICES = {}
_MODULES = {}
_FUNCTIONS = {}


def _device():
    cp = _cupy()
    dev = cp.cuda.Device().id
    if dev not in _DEVICES:
        _DEVICES[dev] = _Device(cp)
    return _DEVICES[dev]


@contextlib.contextmanager
def _on_device():
    """Run on fastmlp's stream: wait for the caller's stream first (its arrays may be in flight), and finish
    before handing anything back."""
    cp = _cupy()
    dev = _device()
    caller = cp.cuda.get_current_stream()
    if caller.ptr != dev.stream.ptr:
        caller.synchronize()
    with dev.stream:
        yield dev
    dev.stream.synchronize()


def _kernel(name, dtype=np.float32):
    """The compiled kernel `name` for REAL = dtype; each module is compiled once per process (and cached on disk
    by CuPy)."""
    cp = _cupy()
    stem = next(s for s, names in KERNELS.items() if name in names)
    if stem in DTYPE_FREE:
        dtype = np.float32
    key = (cp.cuda.Device().id, stem, np.dtype(dtype).name)
    if (key, name) not in _FUNCTIONS:
        if key not in _MODULES:
            _MODULES[key] = cp.RawModule(code=source(stem), options=compile_options(dtype))
        _FUNCTIONS[key, name] = _MODULES[key].get_function(name)
    return _FUNCTIONS[key, name]


# ---------------------------------------------------------------------------------------------- cuBLAS
def _load_cublas():
    """libcublas through ctypes: the library CuPy uses (found by cuda.pathfinder, as CuPy 14 finds it), else by
    its soname once CuPy has loaded it."""
    names = []
    try:
        from cuda import pathfinder
        names.append(pathfinder.load_nvidia_dynamic_lib("cublas").abs_path)   # loads libcublasLt with it
    except Exception:       # no pathfinder (older CuPy): CuPy's own cuBLAS module links the library
        with contextlib.suppress(Exception):
            getattr(importlib.import_module("cupy_backends.cuda.libs"), "cublas")
    names += ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise UsageError("--backend gpu needs cuBLAS (libcublas.so), which was not found; reinstall cupy-cuda13x")
    vp, i, ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    gemm = [vp, i, i, i, i, i, vp, vp, i, ll, vp, i, ll, vp, vp, i, ll, i]
    for fn, args in (("cublasCreate_v2", [ctypes.POINTER(vp)]), ("cublasSetStream_v2", [vp, vp]),
                     ("cublasSetWorkspace_v2", [vp, vp, ctypes.c_size_t]), ("cublasSetMathMode", [vp, i]),
                     ("cublasSgemmStridedBatched", gemm), ("cublasDgemmStridedBatched", gemm)):
        getattr(lib, fn).argtypes = args
        getattr(lib, fn).restype = i
    return lib


class Cublas:
    """One cuBLAS handle on fastmlp's stream, called through ctypes.

    Not CuPy's wrappers: they refuse to run while a stream is captured into a CUDA graph (cupy_backends'
    cublas.setStream raises NotImplementedError), and a captured epoch is where launch overhead goes away. The
    handle gets its own workspace, so that a captured GEMM never allocates. TF32 tensor-core math only when asked
    (``tf32``; float32 only)."""

    OP_N, OP_T = 0, 1
    DEFAULT_MATH, TF32_TENSOR_OP_MATH = 0, 3

    def __init__(self, stream, tf32=False):
        cp = _cupy()
        self.lib = _load_cublas()
        self.handle = ctypes.c_void_p()
        self._ok(self.lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate_v2")
        self.workspace = cp.empty(CUBLAS_WORKSPACE_BYTES, dtype=cp.uint8)
        self._ok(self.lib.cublasSetWorkspace_v2(self.handle, self.workspace.data.ptr, CUBLAS_WORKSPACE_BYTES),
                 "cublasSetWorkspace_v2")
        self._ok(self.lib.cublasSetStream_v2(self.handle, stream.ptr), "cublasSetStream_v2")
        self.tf32 = bool(tf32)
        self._ok(self.lib.cublasSetMathMode(self.handle, self.TF32_TENSOR_OP_MATH if tf32 else self.DEFAULT_MATH),
                 "cublasSetMathMode")

    @staticmethod
    def _ok(status, what):
        if status != 0:
            raise RuntimeError(f"{what} failed with cuBLAS status {status}")

    def gemm(self, S, p, q, k, a, a_stride, trans_a, b, b_stride, trans_b, out, out_stride, alpha, beta):
        """out[m] (p, q) = alpha op(a[m]) (p, k) @ op(b[m]) (k, q) + beta out[m], m < S: row-major, dense.

        a[m] starts a_stride elements after a[m-1] (0 broadcasts one matrix to every network); a[m] is stored
        (k, p) when trans_a, else (p, k); b[m] (q, k) when trans_b, else (k, q). Row-major out = op(a) op(b) is
        column-major out^T = op(b)^T op(a)^T, so cuBLAS gets b first."""
        dtype = out.dtype
        for name, arr, stride, rows, cols in (("a", a, a_stride, p, k), ("b", b, b_stride, k, q),
                                              ("out", out, out_stride, p, q)):
            _need(f"gemm {name}", arr, dtype, size=(S - 1) * stride + rows * cols)
        if dtype == np.float32:
            fn = self.lib.cublasSgemmStridedBatched
        elif dtype == np.float64:
            fn = self.lib.cublasDgemmStridedBatched
        else:
            raise TypeError(f"gemm: need float32 or float64, got {dtype}")
        alpha_h = np.array([alpha], dtype=dtype)   # host pointer mode: read during the call (and captured)
        beta_h = np.array([beta], dtype=dtype)
        self._ok(fn(self.handle, self.OP_T if trans_b else self.OP_N, self.OP_T if trans_a else self.OP_N,
                    int(q), int(p), int(k), alpha_h.ctypes.data,
                    b.data.ptr, int(k if trans_b else q), int(b_stride),
                    a.data.ptr, int(p if trans_a else k), int(a_stride),
                    beta_h.ctypes.data, out.data.ptr, int(q), int(out_stride), int(S)), "gemmStridedBatched")


# ---------------------------------------------------------------------------------------------- launchers
# Every launcher checks type, dtype, contiguity and size of each array before the launch (CuPy checks nothing
# it passes to a kernel) and casts every scalar to the C type of the kernel's parameter (CuPy passes a Python int
# as long long and a float as double).

def _need(name, a, dtype, shape=None, size=None):
    cp = _cupy()
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name}: need a CuPy array, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: need {np.dtype(dtype).name}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: need a C-contiguous array")
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{name}: need shape {tuple(shape)}, got {a.shape}")
    if size is not None and a.size < size:
        raise ValueError(f"{name}: holds {a.size} elements, the launch touches {size}")


def _i32(v):
    v = int(v)
    if not -2**31 <= v < 2**31:
        raise ValueError(f"{v} does not fit a C int")
    return np.int32(v)


def _u32(v):
    v = int(v)
    if not 0 <= v < 2**32:
        raise ValueError(f"{v} does not fit a C unsigned int")
    return np.uint32(v)


def _real(v, dtype):
    return np.dtype(dtype).type(v)


def _blocks(n, threads):
    return (int(n) + threads - 1) // threads


def philox_words(ctr, key):
    """Philox4x32-10 words of counters ctr (n, 4) uint32 under key (k0, k1) -> (n, 4) uint32 (CuPy)."""
    cp = _cupy()
    ctr = cp.ascontiguousarray(cp.asarray(ctr, dtype=cp.uint32))
    n = ctr.shape[0]
    _need("ctr", ctr, np.uint32, shape=(n, 4))
    out = cp.empty((n, 4), dtype=cp.uint32)
    if n:
        _kernel("philox_words")((_blocks(n, 256),), (256,), (out, ctr, _i32(n), _u32(key[0]), _u32(key[1])))
    return out


def labeled_rows(x, y, offsets, n_shifts, seed, stream, start):
    """Draw samples start.. into x (n, D) float32 and label each into y (n,) int8 from the row just drawn."""
    n, D = x.shape
    _need("x", x, np.float32, shape=(n, D))
    _need("y", y, np.int8, shape=(n,))
    _need("offsets", offsets, np.int32)
    if n:
        _kernel("labeled_rows")((n,), (64,), (x, y, offsets, _i32(offsets.size), _i32(n_shifts), _u32(seed),
                                              _u32(stream), _u32(start), _i32(n), _i32(D)))


def gaussian_rows(z, seed, stream, start):
    """Draw samples start.. into z (n, D) float64 (unrounded: the temperature task filters them)."""
    n, D = z.shape
    _need("z", z, np.float64, shape=(n, D))
    if n:
        _kernel("gaussian_rows")((n,), (64,), (z, _u32(seed), _u32(stream), _u32(start), _i32(n), _i32(D)))


def permutation(order, scratch, subsets, n_sub, seeds, epochs, trained, S):
    """order[m] (P,) = the epoch's Fisher-Yates shuffle of subsets[m, :n_sub[m]] for networks m < S that train."""
    M, P = subsets.shape
    for name, a, dt in (("order", order, np.int32), ("subsets", subsets, np.int32)):
        _need(name, a, dt, shape=(M, P))
    for name, a, dt in (("n_sub", n_sub, np.int32), ("seeds", seeds, np.uint32), ("epochs", epochs, np.int32),
                        ("trained", trained, np.int32)):
        _need(name, a, dt, shape=(M,))
    use_shared = 2 * P <= SHARED_WORDS
    if use_shared:
        scratch = order.view(np.uint32)   # not read in this variant; the kernel still takes a pointer
    _need("scratch", scratch, np.uint32, shape=(M, P))
    if S:
        _kernel("permutation")((S,), (256,), (order, scratch, subsets, n_sub, seeds, epochs, trained, _i32(P),
                                                _i32(use_shared)), shared_mem=8 * P if use_shared else 0)


def gather_rows(out, X, idx, n, trained, diverged, idx_stride, start, R, S):
    """out (S, R, D): row r of network m = X[idx[m * idx_stride + start + r]] if m is live and start + r < n[m]."""
    D = X.shape[1]
    _need("out", out, X.dtype, size=S * R * D)
    _need("X", X, X.dtype)
    _need("idx", idx, np.int32, size=(S - 1) * idx_stride + 1)
    for name, a in (("n", n), ("trained", trained), ("diverged", diverged)):
        _need(name, a, np.int32, size=S)
    if S and R:
        _kernel("gather_rows", X.dtype)((int(R), int(S)), (min(256, 32 * _blocks(D, 32)),),
                                        (out, X, idx, n, trained, diverged, _i32(idx_stride), _i32(start), _i32(R),
                                         _i32(D)))


def bias_relu(z, bias, s, relu, S, R):
    """z (S, R, F) in place: z + s bias[m], through the ReLU when relu."""
    F = bias.shape[1]
    _need("z", z, bias.dtype, size=S * R * F)
    _need("bias", bias, bias.dtype, size=S * F)
    total = S * R * F
    if total:
        _kernel("bias_relu", bias.dtype)((min(_blocks(total, 256), 1 << 20),), (256,),
                                         (z, bias, _real(s, bias.dtype), _i32(bool(relu)), _i32(S), _i32(R),
                                          _i32(F)))


def softmax_xent(dz, dzs, bo, loss_sum, steps, diverged, act, zc, Y, idx, n, trained, lrs, s, idx_stride, start,
                 S, B):
    """Loss and gradient of one step at the output (see kernels/softmax_xent.cu); act (L, M, B, H) is zeroed for a
    network that diverges in this step."""
    dt = bo.dtype
    L, M, Bb, H = act.shape
    if Bb != B:
        raise ValueError(f"act: need (L, M, {B}, H), got {act.shape}")
    for name, a in (("dz", dz), ("dzs", dzs), ("zc", zc)):
        _need(name, a, dt, size=S * B * N_CLASSES)
    _need("bo", bo, dt, size=S * N_CLASSES)
    _need("act", act, dt)
    _need("lrs", lrs, dt, size=S)
    _need("loss_sum", loss_sum, np.float64, size=S)
    for name, a in (("steps", steps), ("diverged", diverged), ("n", n), ("trained", trained)):
        _need(name, a, np.int32, size=S)
    _need("Y", Y, np.int8)
    _need("idx", idx, np.int32, size=(S - 1) * idx_stride + 1)
    if S:
        _kernel("softmax_xent", dt)((S,), (128,), (dz, dzs, bo, loss_sum, steps, diverged, act, zc, Y, idx, n,
                                                   trained, lrs, _real(s, dt), _i32(idx_stride), _i32(start),
                                                   _i32(B), _i32(L), _i32(H), np.int64(M * B * H)))


def relu_backward(dz, dzs, bias, a, lrs, s, S, R):
    """dz (S, R, K) = da * (a > 0) in place, dzs = -lr dz, bias -= lr s sum_r dz."""
    dt = bias.dtype
    K = bias.shape[1]
    for name, arr in (("dz", dz), ("dzs", dzs), ("a", a)):
        _need(name, arr, dt, size=S * R * K)
    _need("bias", bias, dt, size=S * K)
    _need("lrs", lrs, dt, size=S)
    if S:
        _kernel("relu_backward", dt)((_blocks(K, 128), int(S)), (128,),
                                     (dz, dzs, bias, a, lrs, _real(s, dt), _i32(R), _i32(K)))


def evaluate(err, loss, zc, bo, s, Y, idx, n, trained, diverged, idx_stride, start, R, S):
    """err[m] += errors and loss[m] += summed cross-entropy of the chunk's rows, for live networks m < S."""
    dt = bo.dtype
    _need("err", err, np.int64, size=S)
    _need("loss", loss, np.float64, size=S)
    _need("zc", zc, dt, size=S * R * N_CLASSES)
    _need("bo", bo, dt, size=S * N_CLASSES)
    _need("Y", Y, np.int8)
    _need("idx", idx, np.int32)
    for name, a in (("n", n), ("trained", trained), ("diverged", diverged)):
        _need(name, a, np.int32, size=S)
    if S and R:
        _kernel("evaluate", dt)((S,), (256,), (err, loss, zc, bo, _real(s, dt), Y, idx, n, trained, diverged,
                                               _i32(idx_stride), _i32(start), _i32(R)))


def epoch_begin(st, S):
    """Mark the networks that train this epoch and zero their accumulators (st: the slot arrays)."""
    if S:
        _kernel("epoch_begin")((_blocks(S, 128),), (128,), (st["trained"], st["diverged"], st["loss_sum"],
                                                             st["steps"], st["err"], st["eloss"], st["active"],
                                                             _i32(S)))


def epoch_end(report, st, check, max_epochs, S):
    """The stop rule (check) or train_epochs' bookkeeping for networks m < S; report (M, 6) float64."""
    _need("report", report, np.float64, size=S * len(REPORT))
    if S:
        _kernel("epoch_end")((_blocks(S, 128),), (128,),
                             (report, st["epochs"], st["active"], st["stopped"], st["converged"], st["diverged"],
                              st["train_loss"], st["train_error"], st["trained"], st["loss_sum"], st["steps"],
                              st["err"], st["eloss"], st["n"], _i32(bool(check)), _i32(max_epochs), _i32(S)))


# -------------------------------------------------------------------------------------------------- data
def generate(spec, seed, split, start, n):
    """Samples start .. start+n-1 of a split, generated on the GPU -> x (n, D) float32, y (n,) int8 (CuPy).

    Same samples as fastmlp.tasks.generate: Philox words bit for bit, inputs to float rounding, labels exactly."""
    _check_sample_range(seed, split, start, n)
    cp = _require()
    stream = SPLIT_STREAMS[split]
    if n == 0:                                                   # nothing to launch (and no empty FFT plan)
        return cp.empty((0, spec.D), dtype=cp.float32), cp.empty(0, dtype=cp.int8)
    with _on_device():
        if spec.rule == "temperature":
            z = cp.empty((n, spec.D), dtype=cp.float64)
            gaussian_rows(z, seed, stream, start)
            y = (cp.arange(start, start + n, dtype=cp.int64) % 2).astype(cp.int8)   # exactly balanced classes
            return _temperature_rows(z, y, spec), y
        x = cp.empty((n, spec.D), dtype=cp.float32)
        y = cp.empty(n, dtype=cp.int8)
        offsets = cp.asarray(np.asarray(spec.indices, dtype=np.int32))
        labeled_rows(x, y, offsets, spec.D if spec.rule == "global" else 1, seed, stream, start)
        return x, y


def _temperature_rows(z, y, spec):
    """Filter each row of z (n, D) float64 by its class's precision eigenvalues -> x (n, D) float32."""
    cp = _cupy()
    D = spec.D
    q = cp.arange(D // 2 + 1)                                   # rfft frequencies
    roots = [cp.sqrt(1.0 - 2.0 * beta * cp.cos(2.0 * np.pi * q / D)) for beta in (spec.beta1, spec.beta2)]
    root = cp.where((y == 0)[:, None], roots[0][None, :], roots[1][None, :])   # (n, D/2+1)
    return cp.fft.irfft(cp.fft.rfft(z, axis=1) / root, n=D, axis=1).astype(cp.float32)


# ------------------------------------------------------------------------------------------------ engine
class GpuEngine:
    """Train M = len(lrs) networks on one dataset x (N, D), y (N,) in {0, 1} on the GPU; the interface and the
    semantics of fastmlp.engine.Engine (same initial weights, same minibatch orders, same stop rule).

    x, y may be NumPy or CuPy arrays; the dataset is copied to the device once. ``graphs`` (default: on unless
    FASTMLP_GPU_GRAPHS=0) replays each epoch as a CUDA graph; ``tf32`` lets cuBLAS use TF32 tensor cores for the
    float32 GEMMs. ``threads`` is accepted for the common signature and ignored.
    """

    results = Engine.results   # the same NetworkResult records, read from the host copies below

    def __init__(self, x, y, hidden_width, depth, batch_size, lrs, seeds, subsets=None, param="standard",
                 dtype=np.float32, sigma_w2=2.0, sigma_b2=0.0, threads=None, init=reference.DEFAULT_INIT,
                 init_scale=1.0, *, graphs=None, tf32=False):
        cp = _require()
        lrs, seeds, self.dtype, subsets = check_engine_args(
            tuple(x.shape), tuple(y.shape), hidden_width, depth, batch_size, lrs, seeds, subsets, param, dtype,
            sigma_w2, sigma_b2, init, init_scale)
        N, D = x.shape
        H, L, B, M = int(hidden_width), int(depth), int(batch_size), len(lrs)
        if M > MAX_NETWORKS:
            raise UsageError(f"the GPU engine trains at most {MAX_NETWORKS} networks at once (got {M}); "
                             "split the grid into several engine calls")
        if N >= 2**31:
            raise UsageError(f"the GPU engine takes at most 2**31 - 1 training samples (got {N})")
        self.N, self.D, self.H, self.L, self.B, self.M = N, D, H, L, B, M
        self.param, self.lrs, self.seeds = param, lrs, seeds
        self.threads = 1
        self.tf32 = bool(tf32) and self.dtype == np.float32
        self.graphs = graphs_default() if graphs is None else bool(graphs)
        self.graph_error = None          # why graph capture was given up, if it was
        self.graph_launches = 0          # epochs run as one graph launch
        self.n_train = np.array([len(s) for s in subsets])

        init_stop_state(self)

        P = int(self.n_train.max())
        self.P = P
        dt = self.dtype
        c, s = reference.layer_scales(D, H, L, param, sigma_w2, sigma_b2)
        self._c, self._s = [dt.type(v) for v in c], [dt.type(v) for v in s]
        self._slot = np.arange(M)                    # network held by each slot
        self._active = np.zeros(M, bool)             # device `active` flag of each slot, as the host knows it
        self._S = M                                  # leading slots that may still train
        self._graphs, self._warm = {}, set()
        self._eval = None

        sub = np.zeros((M, P), np.int32)
        for m, idx in enumerate(subsets):
            sub[m, :len(idx)] = idx
        params = reference.init_params(D, H, L, seeds, param, init=init, init_scale=init_scale)
        with _on_device() as dev:
            self._dev = dev
            self._blas = dev.blas(self.tf32)
            self._X = cp.ascontiguousarray(cp.asarray(x, dtype=dt))                  # (N, D)
            self._Y = cp.ascontiguousarray(cp.asarray(y, dtype=cp.int8))             # (N,)
            self._W = [cp.asarray(np.ascontiguousarray(W, dtype=dt)) for W, _ in params]   # (M, fan_in, fan_out)
            self._b = [cp.asarray(np.ascontiguousarray(b, dtype=dt)) for _, b in params]   # (M, fan_out)

            def i32(v):
                return cp.asarray(np.asarray(v, np.int32))

            self._st = {                                             # per-slot state, permuted by _repack
                "sub": cp.asarray(sub), "n": i32(self.n_train), "seeds": cp.asarray(seeds.astype(np.uint32)),
                "lrs": cp.asarray(lrs.astype(dt)), "epochs": i32(np.zeros(M)), "active": i32(np.zeros(M)),
                "stopped": i32(np.zeros(M)), "converged": i32(np.zeros(M)), "diverged": i32(np.zeros(M)),
                "trained": i32(np.zeros(M)), "steps": i32(np.zeros(M)),
                "train_loss": cp.full(M, np.nan), "train_error": cp.full(M, np.nan), "loss_sum": cp.zeros(M),
                "eloss": cp.zeros(M), "err": cp.zeros(M, dtype=cp.int64),
            }
            self._n_slot = self.n_train.copy()                       # host copy of st["n"]
            self._order = cp.zeros((M, P), dtype=cp.int32)           # the epoch's minibatch order of each slot
            self._scratch = cp.zeros((M, P), dtype=cp.uint32) if 2 * P > SHARED_WORDS else None
            self._report = cp.zeros((M, len(REPORT)), dtype=cp.float64)
            self._xb = cp.zeros(M * B * D, dtype=dt)                 # (M, B, D) minibatch inputs
            self._act = cp.zeros((L, M, B, H), dtype=dt)             # hidden activations of the minibatch
            self._zc = cp.zeros(M * B * N_CLASSES, dtype=dt)         # raw logits
            self._dlog = cp.zeros(M * B * N_CLASSES, dtype=dt)       # dloss/dlogits
            self._dlog_s = cp.zeros(M * B * N_CLASSES, dtype=dt)     # -lr dloss/dlogits
            self._dz = [cp.zeros(M * B * H, dtype=dt) for _ in range(2)]   # ping-pong: da, then dz in place
            self._dzs = cp.zeros(M * B * H, dtype=dt)                # -lr dz of the layer below
            self._ones = i32(np.ones(M))
            self._zeros = i32(np.zeros(M))

    # ------------------------------------------------------------------------------------------ parameters
    def set_params(self, params):
        """Replace every network's parameters (reference layout: [(W (M, fan_in, fan_out), b (M, fan_out))])."""
        if len(params) != self.L + 1:
            raise ValueError(f"need {self.L + 1} layers of parameters, got {len(params)}")
        with _on_device():
            for l, (W, b) in enumerate(params):
                for dev, host in ((self._W[l], W), (self._b[l], b)):
                    host = np.asarray(host)
                    if host.shape != dev.shape:
                        raise ValueError(f"layer {l}: need shape {dev.shape}, got {host.shape}")
                    dev.set(np.ascontiguousarray(host[self._slot], dtype=self.dtype))

    def params(self):
        """Every network's parameters in the reference layout, as float64 NumPy copies."""
        with _on_device():
            return [(self._by_network(W.get()).astype(np.float64), self._by_network(b.get()).astype(np.float64))
                    for W, b in zip(self._W, self._b)]

    def _by_network(self, a):
        """Rows of a per-slot host array reordered by network."""
        out = np.empty_like(a)
        out[self._slot] = a
        return out

    # ------------------------------------------------------------------------------------------- training
    def compile(self):
        """Compile (or load from CuPy's cache) every kernel for this dtype; returns the seconds it took."""
        t0 = time.perf_counter()
        with _on_device():
            for names in KERNELS.values():
                for name in names:
                    _kernel(name, self.dtype)
        return time.perf_counter() - t0

    def fit(self, max_epochs=2000, progress=None):
        """Train until every network has stopped (converged, diverged or hit max_epochs); returns the results.

        Same stop rule and records as fastmlp.engine.Engine.fit; ``progress(epoch, n_active, n_networks)`` is
        called after every epoch."""
        _check_positive("--max-epochs", max_epochs)
        with _on_device():
            for epoch in range(int(max_epochs)):
                if self._set_active(~self.stopped) == 0:
                    break
                self._epoch(check=True, max_epochs=int(max_epochs))
                if progress is not None:
                    progress(epoch + 1, int((~self.stopped).sum()), self.M)
        return self.results()

    def train_epochs(self, n_epochs):
        """Train every non-diverged network for n_epochs more epochs, ignoring the stop rule (benchmarks)."""
        with _on_device():
            for _ in range(n_epochs):
                if self._set_active(~self.diverged) == 0:
                    return
                self._epoch(check=False, max_epochs=0)

    def _set_active(self, want):
        """Activate the networks `want` (M,) bool on the device; compact the slots if many are idle; returns how
        many train."""
        want_slot = want[self._slot]
        if want_slot[self._S:].any():      # a network compacted out earlier trains again (train_epochs after fit)
            self._S = self.M
        if not np.array_equal(want_slot, self._active):
            self._st["active"].set(want_slot.astype(np.int32))
            self._active = want_slot.copy()
        n = int(want_slot.sum())
        if 0 < n <= REPACK_AT * self._S:
            self._repack()
        return n

    def _repack(self):
        """Move the training networks to the leading slots (stable order), so that batched calls skip the rest."""
        cp = _cupy()
        head = np.flatnonzero(self._active[:self._S])
        rest = np.setdiff1d(np.arange(self.M), head)          # idle slots, then the ones already beyond S
        order = np.concatenate([head, rest])
        perm = cp.asarray(order)
        for arr in self._W + self._b + list(self._st.values()):
            arr[...] = arr[perm]                                 # in place: captured pointers stay valid
        self._slot = self._slot[order]
        self._active = self._active[order]
        self._n_slot = self._n_slot[order]
        self._S = len(head)
        if len(self._graphs) > 16:                             # graphs of other S stay valid, but hold memory
            self._graphs.clear()

    def _epoch(self, check, max_epochs):
        S, B = self._S, self.B
        live = self._active[:S]
        steps = int(-(-self._n_slot[:S][live].max() // B))
        n_check = int(self._n_slot[:S][live].max()) if check else 0
        key = (S, steps, n_check, bool(check), max_epochs if check else 0)
        trained = live.copy()

        def body():
            epoch_begin(self._st, S)
            st = self._st
            permutation(self._order, self._scratch, st["sub"], st["n"], st["seeds"], st["epochs"], st["trained"], S)
            for s in range(steps):
                self._step(S, s)
            if check:
                self._check(S, n_check)
            epoch_end(self._report, st, check, max_epochs, S)

        self._run(key, body)
        rep = self._report[:S].get()                            # one transfer per epoch; waits for the epoch
        nets = self._slot[:S]
        self.epochs[nets] = rep[:, 0].astype(np.int64)
        self.converged[nets] = rep[:, 1] != 0
        self.diverged[nets] = rep[:, 2] != 0
        self.stopped[nets] = rep[:, 3] != 0
        self.train_loss[nets] = rep[:, 4]
        self.train_error[nets] = rep[:, 5]
        now = ~(self.stopped[nets] if check else self.diverged[nets])
        self._active[:S] = np.where(trained, now, self._active[:S])

    def _run(self, key, body):
        """Run an epoch body: eagerly the first time a shape is seen (it loads every kernel and lets cuBLAS pick
        its algorithms), as one CUDA graph launch after that."""
        if not self.graphs:
            body()
            return
        graph = self._graphs.get(key)
        if graph is None:
            if key not in self._warm:
                self._warm.add(key)
                body()
                return
            graph = self._capture(body)
            if graph is None:
                body()
                return
            self._graphs[key] = graph
        graph.launch(self._dev.stream)
        self.graph_launches += 1

    def _capture(self, body):
        """body's launches as a CUDA graph, or None (graphs switched off, with a warning) if capture fails."""
        stream = self._dev.stream
        try:
            stream.begin_capture()
        except Exception as e:
            return self._no_graphs(e)
        try:
            body()
        except Exception as e:
            with contextlib.suppress(Exception):
                stream.end_capture()
            return self._no_graphs(e)
        try:
            return stream.end_capture()
        except Exception as e:
            return self._no_graphs(e)

    def _no_graphs(self, error):
        self.graphs = False
        self.graph_error = f"{type(error).__name__}: {error}"
        warnings.warn(f"fastmlp: CUDA graph capture failed ({self.graph_error}); launching kernels one by one",
                      RuntimeWarning, stacklevel=3)
        return None

    def _forward(self, S, x, x_stride, R, acts, zc):
        """Hidden activations acts[l] (S, R, H) and raw logits zc (S, R, C) = c_L a_L @ W_L of inputs x (S, R, D)
        (x_stride = 0: the same R inputs for every network)."""
        D, H, L = self.D, self.H, self.L
        a, a_stride, K = x, x_stride, D
        for l in range(L):
            out = acts[l]
            self._blas.gemm(S, R, H, K, a, a_stride, False, self._W[l], K * H, False, out, R * H, self._c[l], 0.0)
            bias_relu(out, self._b[l], self._s[l], True, S, R)
            a, a_stride, K = out, R * H, H
        self._blas.gemm(S, R, N_CLASSES, K, a, a_stride, False, self._W[L], K * N_CLASSES, False, zc,
                        R * N_CLASSES, self._c[L], 0.0)

    def _step(self, S, s):
        """One SGD step of the S leading networks: minibatch rows s*B .. s*B+B-1 of each one's epoch order."""
        D, H, L, B, C = self.D, self.H, self.L, self.B, N_CLASSES
        st, W, b, c = self._st, self._W, self._b, self._c
        start = s * B
        gather_rows(self._xb, self._X, self._order, st["n"], st["trained"], st["diverged"], self.P, start, B, S)
        acts = [self._act[l] for l in range(L)]
        self._forward(S, self._xb, B * D, B, acts, self._zc)
        softmax_xent(self._dlog, self._dlog_s, b[L], st["loss_sum"], st["steps"], st["diverged"], self._act,
                     self._zc, self._Y, self._order, st["n"], st["trained"], st["lrs"], self._s[L], self.P, start,
                     S, B)
        dz, dzs, F = self._dlog, self._dlog_s, C
        for l in range(L, 0, -1):
            da = self._dz[(L - l) % 2]
            a = acts[l - 1]                                                           # (S, B, H) input of layer l
            self._blas.gemm(S, B, H, F, dz, B * F, False, W[l], H * F, True, da, B * H, c[l], 0.0)   # da = c dz W^T
            self._blas.gemm(S, H, F, B, a, B * H, True, dzs, B * F, False, W[l], H * F, c[l], 1.0)   # W += c a^T dzs
            relu_backward(da, self._dzs, b[l - 1], a, st["lrs"], self._s[l - 1], S, B)
            dz, dzs, F = da, self._dzs, H
        self._blas.gemm(S, D, H, B, self._xb, B * D, True, dzs, B * H, False, W[0], D * H, c[0], 1.0)

    def _eval_buffers(self):
        """Activation buffers of one evaluation chunk of every network: rows per chunk, inputs, 2 x hidden, logits."""
        if self._eval is None:
            cp = _cupy()
            M, D, H = self.M, self.D, self.H
            per_row = M * (D + 2 * H + N_CLASSES) * self.dtype.itemsize
            R = int(max(1, min(EVAL_ROWS_MAX, EVAL_BYTES // per_row)))
            self._eval = (R, cp.zeros(M * R * D, dtype=self.dtype),
                          [cp.zeros(M * R * H, dtype=self.dtype) for _ in range(2)],
                          cp.zeros(M * R * N_CLASSES, dtype=self.dtype))
        return self._eval

    def _check(self, S, n_check):
        """The stop check: every training network over its whole training subset, in chunks."""
        R, xe, ea, ez = self._eval_buffers()
        st = self._st
        acts = [ea[l % 2] for l in range(self.L)]
        for start in range(0, n_check, R):
            r = min(R, n_check - start)
            gather_rows(xe, self._X, st["sub"], st["n"], st["trained"], st["diverged"], self.P, start, r, S)
            self._forward(S, xe, r * self.D, r, acts, ez)
            evaluate(st["err"], st["eloss"], ez, self._b[self.L], self._s[self.L], self._Y, st["sub"], st["n"],
                     st["trained"], st["diverged"], self.P, start, r, S)

    # ----------------------------------------------------------------------------------------- evaluation
    def _device_xy(self, x, y):
        cp = _cupy()
        if x.ndim != 2 or x.shape[1] != self.D:
            raise ValueError(f"need inputs of shape (n, {self.D}); got {x.shape}")
        if y is not None and tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"need labels of shape ({x.shape[0]},); got {y.shape}")
        x = cp.ascontiguousarray(cp.asarray(x, dtype=self.dtype))
        return x, None if y is None else cp.ascontiguousarray(cp.asarray(y, dtype=cp.int8))

    def _evaluate_into(self, x, y, err, loss):
        """err (M,) += error counts, loss (M,) += summed losses of every slot on device arrays x (n, D), y (n,)."""
        cp = _cupy()
        n, M = x.shape[0], self.M
        R, _, ea, ez = self._eval_buffers()
        idx = cp.arange(n, dtype=cp.int32)
        n_rows = cp.full(M, n, dtype=cp.int32)
        acts = [ea[l % 2] for l in range(self.L)]
        for start in range(0, n, R):
            r = min(R, n - start)
            self._forward(M, x[start:start + r], 0, r, acts, ez)
            evaluate(err, loss, ez, self._b[self.L], self._s[self.L], y, idx, n_rows, self._ones, self._zeros, 0,
                     start, r, M)

    def evaluate(self, x, y):
        """Error counts (M,) and summed losses (M,) of every network on x (n, D), y (n,): host NumPy arrays."""
        cp = _cupy()
        with _on_device():
            x, y = self._device_xy(x, y)
            err = cp.zeros(self.M, dtype=cp.int64)
            loss = cp.zeros(self.M, dtype=cp.float64)
            self._evaluate_into(x, y, err, loss)
            return self._by_network(err.get()), self._by_network(loss.get())

    def logits(self, x):
        """Logits (M, n, C) of every network on x (n, D), as a host NumPy array of the engine's dtype."""
        with _on_device():
            x, _ = self._device_xy(x, None)
            n, M = x.shape[0], self.M
            R, _, ea, ez = self._eval_buffers()
            out = np.zeros((M, n, N_CLASSES), self.dtype)
            acts = [ea[l % 2] for l in range(self.L)]
            for start in range(0, n, R):
                r = min(R, n - start)
                self._forward(M, x[start:start + r], 0, r, acts, ez)
                bias_relu(ez, self._b[self.L], self._s[self.L], False, M, r)
                out[:, start:start + r] = ez[:M * r * N_CLASSES].get().reshape(M, r, N_CLASSES)
            return self._by_network(out)

    def test_metrics(self, chunks):
        """Error rate (M,) and mean loss (M,) over an iterable of (x, y) chunks (host or device arrays)."""
        cp = _cupy()
        with _on_device():
            err = cp.zeros(self.M, dtype=cp.int64)
            loss = cp.zeros(self.M, dtype=cp.float64)
            n = 0
            for x, y in chunks:
                x, y = self._device_xy(x, y)
                self._evaluate_into(x, y, err, loss)
                n += int(x.shape[0])
            return self._by_network(err.get()) / max(n, 1), self._by_network(loss.get()) / max(n, 1)

    def test_error(self, chunks):
        """Error rate (M,) over an iterable of (x, y) chunks."""
        return self.test_metrics(chunks)[0]

    def task_metrics(self, spec, seed, split, n, chunk=8192):
        """Error rate (M,) and mean loss (M,) on n samples of a task's split, generated on the GPU in chunks."""
        _check_sample_range(seed, split, 0, n)
        return self.test_metrics(generate(spec, seed, split, start, min(chunk, n - start))
                                 for start in range(0, n, chunk))

    # ----------------------------------------------------------------------------------------- reporting
    def launches_per_step(self):
        """Kernel and GEMM launches of one training step: gather, L+1 x (GEMM + bias_relu) less the output's
        bias_relu, softmax_xent, L x (2 GEMMs + relu_backward), the first layer's update GEMM."""
        return 5 * self.L + 4

    def flops_per_epoch(self):
        """Useful FLOP of one epoch of every network (DESIGN.md's formula, network-samples x per-sample)."""
        from .bench import useful_flops_per_sample
        return float(self.n_train.sum()) * useful_flops_per_sample(self.D, self.H, self.L)


