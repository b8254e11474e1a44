"""The one module that names the backends: which engine trains, where data is generated, which array module holds
it, and whether a GPU is usable.  Everything above the engines (protocol, NTK, sweeps, the CLI, the benchmark)
asks here and never imports `fastmlp.cpu_engine` or `fastmlp.gpu` itself.

  cpu   fastmlp.cpu_engine.Engine, Numba kernels; NumPy arrays
  gpu   fastmlp.gpu.GpuEngine, CUDA kernels through CuPy; CuPy arrays (CuPy is imported only when asked for)
"""
import numpy as np

from .errors import UsageError

BACKENDS = ("cpu", "gpu")
NO_GPU = "--backend gpu needs CuPy and a CUDA device, and none is usable here; use --backend cpu"


def check(backend):
    """UsageError (one line) for an unknown backend, or for 'gpu' where no GPU is usable."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r})")
    if backend == "gpu" and not gpu_available():
        raise UsageError(NO_GPU)


def gpu_available():
    """True when the GPU backend can run here (CuPy importable, a CUDA device reachable)."""
    from .gpu.device import available
    return available()


def engine_class(backend="cpu"):
    """The engine class of a backend, one interface for all (fastmlp.engine); UsageError with one line where
    the backend is not usable."""
    check(backend)
    if backend == "gpu":
        from .gpu import GpuEngine
        return GpuEngine
    from .cpu_engine import Engine
    return Engine


def generate_on(backend, spec, seed, split, start, n):
    """n samples of a task's split, (x (n, D), y (n,)), generated on the backend's device: host NumPy arrays
    for 'cpu', CuPy arrays for 'gpu' (the dataset never crosses the bus)."""
    check(backend)
    if backend == "gpu":
        from .gpu.data import generate
        return generate(spec, seed, split, start, n)
    from .tasks import generate
    return generate(spec, seed, split, start, n)


def array_module(backend):
    """numpy for 'cpu', cupy for 'gpu' (the host simulator's under FASTMLP_CUDASIM=1; UsageError where it is not
    usable)."""
    check(backend)
    if backend == "gpu":
        from .gpu.device import cupy_module
        return cupy_module()
    return np


def set_cpu_threads(threads):
    """Use `threads` threads in the CPU engine (Numba) and the BLAS behind NumPy (the NTK's factorizations).

    Numba fixes its most threads when it loads (NUMBA_NUM_THREADS, all cores by default); fewer can be set at any
    time, more only through that variable before the process starts, so more is a UsageError saying so.  An engine
    given more threads than networks splits each network's layers over them (fastmlp.cpu)."""
    import numba
    from threadpoolctl import threadpool_limits

    if threads < 1:
        raise UsageError(f"--threads must be at least 1 (got {threads})")
    most = numba.config.NUMBA_NUM_THREADS
    if threads > most:
        raise UsageError(f"--threads {threads} is more than the {most} this process started with: set "
                         f"NUMBA_NUM_THREADS={threads} in the environment before fastmlp starts")
    numba.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")
