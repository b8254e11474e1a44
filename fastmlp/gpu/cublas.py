"""cuBLAS through ctypes: one handle per (device, TF32 mode) on fastmlp's stream, and strided-batched GEMMs."""
import ctypes

import numpy as np

from ..errors import UsageError
from .device import cupy_module, install_hint, load_library
from .launch import need

CUBLAS_WORKSPACE_BYTES = 32 << 20  # NVIDIA's recommendation for Hopper; set explicitly so graph capture never allocates


def handle(dev, tf32):
    """The Cublas handle of a device (fastmlp.gpu.device.current_device()) for a TF32 mode, made once."""
    if tf32 not in dev.blas:
        dev.blas[tf32] = Cublas(dev.stream, tf32)
    return dev.blas[tf32]


def _load_cublas():
    """libcublas through ctypes, the very library CuPy uses (fastmlp.gpu.device.load_library: found by
    cuda.pathfinder as CuPy 14 finds it, else by the soname of CuPy's CUDA major version once CuPy's own cuBLAS
    module has linked it), with the prototypes of the calls made here. UsageError (one line) if it is missing."""
    try:
        lib, _ = load_library("cublas")
    except OSError as e:
        raise UsageError(f"--backend gpu needs cuBLAS, which was not found ({e}); {install_hint()}") from None
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
    handle gets its own workspace, so that a captured GEMM never allocates, set after the stream: cublasSetStream
    resets the workspace to cuBLAS's default pool (cuBLAS documentation of cublasSetStream; PyTorch sets the stream
    first for the same reason). TF32 tensor-core math only when asked (``tf32``; float32 only)."""

    OP_N, OP_T = 0, 1
    DEFAULT_MATH, TF32_TENSOR_OP_MATH = 0, 3

    def __init__(self, stream, tf32=False):
        cp = cupy_module()
        self.lib = _load_cublas()
        self.handle = ctypes.c_void_p()
        self._ok(self.lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate_v2")
        self._ok(self.lib.cublasSetStream_v2(self.handle, stream.ptr), "cublasSetStream_v2")   # first: see above
        self.workspace = cp.empty(CUBLAS_WORKSPACE_BYTES, dtype=cp.uint8)
        self._ok(self.lib.cublasSetWorkspace_v2(self.handle, self.workspace.data.ptr, CUBLAS_WORKSPACE_BYTES),
                 "cublasSetWorkspace_v2")
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
            need(f"gemm {name}", arr, dtype, size=(S - 1) * stride + rows * cols)
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
