"""The host simulator of the GPU backend (fastmlp.gpu.sim, sim_cublas, kernels/host_cuda.h) is strict where a device
would fail or silently compute garbage: wrong launch parameters and argument types, barriers some threads skip,
GEMM arguments outside cuBLAS's rules or outside their allocation, host access during graph capture, a workspace
that cuBLAS would reallocate during capture. The kernels themselves are tested against the reference and the CPU
in test_gpu.py, on the simulator where no device is usable."""
import ctypes

import numpy as np
import pytest

from fastmlp import gpu, provenance
from fastmlp.gpu import cublas, sim

pytestmark = pytest.mark.skipif(sim.compiler() is None, reason="the simulator needs a host C++ compiler (g++)")


@pytest.fixture
def cp(monkeypatch):
    """The simulator's array module, with FASTMLP_CUDASIM=1 for this test (also on a machine with a device)."""
    monkeypatch.setenv(provenance.CUDASIM, "1")
    return gpu.device.cupy_module()


def _module(cp, body):
    """A kernel file of common.cuh and `body`, built for the host (float32 REAL)."""
    code = (gpu.kernel_dir() / "common.cuh").read_text() + body
    return cp.RawModule(code=code, options=gpu.compile_options(np.float32))


def test_the_simulator_is_the_array_module_and_reports_itself(cp):
    assert cp is sim and gpu.available()
    assert provenance.gpu_info()["device"] == provenance.SIM_DEVICE
    a = cp.asarray(np.arange(6, dtype=np.float32))
    host = np.arange(6, dtype=np.float32)
    b = cp.asarray(host)
    host[0] = 99                                              # the device copy does not alias the host array
    assert b.get()[0] == 0 and isinstance((a + b) * 2, cp.ndarray) and type(a.get()) is np.ndarray
    with pytest.raises(TypeError, match="does not mix"):
        a + np.ones(6, np.float32)                            # CuPy refuses host arrays in a device expression


def test_a_wrong_launch_fails_on_the_host(cp):
    """What CuPy would pass on without a word (a Python int becomes a long long, any array's pointer is taken) and
    what the driver would refuse (grid, block, shared memory) fails here with the kernel's parameter named."""
    f = gpu.device.kernel("relu_backward")
    S, R, K = 2, 3, 5
    dz, dzs, a = (cp.zeros(S * R * K, dtype=cp.float32) for _ in range(3))
    bias, lrs = cp.zeros(S * K, dtype=cp.float32), cp.ones(S, dtype=cp.float32)
    n, trained, diverged = cp.full(S, R, dtype=cp.int32), cp.ones(S, dtype=cp.int32), cp.zeros(S, dtype=cp.int32)
    good = [dz, dzs, bias, a, lrs, n, trained, diverged, np.float32(0.5), np.int32(0), np.int32(R), np.int32(K)]
    f((1, S), (128,), tuple(good))                            # the launcher's own call
    for i, wrong, match in ((10, R, "long long"), (8, 0.5, "long long"), (8, np.float64(0.5), "float64"),
                            (6, cp.ones(S, dtype=cp.int64), "int32 array"),
                            (2, cp.zeros(S * K, dtype=cp.float64), "float32 array"),
                            (0, np.zeros(S * R * K, np.float32), "device array"),
                            (3, cp.zeros((S * R * K, 2), dtype=cp.float32)[:, 0], "non-contiguous")):
        args = list(good)
        args[i] = wrong
        with pytest.raises(TypeError, match=match):
            f((1, S), (128,), tuple(args))
    for grid, block, shared, match in (((1, 70000), (128,), 0, "grid"), ((1, S), (2048,), 0, "block"),
                                       ((1, S), (128,), 48 * 1024 + 1, "shared memory"), ((0, S), (128,), 0, "grid")):
        with pytest.raises(sim.SimulatorError, match=match):
            f(grid, block, tuple(good), shared_mem=shared)
    with pytest.raises(sim.SimulatorError, match="takes 12 arguments"):
        f((1, S), (128,), tuple(good[:-1]))


