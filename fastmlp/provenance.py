"""Where a result came from: package versions, git commit, backend, device and thread count."""
import functools
import platform
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
    """The CPU model as the OS reports it, and LLVM's name for the target Numba compiles for."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import llvmlite.binding as llvm
        return f"{model} (llvm target {llvm.get_host_cpu_name()})"
    except Exception:   # llvmlite missing or broken: the model name alone still identifies the machine
        return model


def cpu_info():
    """Backend 'cpu': device name and thread count."""
    import numba
    return {"backend": "cpu", "device": cpu_name(), "threads": numba.get_num_threads()}


def gpu_info():
    """Backend 'gpu' if CuPy can reach a device, else None (CuPy imported lazily: the CPU path never needs it)."""
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return None
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return {"backend": "gpu", "device": name, "devices": n, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}
    except Exception:   # no cupy, no driver, no device: all mean "no GPU backend here"
        return None


def record(backend="cpu"):
    """Provenance block stored with every result."""
    info = cpu_info() if backend == "cpu" else (gpu_info() or {"backend": backend})
    return {**info, "versions": versions(), "git_commit": git_commit(), "platform": platform.platform(),
            "argv": sys.argv}
