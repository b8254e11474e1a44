"""The host simulator of the GPU engine: what the engine uses of CuPy, on the host, with NumPy arrays and every
CUDA kernel compiled for the host by g++ (FASTMLP_CUDASIM=1; the tests switch it on where no device is usable).

fastmlp.gpu.device.cupy_module() returns this module in place of CuPy, and that is the only place that knows:
the engine, the launchers and the cuBLAS wrapper run unchanged, with the same grids, blocks, shared memory sizes
and argument lists as on a device, so a wrong launch fails here too. What stands in for what:

  arrays     HostArray, a NumPy array with CuPy's .get(), .set() and .data.ptr; NumPy functions through this
             module return HostArrays, and a ufunc that mixes one with a plain NumPy array raises, as CuPy does
  kernels    RawModule compiles the kernel file with g++ and kernels/host_cuda.h (blocks one after another, the
             threads of a block as fibers with real barriers) into a shared library, cached on disk by a hash of
             source, header, options and compiler; a launch checks the grid and block limits, the dynamic shared
             memory, and every argument against the kernel's C signature (a Python int or a float64 where the
             kernel takes int, an array of the wrong dtype, a non-contiguous one: CuPy would pass any of them on,
             and the kernel would read garbage)
  cuBLAS     fastmlp.gpu.sim_cublas: the calls fastmlp makes, with cuBLAS's semantics, in NumPy
  streams    all work runs at once; capture records launches and GEMMs instead of running them, and a graph launch
             replays them (a read or write of device memory from the host during capture raises, as on a device)

Only a device shows speed, TF32 rounding, memory limits and out-of-bounds accesses (compute-sanitizer).
"""
import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
import types
import weakref
from bisect import bisect_right
from pathlib import Path

import numpy as np

from ..provenance import SIM_DEVICE, host_compiler

__version__ = "fastmlp-cudasim"
HEADER = Path(__file__).resolve().parent / "kernels" / "host_cuda.h"
# -O1: the kernels run a few times faster than at -O0 and compile in about a second each; -ffp-contract=off: no
# FMA contraction, so float results do not depend on the host's instruction set; the warnings are the test suite's
WARNINGS = ("-Wall", "-Wextra", "-Wshadow", "-Wno-unknown-pragmas", "-Werror")
FLAGS = ("-x", "c++", "-O1", "-fPIC", "-ffp-contract=off", *WARNINGS)
SHARED_BYTES_MAX = 48 * 1024          # dynamic shared memory a kernel gets without opting in
_LAUNCH = threading.Lock()
BLOCK_MAX, BLOCK_Z_MAX, GRID_X_MAX, GRID_YZ_MAX = 1024, 64, 2**31 - 1, 65535


class SimulatorError(RuntimeError):
    """What a device would have answered with an error (or undefined behaviour) for, found on the host."""


def compiler():
    """The host C++ compiler: $CXX or g++; None if there is none."""
    return host_compiler()


# ---------------------------------------------------------------------------------------------- arrays
_ALLOCATIONS = {}        # address -> (nbytes, weakref to the array that owns the memory)
_STARTS = []             # sorted addresses of _ALLOCATIONS, rebuilt when it changed
_CHANGED = [True]


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _register(root):
    addr = root.__array_interface__["data"][0]
    known = _ALLOCATIONS.get(addr)
    if known is not None and known[1]() is root:
        return

    def gone(_, addr=addr):
        entry = _ALLOCATIONS.get(addr)
        if entry is not None and entry[1]() is None:
            del _ALLOCATIONS[addr]
            _CHANGED[0] = True
    _ALLOCATIONS[addr] = (root.nbytes, weakref.ref(root, gone))
    _CHANGED[0] = True


def allocation(ptr):
    """(start address, bytes, owner) of the live device allocation that holds address ptr, or None."""
    if _CHANGED[0]:
        _STARTS[:] = sorted(_ALLOCATIONS)
        _CHANGED[0] = False
    i = bisect_right(_STARTS, ptr) - 1
    if i < 0:
        return None
    start = _STARTS[i]
    nbytes, ref = _ALLOCATIONS[start]
    owner = ref()
    if owner is None or ptr >= start + max(nbytes, 1):
        return None
    return start, nbytes, owner