def test_barriers_are_real_and_a_skipped_barrier_fails(cp):
    """Threads of a block really wait for each other at __syncthreads and at warp shuffles (a thread reads what the
    next one wrote before the barrier; block_sum over 96 threads), and a barrier that some threads of the block
    skip, undefined on a device, is an error on the host."""
    mod = _module(cp, r'''
extern "C" __global__ void rotate_and_sum(int* out, double* total, int skip) {
    __shared__ int ring[1024];
    __shared__ double red[32];
    const int t = threadIdx.x;
    ring[t] = 10 * t + (int)blockIdx.x;
    if (skip && t == 1) return;
    __syncthreads();
    out[blockIdx.x * blockDim.x + t] = ring[(t + 1) % blockDim.x];
    const double s = block_sum((double)t, red);
    if (t == 0) total[blockIdx.x] = s;
}
''')
    f = mod.get_function("rotate_and_sum")
    T, G = 96, 3
    out, total = cp.zeros(G * T, dtype=cp.int32), cp.zeros(G, dtype=cp.float64)
    f((G,), (T,), (out, total, np.int32(0)))
    t = np.arange(T)
    np.testing.assert_array_equal(out.get().reshape(G, T), 10 * ((t + 1) % T)[None, :] + np.arange(G)[:, None])
    np.testing.assert_array_equal(total.get(), [T * (T - 1) / 2] * G)
    with pytest.raises(sim.SimulatorError, match="others had returned"):
        f((G,), (T,), (out, total, np.int32(1)))
    with pytest.raises(sim.SimulatorError, match="partial warp"):
        f((1,), (40,), (out, total, np.int32(0)))               # block_sum needs whole warps


def test_a_raw_kernel_runs_as_cupys_does(cp):
    """cupy.RawKernel's call, as fastmlp.provenance probes NVRTC with it: one block of 32 threads."""
    x = cp.zeros(32, dtype=cp.int32)
    cp.RawKernel(provenance._PROBE, "fastmlp_probe")((1,), (32,), (x,))
    np.testing.assert_array_equal(x.get(), 7 * np.arange(32) + 1)


def test_a_barrier_the_source_analysis_misses_is_an_error_not_a_no_op(cp):
    """A barrier hidden from fastmlp.gpu.sim.uses_barriers (here behind a macro) runs in a launch without fibers,
    where it cannot wait: the launch fails instead of passing with the barrier skipped."""
    mod = _module(cp, r'''
#define WAIT_FOR_THE_BLOCK __syncthreads
extern "C" __global__ void hidden(int* out) {
    out[threadIdx.x] = 1;
    WAIT_FOR_THE_BLOCK();
}
''')
    with pytest.raises(sim.SimulatorError, match="uses_barriers missed it"):
        mod.get_function("hidden")((1,), (32,), (cp.zeros(32, dtype=cp.int32),))


def test_kernels_with_barriers_are_found_through_the_functions_they_call():
    src = gpu.source("softmax_xent")
    fibers = sim.uses_barriers(src)
    assert fibers == {"softmax_xent": True}                   # through block_sum, warp_sum, __shfl_down_sync
    assert sim.uses_barriers(gpu.source("forward")) == {"gather_rows": False, "bias_relu": False}
    assert sim.uses_barriers(gpu.source("rng")) == {"philox_words": False, "permutation": True}


