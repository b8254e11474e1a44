"""The GPU's kernel sources and device: the CUDA files and the macros they are compiled with, whether the GPU
backend can run here, the stream all of fastmlp's GPU work runs on, and the compiled kernels (NVRTC through CuPy,
cached on disk by CuPy).

What the backend needs beyond CuPy itself, NVRTC and cuBLAS, comes with CuPy's [ctk] extra (cupy-cuda13x[ctk],
fastmlp's `gpu` extra; cupy-cuda12x[ctk] for a CUDA 12 driver, `gpu-cuda12`). fastmlp.provenance.gpu_report finds
and checks all of it, and says why the backend cannot run where it cannot (`fastmlp info`)."""
import contextlib
import re
from pathlib import Path

import numpy as np

from ..constants import (N_CLASSES, PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1, STREAM_FOLD,
                         STREAM_INIT, STREAM_ORDER, STREAM_TEST_X, STREAM_TRAIN_X)
from ..provenance import cuda_library, cudasim, gpu_info, gpu_install_hint

# stem -> the kernels of kernels/<stem>.cu; DTYPE_FREE stems do not use REAL and are compiled once
KERNELS = {
    "rng": ("philox_words", "permutation"),
    "init": ("init_values",),
    "tasks": ("labeled_rows", "gaussian_rows"),
    "forward": ("gather_rows", "bias_relu"),
    "softmax_xent": ("softmax_xent",),
    "backward": ("relu_backward",),
    "evaluate": ("evaluate",),
    "f0": ("subtract_f0",),
    "stop": ("epoch_begin", "epoch_end"),
}
DTYPE_FREE = ("rng", "tasks", "stop")

# ---------------------------------------------------------------------------------------------- sources
def kernel_dir():
    """The CUDA sources, fastmlp/gpu/kernels: in a checkout and inside an installed wheel alike."""
    d = Path(__file__).resolve().parent / "kernels"
    if not (d / "common.cuh").is_file():
        raise FileNotFoundError(f"fastmlp's CUDA sources (*.cu) are not in {d}; reinstall fastmlp")
    return d


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
    from ..rng import _TWO_PI
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
def cupy_module():
    """CuPy, imported on first use (fastmlp.backend checks first that it is usable); under FASTMLP_CUDASIM=1 the
    host simulator in its place (fastmlp.gpu.sim: NumPy arrays, the kernels built for the host). The GPU package
    asks here and nowhere else, so the engine runs unchanged on either."""
    if cudasim():
        import fastmlp.gpu.sim as sim
        return sim
    import cupy
    return cupy


def available():
    """True when the GPU engine can be built and run here: CuPy imports, its CUDA version is one the driver serves,
    a device is reachable, NVRTC compiles a kernel that then runs, and cuBLAS loads (fastmlp.provenance.gpu_report,
    probed once per process, says which of these fails)."""
    return gpu_info() is not None


def load_library(name):
    """The CUDA library `name` ('cublas') that CuPy uses, through ctypes -> (ctypes.CDLL, where from); OSError with
    one line if it is not found (fastmlp.provenance.cuda_library). Under the simulator: its NumPy twin."""
    if cudasim():
        if name != "cublas":
            raise OSError(f"the host simulator has no {name}")
        from .sim_cublas import Library
        return Library(), Library.path
    return cuda_library(name, cupy_module())


def install_hint():
    """What to install for the CUDA libraries of this CuPy's CUDA version, as words for an error message."""
    return gpu_install_hint(cupy_module().cuda.runtime.runtimeGetVersion() // 1000)


def device_name():
    """The current CUDA device's name."""
    cp = cupy_module()
    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


class _Device:
    """Per CUDA device: the stream all of fastmlp's GPU work runs on, and its cuBLAS handles."""

    def __init__(self, cp):
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.blas = {}          # cuBLAS handles on the stream, by TF32 mode (fastmlp.gpu.cublas.handle)


_DEVICES = {}
_MODULES = {}
_FUNCTIONS = {}


def current_device():
    cp = cupy_module()
    dev = (cp.__name__, cp.cuda.Device().id)          # the simulator's and CuPy's devices apart
    if dev not in _DEVICES:
        _DEVICES[dev] = _Device(cp)
    return _DEVICES[dev]


@contextlib.contextmanager
def on_device():
    """Run on fastmlp's stream: wait for the caller's stream first (its arrays may be in flight), and finish
    before handing anything back."""
    cp = cupy_module()
    dev = current_device()
    caller = cp.cuda.get_current_stream()
    if caller.ptr != dev.stream.ptr:
        caller.synchronize()
    with dev.stream:
        yield dev
    dev.stream.synchronize()


def kernel(name, dtype=np.float32):
    """The compiled kernel `name` for REAL = dtype; each module is compiled once per process (and cached on disk
    by CuPy)."""
    cp = cupy_module()
    stem = next(s for s, names in KERNELS.items() if name in names)
    if stem in DTYPE_FREE:
        dtype = np.float32
    key = (cp.__name__, cp.cuda.Device().id, stem, np.dtype(dtype).name)
    if (key, name) not in _FUNCTIONS:
        if key not in _MODULES:
            _MODULES[key] = cp.RawModule(code=source(stem), options=compile_options(dtype))
        _FUNCTIONS[key, name] = _MODULES[key].get_function(name)
    return _FUNCTIONS[key, name]