class HostArray(np.ndarray):
    """A "device" array of the simulator: a NumPy array with the CuPy methods fastmlp uses."""

    def __array_finalize__(self, obj):
        _register(_root(self))

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        for a in inputs + tuple(out or ()):
            if isinstance(a, np.ndarray) and not isinstance(a, HostArray) and a.ndim:
                raise TypeError(f"Unsupported type {type(a)}: a device array does not mix with a host NumPy "
                                "array (CuPy raises here too; copy it with cupy.asarray)")
        plain = [a.view(np.ndarray) if isinstance(a, HostArray) else a for a in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, HostArray) else o for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return tuple(_device(r) for r in result) if isinstance(result, tuple) else _device(result)

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def get(self):
        """A host copy (a plain NumPy array), as cupy.ndarray.get."""
        _no_transfer_while_capturing("ndarray.get")
        return np.array(self.view(np.ndarray), copy=True)

    def set(self, arr):
        """Copy a host array of the same shape in, as cupy.ndarray.set."""
        _no_transfer_while_capturing("ndarray.set")
        if isinstance(arr, HostArray):
            raise TypeError("ndarray.set takes a host NumPy array")
        arr = np.asarray(arr)
        if arr.shape != self.shape:
            raise ValueError(f"ndarray.set: shape {arr.shape} differs from the array's {self.shape}")
        self.view(np.ndarray)[...] = arr


ndarray = HostArray
for _name in ("int8", "int32", "int64", "uint8", "uint32", "uint64", "float32", "float64", "bool_", "dtype",
              "nan", "inf", "pi", "newaxis"):
    globals()[_name] = getattr(np, _name)


def _device(a):
    """A NumPy result as a device array (a view, no copy)."""
    if isinstance(a, np.ndarray) and not isinstance(a, HostArray):
        return a.view(HostArray)
    return a


def asarray(a, dtype=None, order=None):
    """cupy.asarray: a device array; host data is copied (so the device copy never aliases it)."""
    if isinstance(a, HostArray):
        return a if dtype is None or a.dtype == np.dtype(dtype) else a.astype(dtype)
    return np.array(a, dtype=dtype, order=order or "K", copy=True).view(HostArray)


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, HostArray):
        raise TypeError(f"cupy.ascontiguousarray takes a device array, got {type(a).__name__}")
    return np.ascontiguousarray(a, dtype=dtype).view(HostArray)


def asnumpy(a):
    return a.get() if isinstance(a, HostArray) else np.asarray(a)


def _factory(f):
    def make(*args, **kwargs):
        return _device(f(*args, **kwargs))
    make.__name__ = f.__name__
    return make


empty, zeros, ones, full, arange = (_factory(f) for f in (np.empty, np.zeros, np.ones, np.full, np.arange))
fft = types.SimpleNamespace(rfft=_factory(np.fft.rfft), irfft=_factory(np.fft.irfft))


def __getattr__(name):
    """Any other NumPy function, returning device arrays (cupy.where, cupy.sqrt, ...)."""
    f = getattr(np, name)
    if not callable(f) or isinstance(f, type):
        return f
    return _factory(f)


# --------------------------------------------------------------------------------- streams and graphs
class Stream:
    """A stream: work runs when it is issued, except while the stream captures a graph (then it is recorded)."""
    _next_ptr = [0x5000]

    def __init__(self, non_blocking=False, null=False):
        if null:
            self.ptr = 0
        else:
            Stream._next_ptr[0] += 0x10
            self.ptr = Stream._next_ptr[0]
        self.non_blocking = non_blocking
        self.recording = None          # the ops of a capture in progress
        STREAMS[self.ptr] = self

    def __enter__(self):
        _CURRENT.append(self)
        return self

    def __exit__(self, *exc):
        _CURRENT.pop()

    def synchronize(self):
        if self.recording is not None:
            raise SimulatorError("cudaErrorStreamCaptureUnsupported: synchronize on a stream that is capturing")

    def is_capturing(self):
        return self.recording is not None

    def begin_capture(self, mode=None):
        if self.ptr == 0:
            raise SimulatorError("cudaErrorStreamCaptureUnsupported: the legacy default stream cannot capture")
        if self.recording is not None:
            raise SimulatorError("cudaErrorIllegalState: the stream is capturing already")
        self.recording = []

    def end_capture(self):
        if self.recording is None:
            raise SimulatorError("cudaErrorIllegalState: end_capture without begin_capture")
        ops, self.recording = self.recording, None
        return Graph(ops)

    def issue(self, what, run, owners):
        """Run an op now, or record it while capturing; owners: the allocations its pointers point into."""
        if self.recording is not None:
            self.recording.append((what, run, [weakref.ref(o) for o in owners]))
        else:
            run()


