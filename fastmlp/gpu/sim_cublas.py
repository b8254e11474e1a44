"""The host simulator's cuBLAS: the calls fastmlp.gpu.cublas makes through ctypes, with cuBLAS's semantics, in NumPy.

fastmlp.gpu.cublas calls it exactly as it calls libcublas (same function names, same arguments: handles, raw device
pointers, host pointers to alpha and beta), so a wrong GEMM argument fails on the host too:

  gemmStridedBatched  C[i] = alpha op(A[i]) op(B[i]) + beta C[i], i < batchCount, every matrix column-major with
                      its leading dimension, A[i] at A + i strideA (a stride of 0 repeats one matrix). As cuBLAS:
                      CUBLAS_STATUS_INVALID_VALUE (7) for a negative size or a leading dimension below the rows
                      stored; nothing done for m, n or batchCount 0; C is not read when beta = 0 (its NaNs do not
                      carry over) and A, B are not read when alpha = 0 or k = 0; alpha and beta are read during
                      the call (host pointer mode), so a captured GEMM keeps the values it was captured with.
                      Beyond cuBLAS, which would read or write whatever lies there: a matrix that reaches past the
                      allocation it starts in, output matrices that overlap each other, and an output that overlaps
                      an input raise SimulatorError.
  SetStream           the handle's stream; it resets the workspace to cuBLAS's own pool, as cuBLAS documents
  SetWorkspace        the handle's workspace: must lie inside one allocation
  SetMathMode         recorded (TF32 rounding happens only on a device: here float32 GEMMs stay float32)
A GEMM issued while its stream captures a graph is recorded into the graph, and fails if the handle has no
workspace of its own (cuBLAS would allocate one during capture) or if another stream is the one capturing.
"""
import ctypes
import itertools

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .sim import STREAMS, SimulatorError, allocation, capturing

OK, NOT_INITIALIZED, INVALID_VALUE = 0, 1, 7
OP_N, OP_T, OP_C = 0, 1, 2


class _Entry:
    """A library function: callable, with the argtypes / restype attributes ctypes functions have."""

    def __init__(self, f):
        self.f, self.argtypes, self.restype = f, None, None

    def __call__(self, *args):
        return self.f(*args)


def _value(v):
    return v.value if isinstance(v, ctypes.c_void_p) else int(v)


class Handle:
    def __init__(self):
        self.stream = STREAMS[0]     # a new handle works on the default stream
        self.workspace = None          # None: cuBLAS's own pool, which allocates
        self.math_mode = 0
        self.calls = []                # the configuration calls, in order (the tests read them)


