"""Where a result came from: package versions, git commit, backend, device and thread count."""
import ctypes
import functools
import importlib
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("fastmlp", "numpy", "numba", "llvmlite", "click", "scikit-optimize", "cupy-cuda13x", "distributed")


def versions():
    """Installed versions of the packages fastmlp uses (absent ones left out)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@functools.cache
def git_commit():
    """The commit of the checkout this package runs from, with '+dirty' for local changes; None elsewhere.

    Read once per process: a long sweep run from a checkout records the commit it started from, not one made
    while it ran (the code it had already imported)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_name():
    """The CPU model as the OS reports it, and LLVM's name for the target Numba compiles for (NUMBA_CPU_NAME, or
    the host's)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from .isa import compile_target
        return f"{model} (llvm target {compile_target()[0]})"
    except Exception:   # Numba missing or broken: the model name alone still identifies the machine
        return model


def cpu_info():
    """Backend 'cpu': device name, thread count, and the micro-kernel family with the target it was chosen for."""
    import numba

    from .isa import target_info
    return {"backend": "cpu", "device": cpu_name(), "threads": numba.get_num_threads(), **target_info()}


# ------------------------------------------------------------------------------------------------ the GPU stack
# fastmlp's extra for the CuPy of each CUDA major version: cupy-cuda13x[ctk] and cupy-cuda12x[ctk], each with its
# NVIDIA wheels (cuBLAS, NVRTC, the runtime) and cuda-pathfinder, which finds them (pyproject.toml)
GPU_EXTRAS = {13: "gpu", 12: "gpu-cuda12"}
_PROBE = 'extern "C" __global__ void fastmlp_probe(int* x) { x[threadIdx.x] = 7 * (int)threadIdx.x + 1; }'
_PROBED = []            # [(the cupy module, its report)]: probed once per process (and per CuPy module)


def _line(e):
    """An exception as one short line."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def cuda_version(v):
    """CUDA's integer version as text: 13000 -> '13.0', 12040 -> '12.4'; None for None."""
    return None if v is None else f"{int(v) // 1000}.{int(v) % 1000 // 10}"


def cupy_package():
    """The installed CuPy distribution: cupy-cuda13x, cupy-cuda12x, ... or 'cupy' (a source build)."""
    for name in ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"):
        try:
            metadata.version(name)
            return name
        except metadata.PackageNotFoundError:
            continue
    return "cupy"


def gpu_install_hint(major):
    """What to install for CuPy's CUDA major version, as words for an error message."""
    extra = GPU_EXTRAS.get(int(major), "gpu")
    return f"cupy-cuda{int(major)}x[ctk] brings it: pip install 'fastmlp[{extra}]'"


def cuda_library(name, cupy):
    """The CUDA library `name` ('cublas') that CuPy uses, loaded through ctypes -> (ctypes.CDLL, where from).

    With cuda.pathfinder (CuPy 14 depends on it): the library it finds, the NVIDIA wheel of cupy-cudaNNx[ctk]
    first, as CuPy itself finds it. Without it (an older CuPy): CuPy's own module for the library,
    cupy_backends.cuda.libs.<name>, is imported, which links the library into the process, and the library is then
    opened by its soname for the CUDA major version CuPy was built for (libcublas.so.13 for CUDA 13, .so.12 for 12).
    OSError with one line naming what was tried."""
    major = int(cupy.cuda.runtime.runtimeGetVersion()) // 1000
    tried = []
    try:
        from cuda import pathfinder
    except ImportError:
        pathfinder = None
    if pathfinder is not None:
        try:
            path = pathfinder.load_nvidia_dynamic_lib(name).abs_path
            return ctypes.CDLL(path), path
        except Exception as e:      # DynamicLibNotFoundError, or an OSError from the loader
            tried.append(f"cuda.pathfinder: {_line(e)}")
    else:
        module = f"cupy_backends.cuda.libs.{name}"
        try:
            importlib.import_module(module)
        except Exception as e:      # ImportError: CuPy's module could not link the library either
            tried.append(f"{module}: {_line(e)}")
    soname = f"lib{name}.so.{major}"
    try:
        return ctypes.CDLL(soname), soname
    except OSError as e:
        tried.append(f"{soname}: {_line(e)}")
    raise OSError("; ".join(tried))