STREAMS = {}
_CURRENT = [Stream(null=True)]


def get_current_stream():
    return _CURRENT[-1]


def capturing():
    """The stream that is capturing, or None."""
    return next((s for s in STREAMS.values() if s.recording is not None), None)


def _no_transfer_while_capturing(what):
    if get_current_stream().recording is not None:
        raise SimulatorError(f"cudaErrorStreamCaptureUnsupported: {what} (a synchronous copy) while the current "
                             "stream captures a graph")


class Graph:
    """A captured graph: the recorded launches and GEMMs, replayed in order by launch()."""

    def __init__(self, ops):
        self.ops = ops

    def launch(self, stream=None):
        for what, run, owners in self.ops:
            if any(o() is None for o in owners):
                raise SimulatorError(f"a graph replays {what} on memory that was freed after the capture")
        stream = stream or get_current_stream()
        if stream.recording is not None:
            raise SimulatorError("launching a graph into a stream that captures is not supported here")
        for _, run, _ in self.ops:
            run()


class _Device:
    def __init__(self, device_id=0):
        if device_id != 0:
            raise SimulatorError(f"cudaErrorInvalidDevice: the simulator has one device (asked for {device_id})")
        self.id = device_id

    def use(self):
        pass

    def synchronize(self):
        pass

    @property
    def mem_info(self):
        """(free, total) bytes: the simulator's device memory is the host's."""
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def get_default_memory_pool():
    """CuPy's pool: the simulator caches nothing (NumPy allocates)."""
    return types.SimpleNamespace(free_bytes=lambda: 0, used_bytes=lambda: 0, free_all_blocks=lambda: None)


def _properties(device_id):
    return {"name": SIM_DEVICE.encode(), "multiProcessorCount": 1, "sharedMemPerBlock": SHARED_BYTES_MAX}


cuda = types.SimpleNamespace(
    Stream=Stream, Device=_Device, get_current_stream=get_current_stream, Graph=Graph,
    runtime=types.SimpleNamespace(runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000,
                                  getDeviceCount=lambda: 1, getDeviceProperties=_properties))


# ---------------------------------------------------------------------------------------------- kernels
_C_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
            "long long": np.int64, "unsigned long long": np.uint64, "signed char": np.int8,
            "unsigned char": np.uint8}