class Library:
    """Stands in for libcublas (fastmlp.gpu.device.load_library('cublas') under the simulator)."""
    path = "fastmlp.gpu.sim_cublas"
    _ids = itertools.count(0x7B1A50)

    def __init__(self):
        self.handles = {}
        for name in ("cublasCreate_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2", "cublasSetMathMode"):
            setattr(self, name, _Entry(getattr(self, "_" + name[6:])))
        self.cublasSgemmStridedBatched = _Entry(lambda *a: self._gemm(np.float32, *a))
        self.cublasDgemmStridedBatched = _Entry(lambda *a: self._gemm(np.float64, *a))

    def _handle(self, h):
        return self.handles.get(_value(h))

    def _Create_v2(self, out):
        h = next(self._ids)
        self.handles[h] = Handle()
        out._obj.value = h
        return OK

    def _SetStream_v2(self, h, stream):
        handle = self._handle(h)
        if handle is None:
            return NOT_INITIALIZED
        stream = STREAMS.get(_value(stream or 0))
        if stream is None:
            return INVALID_VALUE
        handle.stream, handle.workspace = stream, None
        handle.calls.append("SetStream")
        return OK

    def _SetWorkspace_v2(self, h, ptr, nbytes):
        handle = self._handle(h)
        if handle is None:
            return NOT_INITIALIZED
        ptr, nbytes = _value(ptr), int(nbytes)
        where = allocation(ptr)
        if nbytes < 0 or where is None or ptr + nbytes > where[0] + where[1]:
            return INVALID_VALUE
        handle.workspace = (ptr, nbytes, where[2])
        handle.calls.append("SetWorkspace")
        return OK

    def _SetMathMode(self, h, mode):
        handle = self._handle(h)
        if handle is None:
            return NOT_INITIALIZED
        handle.math_mode = int(mode)
        handle.calls.append("SetMathMode")
        return OK

    def _gemm(self, dtype, h, transa, transb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch):
        handle = self._handle(h)
        if handle is None:
            return NOT_INITIALIZED
        dtype = np.dtype(dtype)
        m, n, k, lda, ldb, ldc, batch = (int(v) for v in (m, n, k, lda, ldb, ldc, batch))
        sA, sB, sC = int(sA), int(sB), int(sC)
        if transa not in (OP_N, OP_T, OP_C) or transb not in (OP_N, OP_T, OP_C):
            return INVALID_VALUE
        rows_a, cols_a = (m, k) if transa == OP_N else (k, m)
        rows_b, cols_b = (k, n) if transb == OP_N else (n, k)
        if min(m, n, k, batch) < 0 or lda < max(1, rows_a) or ldb < max(1, rows_b) or ldc < max(1, m):
            return INVALID_VALUE
        if m == 0 or n == 0 or batch == 0:
            return OK
        scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        a_val = dtype.type(scalar.from_address(_value(alpha)).value)     # read now: host pointer mode
        b_val = dtype.type(scalar.from_address(_value(beta)).value)
        reads_ab = a_val != 0 and k > 0
        c = _Matrix("C", dtype, C, ldc, m, n, sC, batch)
        if batch > 1 and sC < (n - 1) * ldc + m:
            raise SimulatorError(f"gemm: the {batch} output matrices overlap (strideC {sC} < {(n - 1) * ldc + m})")
        operands = [c]
        if reads_ab:
            a = _Matrix("A", dtype, A, lda, rows_a, cols_a, sA, batch)
            b = _Matrix("B", dtype, B, ldb, rows_b, cols_b, sB, batch)
            for x in (a, b):
                if x.start < c.end and c.start < x.end:
                    raise SimulatorError(f"gemm: the output C overlaps the input {x.name} (undefined in cuBLAS)")
            operands += [a, b]

        def run():
            with np.errstate(all="ignore"):   # overflow to inf, 0 * inf: IEEE results, as on a device, no warning
                compute()

        def compute():
            out = c.view()                                              # (batch, m, n)
            if reads_ab:
                opa, opb = a.view(), b.view()
                opa = opa if transa == OP_N else opa.transpose(0, 2, 1)  # (batch, m, k)
                opb = opb if transb == OP_N else opb.transpose(0, 2, 1)  # (batch, k, n)
                prod = a_val * np.matmul(opa, opb)
            else:
                prod = np.zeros((batch, m, n), dtype)
            out[...] = prod + b_val * out if b_val != 0 else prod
        stream = handle.stream
        recorder = capturing()
        if recorder is not None:
            if recorder is not stream:
                raise SimulatorError("a GEMM on a stream other than the one capturing a graph: the graph "
                                         "would miss it")
            if handle.workspace is None:
                raise SimulatorError("a captured GEMM on a handle without a workspace of its own: cuBLAS "
                                         "would allocate one during capture (cublasSetStream resets the "
                                         "workspace: set the workspace after the stream)")
        stream.issue("cublas gemmStridedBatched", run, [x.owner for x in operands])
        return OK


class _Matrix:
    """batch column-major rows x cols matrices at ptr, leading dimension ld, stride elements apart."""

    def __init__(self, name, dtype, ptr, ld, rows, cols, stride, batch):
        self.name, self.dtype, self.shape = name, dtype, (batch, rows, cols)
        self.strides = (stride * dtype.itemsize, dtype.itemsize, ld * dtype.itemsize)
        if stride < 0:
            raise SimulatorError(f"gemm: a negative stride of {name}")
        ptr = _value(ptr)
        elements = (batch - 1) * stride + (cols - 1) * ld + rows
        self.start, self.end = ptr, ptr + elements * dtype.itemsize
        where = allocation(ptr)
        if where is None:
            raise SimulatorError(f"gemm: {name} ({ptr:#x}) is not in any device allocation")
        if self.end > where[0] + where[1]:
            raise SimulatorError(f"gemm: {name} reaches {self.end - where[0] - where[1]} bytes past the end of "
                                     f"its allocation ({batch} matrices of {rows} x {cols}, ld {ld}, stride {stride})")
        self.owner = where[2]

    def view(self):
        buf = (ctypes.c_char * (self.end - self.start)).from_address(self.start)
        flat = np.frombuffer(buf, self.dtype)
        return as_strided(flat, shape=self.shape, strides=self.strides)