def _cublas_version(lib):
    """cuBLAS's version 'major.minor.patch' from cublasGetProperty, None if it cannot say."""
    parts = []
    try:
        lib.cublasGetProperty.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.cublasGetProperty.restype = ctypes.c_int
        for prop in (0, 1, 2):      # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            v = ctypes.c_int(-1)
            if lib.cublasGetProperty(prop, ctypes.byref(v)) != 0:
                return None
            parts.append(str(v.value))
    except Exception:
        return None
    return ".".join(parts)


def _probe(cupy):
    """gpu_report's answer for an imported CuPy: every check the GPU engine relies on, in the order it needs them."""
    out = dict.fromkeys(("cupy", "cuda_runtime", "cuda_driver", "devices", "device", "nvrtc", "cublas",
                         "cublas_path", "problem"))
    package = cupy_package()
    out["cupy"] = f"{package} {getattr(cupy, '__version__', '?')}"
    rt = cupy.cuda.runtime
    try:
        runtime = int(rt.runtimeGetVersion())
        driver = int(rt.driverGetVersion())
    except Exception as e:
        return {**out, "problem": f"CuPy cannot ask CUDA for its versions ({_line(e)})"}
    out["cuda_runtime"], out["cuda_driver"] = runtime, driver or None
    major = runtime // 1000
    hint = gpu_install_hint(major)
    if not driver:
        return {**out, "problem": "no NVIDIA driver found (CUDA reports driver version 0)"}
    if driver // 1000 < major:
        other = GPU_EXTRAS.get(driver // 1000)
        fix = (f"pip uninstall {package} && pip install 'fastmlp[{other}]', or update the driver" if other
               else "update the driver")
        return {**out, "problem": f"the NVIDIA driver supports CUDA up to {cuda_version(driver)}, but {package} is "
                                  f"built for CUDA {cuda_version(runtime)}: {fix}"}
    try:
        n = int(rt.getDeviceCount())
    except Exception as e:
        return {**out, "problem": f"CUDA cannot reach a device ({_line(e)})"}
    out["devices"] = n
    if n < 1:
        return {**out, "problem": "no CUDA device"}
    try:
        name = rt.getDeviceProperties(0)["name"]
        out["device"] = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as e:
        return {**out, "problem": f"CUDA cannot describe device 0 ({_line(e)})"}
    try:        # the engine's kernels are compiled by NVRTC through CuPy and launched the same way
        out["nvrtc"] = ".".join(str(v) for v in cupy.cuda.nvrtc.getVersion())
        x = cupy.zeros(32, dtype=cupy.int32)
        cupy.RawKernel(_PROBE, "fastmlp_probe")((1,), (32,), (x,))
        got = [int(v) for v in x.get()]
    except Exception as e:
        return {**out, "problem": f"CuPy cannot compile and run a CUDA kernel, so NVRTC is missing or unusable "
                                  f"({_line(e)}); {hint}"}
    if got != [7 * i + 1 for i in range(32)]:
        return {**out, "problem": "a test kernel compiled by NVRTC ran but wrote wrong values"}
    try:
        lib, out["cublas_path"] = cuda_library("cublas", cupy)
    except OSError as e:
        return {**out, "problem": f"cuBLAS (libcublas.so.{major}) was not found ({e}); {hint}"}
    out["cublas"] = _cublas_version(lib)
    return out


CUDASIM = "FASTMLP_CUDASIM"     # =1: the GPU backend runs on the host simulator (fastmlp.gpu.sim), no CuPy needed
SIM_DEVICE = "host simulator (FASTMLP_CUDASIM=1)"


def cudasim():
    """True when FASTMLP_CUDASIM asks for the host simulator of the GPU backend."""
    return os.environ.get(CUDASIM, "") not in ("", "0")


def host_compiler():
    """The C++ compiler the simulator builds the kernels with: $CXX or g++ (None if not found)."""
    return shutil.which(os.environ.get("CXX") or "g++")


def _sim_report():
    cxx = host_compiler()
    return {**dict.fromkeys(("cupy", "cuda_runtime", "cuda_driver", "nvrtc", "cublas_path")),
            "devices": 1, "device": SIM_DEVICE, "cublas": "NumPy twin (fastmlp.gpu.sim_cublas)",
            "problem": None if cxx else (f"{CUDASIM}=1 runs the GPU kernels on the host, which needs a C++ compiler "
                                         "(g++, or $CXX); none was found")}


def gpu_report():
    """What the GPU backend needs, as found here, as a dict:

      cupy                       the CuPy package and its version ('cupy-cuda13x 14.2.0'); None without CuPy
      cuda_runtime, cuda_driver  the CUDA version CuPy was built for and the newest the driver serves (13000 is 13.0)
      devices, device            how many CUDA devices, and the first one's name
      nvrtc, cublas, cublas_path the NVRTC and cuBLAS versions CuPy uses, and where cuBLAS was loaded from
      problem                    None when the GPU engine can be built and run here; else one line: why not, and
                                 what to install

    Whatever it finds is filled in up to the first problem. The checks (a kernel compiled and run, cuBLAS loaded)
    run once per process. Under FASTMLP_CUDASIM=1 it describes the host simulator instead, and CuPy is not asked."""
    if cudasim():
        return _sim_report()
    try:
        import cupy
    except Exception as e:    # ImportError, or a CuPy that cannot load its own libraries
        return {**dict.fromkeys(("cupy", "cuda_runtime", "cuda_driver", "devices", "device", "nvrtc", "cublas",
                                 "cublas_path")),
                "problem": f"CuPy is not importable ({_line(e)}): pip install 'fastmlp[gpu]' (NVIDIA driver for "
                           f"CUDA 13) or 'fastmlp[gpu-cuda12]' (CUDA 12)"}
    if not (_PROBED and _PROBED[0][0] is cupy):
        try:
            report = _probe(cupy)
        except Exception as e:    # a CuPy without the API probed: unusable, said in one line, never raised
            report = {**dict.fromkeys(("cuda_runtime", "cuda_driver", "devices", "device", "nvrtc", "cublas",
                                       "cublas_path")),
                      "cupy": getattr(cupy, "__version__", None), "problem": f"probing CuPy failed ({_line(e)})"}
        _PROBED[:] = [(cupy, report)]
    return dict(_PROBED[0][1])


def gpu_info():
    """Backend 'gpu', device and versions if the GPU engine can be built and run here (gpu_report), else None.
    CuPy is imported only when this is asked: the CPU path never needs it."""
    r = gpu_report()
    if r["problem"] is not None:
        return None
    return {"backend": "gpu", "device": r["device"], "devices": r["devices"], "cuda_runtime": r["cuda_runtime"],
            "cuda_driver": r["cuda_driver"], "cupy": r["cupy"], "nvrtc": r["nvrtc"], "cublas": r["cublas"]}


def command_argv(argv=None):
    """The command line as it is recorded: the program as the name a user types (`fastmlp` for the console script or
    `python -m fastmlp.cli`, the file's name for a script), never the path it was run from, which names a machine."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        prog = os.path.basename(argv[0])
        is_cli = prog == "fastmlp" or (prog == "cli.py" and os.path.basename(os.path.dirname(argv[0])) == "fastmlp")
        argv[0] = "fastmlp" if is_cli else prog
    return argv


def record(backend="cpu"):
    """Provenance block stored with every result."""
    info = cpu_info() if backend == "cpu" else (gpu_info() or {"backend": backend})
    return {**info, "versions": versions(), "git_commit": git_commit(), "platform": platform.platform(),
            "argv": command_argv()}