_KERNEL = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)\s*\{')
_DEFINITION = re.compile(r'(?:__device__|__global__)[^;{}()]*?\b(\w+)\s*\([^)]*\)\s*(?:const\s*)?\{')
_BARRIERS = re.compile(r'\b(?:__syncthreads\w*|__syncwarp|__shfl\w*)\s*\(')
_DYNAMIC_SHARED = re.compile(r'extern __shared__ ([\w ]+?)\s*(\w+)\[\];')


def _bodies(src):
    """{function name: body text} of every __device__ / __global__ function defined in src (braces matched)."""
    out = {}
    for m in _DEFINITION.finditer(src):
        depth, i = 1, m.end()
        while depth and i < len(src):
            depth += {"{": 1, "}": -1}.get(src[i], 0)
            i += 1
        out[m.group(1)] = src[m.end():i]
    return out


def uses_barriers(src):
    """{kernel: whether it (or a function it calls) reaches a barrier or a warp shuffle}: those run as fibers."""
    bodies = _bodies(src)
    sync = {name for name, body in bodies.items() if _BARRIERS.search(body)}
    while True:   # a function that calls one that synchronises synchronises too
        more = {name for name, body in bodies.items() if name not in sync
                and any(re.search(rf'\b{re.escape(f)}\s*[<(]', body) for f in sync)}
        if not more:
            break
        sync |= more
    return {m.group(1): m.group(1) in sync for m in _KERNEL.finditer(src)}


def _param(text, real):
    """A kernel parameter's C text -> (name, C type text, pointer?, NumPy dtype)."""
    text = " ".join(text.split())
    m = re.fullmatch(r'(.*?)\s*(\**)\s*(?:__restrict__\s*)?(\w+)', text)
    if m is None:
        raise SimulatorError(f"cannot read the kernel parameter {text!r}")
    ctype = m.group(1) + m.group(2)
    base = " ".join(w for w in m.group(1).split() if w not in ("const", "volatile"))
    base = {"REAL": real}.get(base, base)
    if base not in _C_TYPES or len(m.group(2)) > 1:
        raise SimulatorError(f"the simulator does not know the kernel parameter type {ctype!r}")
    return m.group(3), ctype, bool(m.group(2)), np.dtype(_C_TYPES[base])


def signatures(src, real):
    """{kernel: [(name, C type, pointer?, dtype)]} of every extern "C" __global__ function in src."""
    return {m.group(1): [_param(p, real) for p in m.group(2).split(",") if p.strip()] for m in _KERNEL.finditer(src)}


def host_source(code, real):
    """The kernel file as the host compiles it: dynamic shared memory made a pointer into the launch's buffer, and
    one C entry point per kernel, fastmlp_sim_launch_<kernel>(grid, block, shared bytes, argument pointers),
    which takes its arguments as cuLaunchKernel does (an array of pointers to the values)."""
    src = _DYNAMIC_SHARED.sub(lambda m: f"{m.group(1)}* const {m.group(2)} = "
                                        f"({m.group(1)}*)fastmlp_sim::dynamic_shared();", code)
    fibers = uses_barriers(code)
    out = [src, "\n// ---- simulator entry points (fastmlp.gpu.sim.host_source)",
           'extern "C" const char* fastmlp_sim_error() { return fastmlp_sim::state.error; }']
    for name, params in signatures(code, real).items():
        call = ", ".join(f"*({ctype}*)args[{i}]" for i, (_, ctype, _, _) in enumerate(params))
        out.append(f'extern "C" int fastmlp_sim_launch_{name}(const unsigned int* grid, const unsigned int* block, '
                   f'unsigned long long shared, void** args) {{\n'
                   f'    auto body = [&] {{ {name}({call}); }};\n'
                   f'    return fastmlp_sim::launch(grid, block, shared, {int(fibers[name])}, body);\n}}')
    return "\n".join(out) + "\n"


def compile_command(options, source, output=None):
    """g++ for a host build of `source` with the NVRTC options (-std, -D...) and the emulation header; output None:
    syntax and warnings only."""
    cxx = compiler()
    if cxx is None:
        raise SimulatorError("the host simulator needs a C++ compiler (g++, or $CXX); none was found")
    opts = [o for o in options if o.startswith(("-D", "-std="))]
    out = ["-fsyntax-only"] if output is None else ["-shared", "-o", str(output)]
    return [cxx, *FLAGS, *opts, "-include", str(HEADER), *out, str(source)]


def cache_dir():
    """Where the host builds are cached: $FASTMLP_CUDASIM_CACHE, else fastmlp/cudasim in the user's cache
    ($XDG_CACHE_HOME or ~/.cache), else the temporary directory; never inside the package."""
    for d in (os.environ.get("FASTMLP_CUDASIM_CACHE"),
              Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastmlp" / "cudasim",
              Path(tempfile.gettempdir()) / f"fastmlp-cudasim-{os.getuid()}"):
        if not d:
            continue
        try:
            Path(d).mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return Path(d)
        except OSError:
            continue
    raise SimulatorError("no writable directory for the simulator's host builds (set FASTMLP_CUDASIM_CACHE)")


_VERSIONS = {}


def _compiler_version(cxx):
    if cxx not in _VERSIONS:
        _VERSIONS[cxx] = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    return _VERSIONS[cxx]


def build(code, options):
    """The host library of a kernel file (compiled once per source, options, header and compiler; cached)."""
    real = next((o.split("=", 1)[1] for o in options if o.startswith("-DREAL=")), "float")
    src = host_source(code, real)
    probe = compile_command(options, "kernel.cu", "kernel.so")
    key = hashlib.sha256("\0".join([src, HEADER.read_text(), *probe, _compiler_version(probe[0])]).encode())
    d = cache_dir()
    lib = d / f"{key.hexdigest()[:24]}.so"
    if not lib.exists():
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            cu = Path(tmp) / "kernel.cu"
            cu.write_text(src)
            r = subprocess.run(compile_command(options, cu, Path(tmp) / "kernel.so"), capture_output=True,
                               text=True)
            if r.returncode != 0:
                raise SimulatorError(f"g++ could not build the kernels for the host:\n{r.stderr[-4000:]}")
            os.replace(Path(tmp) / "kernel.so", lib)        # atomic: processes building at once agree
    return ctypes.CDLL(str(lib)), signatures(code, real)


class RawModule:
    """cupy.RawModule: a kernel file, built for the host."""

    def __init__(self, code, options=(), **kwargs):
        self.lib, self.signatures = build(code, tuple(options))
        self.lib.fastmlp_sim_error.restype = ctypes.c_char_p

    def get_function(self, name):
        if name not in self.signatures:
            raise SimulatorError(f"no kernel {name!r} in the module (extern \"C\" __global__ void {name}(...))")
        return Function(self, name)


def RawKernel(code, name, options=(), **kwargs):
    """cupy.RawKernel: one kernel of a source, built for the host."""
    return RawModule(code=code, options=options).get_function(name)


def _dims(v, what):
    v = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(v) <= 3 or not all(isinstance(d, (int, np.integer)) for d in v):
        raise SimulatorError(f"{what} must be an int or 1 to 3 ints, got {v!r}")
    return tuple(int(d) for d in v) + (1,) * (3 - len(v))


class Function:
    """A kernel of a RawModule, launched as CuPy launches one: kernel(grid, block, args, shared_mem=0)."""

    def __init__(self, module, name):
        self.module, self.name = module, name
        self.params = module.signatures[name]
        self.entry = getattr(module.lib, f"fastmlp_sim_launch_{name}")
        self.entry.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_ulonglong,
                               ctypes.POINTER(ctypes.c_void_p)]
        self.entry.restype = ctypes.c_int

    def _check_config(self, grid, block, shared_mem):
        bad = None
        if any(g < 1 for g in grid) or grid[0] > GRID_X_MAX or max(grid[1:]) > GRID_YZ_MAX:
            bad = f"grid {grid} (each at least 1; x at most 2^31 - 1, y and z at most {GRID_YZ_MAX})"
        elif any(b < 1 for b in block) or block[2] > BLOCK_Z_MAX or block[0] * block[1] * block[2] > BLOCK_MAX:
            bad = f"block {block} (at most {BLOCK_MAX} threads, z at most {BLOCK_Z_MAX})"
        elif not 0 <= shared_mem <= SHARED_BYTES_MAX:
            bad = f"{shared_mem} bytes of dynamic shared memory (at most {SHARED_BYTES_MAX} without opting in)"
        if bad:
            raise SimulatorError(f"CUDA_ERROR_INVALID_VALUE launching {self.name}: {bad}")

    def __call__(self, grid, block, args, shared_mem=0, stream=None, **kwargs):
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        self._check_config(grid, block, int(shared_mem))
        args = tuple(args)
        if len(args) != len(self.params):
            raise SimulatorError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        values, owners = [], []
        for i, (a, (pname, ctype, pointer, dtype)) in enumerate(zip(args, self.params)):
            where = f"{self.name} argument {i} ({ctype} {pname})"
            if pointer:
                if not isinstance(a, HostArray):
                    raise TypeError(f"{where}: needs a device array, got {type(a).__name__}")
                if a.dtype != dtype:
                    raise TypeError(f"{where}: needs a {dtype.name} array, got {a.dtype}")
                if not a.flags.c_contiguous:
                    raise TypeError(f"{where}: a non-contiguous array (the kernel reads it as dense)")
                values.append(ctypes.c_void_p(a.data.ptr))
                owners.append(_root(a))
            else:
                if isinstance(a, HostArray) or not isinstance(a, np.generic) or a.dtype != dtype:
                    kind = type(a).__name__ if not isinstance(a, np.generic) else a.dtype.name
                    raise TypeError(f"{where}: needs a NumPy {dtype.name} scalar, got {kind} (CuPy passes a "
                                    f"Python int as long long and a float as double)")
                values.append(_SCALARS[dtype](a.item()))
        pointers = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        g, b = (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block)

        def run():
            with _LAUNCH:                  # the host library keeps one launch's state: one launch at a time
                if self.entry(g, b, ctypes.c_ulonglong(int(shared_mem)), pointers) != 0:
                    raise SimulatorError(f"{self.name}: {self.module.lib.fastmlp_sim_error().decode()}")
        run.keep = (values, pointers, g, b)
        stream = stream or get_current_stream()
        recorder = capturing()
        if recorder is not None and recorder is not stream:
            raise SimulatorError(f"{self.name} launched on a stream other than the one capturing a graph: the graph "
                                 "would miss it")
        stream.issue(f"kernel {self.name}", run, owners)


_SCALARS = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
            np.dtype(np.int32): ctypes.c_int32, np.dtype(np.uint32): ctypes.c_uint32,
            np.dtype(np.int64): ctypes.c_int64, np.dtype(np.uint64): ctypes.c_uint64,
            np.dtype(np.int8): ctypes.c_int8, np.dtype(np.uint8): ctypes.c_uint8}