def _blas(cp):
    stream = cp.cuda.Stream(non_blocking=True)
    return cublas.Cublas(stream), stream


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_cublas_twin_computes_strided_batched_gemms(cp, trans_a, trans_b, dtype):
    """fastmlp.gpu.cublas's row-major gemm through the twin's column-major cuBLAS call: every transpose, a
    broadcast (stride 0) operand, alpha and beta; beta = 0 does not read C (its NaNs do not carry over)."""
    h, stream = _blas(cp)
    g = np.random.default_rng(0)
    S, p, q, k = 3, 5, 7, 4
    a = g.standard_normal((S, k, p) if trans_a else (S, p, k)).astype(dtype)
    b = g.standard_normal((q, k) if trans_b else (k, q)).astype(dtype)           # one matrix for every network
    c = g.standard_normal((S, p, q)).astype(dtype)
    opa = a.transpose(0, 2, 1) if trans_a else a
    opb = b.T if trans_b else b
    for beta in (0.5, 0.0):
        d = cp.asarray(c if beta else np.full_like(c, np.nan))
        with stream:
            h.gemm(S, p, q, k, cp.asarray(a), p * k, trans_a, cp.asarray(b), 0, trans_b, d, p * q, 1.5, beta)
        expected = 1.5 * opa.astype(np.float64) @ opb + (beta * c if beta else 0)
        np.testing.assert_allclose(d.get(), expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


def test_a_wrong_gemm_argument_fails_on_the_host(cp):
    """Leading dimensions below the rows stored are cuBLAS's INVALID_VALUE; a matrix reaching past its allocation,
    overlapping outputs and an output overlapping an input (which cuBLAS would compute into garbage) raise."""
    h, stream = _blas(cp)
    S, p, q, k = 2, 3, 4, 5
    a, b, out = cp.ones(S * p * k, dtype=cp.float32), cp.ones(S * k * q, dtype=cp.float32), cp.zeros(S * p * q,
                                                                                                    dtype=cp.float32)
    alpha, beta = np.array([1.0], np.float32), np.array([0.0], np.float32)
    lib = h.lib
    status = lib.cublasSgemmStridedBatched(h.handle, cublas.Cublas.OP_N, cublas.Cublas.OP_N, q, p, k,
                                           alpha.ctypes.data, b.data.ptr, q - 1, k * q, a.data.ptr, k, p * k,
                                           beta.ctypes.data, out.data.ptr, q, p * q, S)
    assert status == 7                                         # ldb < rows of B: CUBLAS_STATUS_INVALID_VALUE
    with pytest.raises(sim.SimulatorError, match="past the end"):            # a valid ldb that B is too small for
        lib.cublasSgemmStridedBatched(h.handle, cublas.Cublas.OP_N, cublas.Cublas.OP_N, q, p, k, alpha.ctypes.data,
                                      b.data.ptr, q + 1, k * (q + 1), a.data.ptr, k, p * k, beta.ctypes.data,
                                      out.data.ptr, q, p * q, S)
    with pytest.raises(ValueError):
        h.gemm(S + 1, p, q, k, a, p * k, False, b, k * q, False, out, p * q, 1.0, 0.0)   # the launcher's own check
    with pytest.raises(sim.SimulatorError, match="overlap"):
        h.gemm(S, p, q, k, a, p * k, False, b, k * q, False, out, p * q - 1, 1.0, 0.0)
    with pytest.raises(sim.SimulatorError, match="overlaps the input"):
        h.gemm(1, p, k, k, a, p * k, False, b, 0, False, a, p * k, 1.0, 0.0)


def test_capture_records_and_a_graph_replays(cp):
    """Launches and GEMMs during capture are recorded, not run; the graph runs them at each launch, with the
    scalars (alpha, beta) of the capture; host reads during capture fail, as on a device."""
    h, stream = _blas(cp)
    z = cp.zeros(2 * 3 * 4, dtype=cp.float32)
    bias = cp.ones(2 * 4, dtype=cp.float32)
    w, x = cp.ones(4 * 4, dtype=cp.float32), cp.ones(3 * 4, dtype=cp.float32)
    with stream:
        stream.begin_capture()
        gpu.bias_relu(z, bias.reshape(2, 4), 0.5, False, 2, 3)     # z += 0.5
        h.gemm(1, 3, 4, 4, x, 0, False, w, 0, False, z, 0, 1.0, 1.0)   # z[:12] += 4
        with pytest.raises(sim.SimulatorError, match="capture"):
            z.get()
        graph = stream.end_capture()
        assert (z.get() == 0).all()                                # nothing ran yet
        graph.launch(stream)
        graph.launch(stream)
    np.testing.assert_array_equal(z.get(), [9.0] * 12 + [1.0] * 12)


def test_a_workspace_set_before_the_stream_fails_capture(cp):
    """cublasSetStream resets the workspace to cuBLAS's pool: a handle configured in the wrong order would
    allocate inside a captured graph. The wrapper's order passes; the wrong order fails at capture."""
    stream = cp.cuda.Stream(non_blocking=True)
    right = cublas.Cublas(stream)
    assert right.lib.handles[right.handle.value].calls == ["SetStream", "SetWorkspace", "SetMathMode"]
    wrong = cublas.Cublas(stream)
    ws = cp.empty(1 << 20, dtype=cp.uint8)
    lib = wrong.lib
    assert lib.cublasSetWorkspace_v2(wrong.handle, ws.data.ptr, 1 << 20) == 0
    assert lib.cublasSetStream_v2(wrong.handle, ctypes.c_void_p(stream.ptr)) == 0       # resets the workspace
    x, out = cp.ones(4, dtype=cp.float32), cp.zeros(4, dtype=cp.float32)
    with stream:
        stream.begin_capture()
        right.gemm(1, 2, 2, 1, x, 0, False, x, 0, False, out, 0, 1.0, 0.0)
        with pytest.raises(sim.SimulatorError, match="workspace"):
            wrong.gemm(1, 2, 2, 1, x, 0, False, x, 0, False, out, 0, 1.0, 0.0)
        stream.end_capture()
