"""The GPU backend: kernels/*.cu against the float64 reference and the CPU, and GpuEngine against Engine.

Everywhere: every .cu file compiles with nvcc -arch=sm_90 (where nvcc exists), through NVRTC as CuPy will compile
it (where CuPy and NVRTC exist), and for the host with g++ -Wall -Wextra -Wshadow -Werror, with exactly the -D
options fastmlp.gpu passes; the kernel sources are found in a checkout and inside the wheel; asking for the GPU where
there is none is one line and exit status 2.
Tests marked gpu run on a device, else on the host simulator (FASTMLP_CUDASIM=1, which conftest switches on where
g++ is): Philox words and datasets equal the CPU's, each kernel follows the reference, the epoch order kernel equals
the CPU's for any block size, the engine follows the CPU engine for every loss and dtype, graphs change nothing,
the stop rule, diverged networks, shapes up to H = 500, M = 128 and subsets of 7000, and `fastmlp train` / `run`
with --backend gpu. Shapes cross block and warp edges on purpose (D = 11, H = 21, B = 17, N = 37 / 75, P > 6144 for
the order kernel). Tests marked device need real hardware (TF32 rounding, device memory).
Without a GPU, too: a NumPy model of the order kernel's rounds; fakes of CuPy, cuda.pathfinder and cuBLAS show what
makes the backend available (NVRTC, cuBLAS, a driver for CuPy's CUDA), how cuBLAS is found and set up, what
`fastmlp info` reports, and that bench/gpu_check.sh stops when the engine cannot train and fits its budget.
"""
import ctypes
import importlib.abc
import importlib.util
import json
import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastmlp import backend, gpu, provenance, reference, rng, tasks
from fastmlp.gpu import sim
from fastmlp.cli import main
from fastmlp.constants import (LOSSES, N_CLASSES, PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1,
                               STREAM_FOLD, STREAM_INIT, STREAM_ORDER, STREAM_TEST_X, STREAM_TRAIN_X)
from fastmlp.backend import engine_class, generate_on
from fastmlp.cpu_engine import Engine
from fastmlp.errors import UsageError
from conftest import (DTYPES, assert_close, assert_params_equal as _assert_params_equal, check_fit_stop_rule,
                      make_data, scales as _scales, subsets as _subsets)

ROOT = Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")
# (stem, dtype): stems that use REAL compile for both dtypes
BUILDS = [(stem, dt) for stem in sorted(gpu.KERNELS) for dt in (DTYPES if stem not in gpu.DTYPE_FREE else [np.float32])]


def _id(build):
    stem, dt = build
    return f"{stem}-{np.dtype(dt).name}"


# ------------------------------------------------------------------------------------ everywhere: sources
def test_kernel_sources_are_found_and_declare_every_kernel():
    d = gpu.kernel_dir()
    assert {p.stem for p in d.glob("*.cu")} == set(gpu.KERNELS)        # no orphan .cu, none missing
    for stem, names in gpu.KERNELS.items():
        text = (d / f"{stem}.cu").read_text()
        for name in names:
            assert re.search(rf'extern "C" __global__ void {name}\(', text), (stem, name)
        for header in re.findall(r'^#include "([^"]+)"', text, re.M):
            assert (d / header).is_file(), header
        src = gpu.source(stem)
        assert not re.search(r'^#include', src, re.M) and "philox4x32" in gpu.source("rng")   # headers inlined
        assert src.count("#define FASTMLP_COMMON_CUH") == 1


def test_defines_come_from_constants():
    for dtype, real in ((np.float32, "float"), (np.float64, "double")):
        opts = dict(o[2:].split("=", 1) for o in gpu.compile_options(dtype) if o.startswith("-D"))
        assert opts["REAL"] == real
        assert int(opts["N_CLASSES"]) == N_CLASSES and int(opts["PHILOX_ROUNDS"]) == PHILOX_ROUNDS
        for name, value in (("PHILOX_M0", PHILOX_M0), ("PHILOX_M1", PHILOX_M1), ("PHILOX_W0", PHILOX_W0),
                            ("PHILOX_W1", PHILOX_W1), ("STREAM_TRAIN_X", STREAM_TRAIN_X),
                            ("STREAM_TEST_X", STREAM_TEST_X), ("STREAM_INIT", STREAM_INIT),
                            ("STREAM_ORDER", STREAM_ORDER), ("STREAM_FOLD", STREAM_FOLD)):
            assert opts[name].endswith("u") and int(opts[name][:-1], 0) == value, name
        assert float(opts["BOX_MULLER_TWO_PI"]) == rng._TWO_PI
    cols = re.search(r"#define REPORT_COLS (\d+)", (gpu.kernel_dir() / "stop.cu").read_text())
    assert int(cols.group(1)) == len(gpu.REPORT)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("build", BUILDS, ids=_id)
def test_kernel_compiles_with_nvcc(build, tmp_path):
    """nvcc -arch=sm_90 --cubin, every warning an error, with the options and the inlined source CuPy gets."""
    stem, dtype = build
    src = tmp_path / f"{stem}.cu"
    src.write_text(gpu.source(stem))
    cubin = tmp_path / f"{stem}.cubin"
    r = subprocess.run([NVCC, "-arch=sm_90", "--cubin", "-Werror", "all-warnings", *gpu.compile_options(dtype),
                        "-o", str(cubin), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    code = cubin.read_bytes()
    for name in gpu.KERNELS[stem]:
        assert name.encode() in code, name                              # extern "C": unmangled entry points


def _nvrtc_binary(compiler, src, options, log):
    """NVRTC through CuPy for sm_90 (no device needed when the arch is given) -> the compiled bytes; NVRTC's log
    goes to log."""
    out = compiler.compile_using_nvrtc(src, options, arch="90", log_stream=log)
    out = out[0] if isinstance(out, tuple) else out      # (binary, name mapping) in newer CuPy
    return out.encode() if isinstance(out, str) else bytes(out)


@pytest.fixture(scope="module")
def nvrtc():
    """cupy.cuda.compiler when NVRTC works here, else skip."""
    compiler = pytest.importorskip("cupy.cuda.compiler")
    try:
        _nvrtc_binary(compiler, 'extern "C" __global__ void k() {}', (), io.StringIO())
    except Exception as e:          # libnvrtc missing, or a CuPy without this entry point
        pytest.skip(f"NVRTC not usable here: {type(e).__name__}: {e}")
    return compiler


@pytest.mark.parametrize("build", BUILDS, ids=_id)
def test_kernel_compiles_with_nvrtc(build, nvrtc):
    """NVRTC with the options CuPy gets (-ftz=true: CuPy adds it to every RawModule): every kernel in the
    binary, and not one warning in NVRTC's log."""
    stem, dtype = build
    log = io.StringIO()
    binary = _nvrtc_binary(nvrtc, gpu.source(stem), gpu.compile_options(dtype) + ("-ftz=true",), log)
    assert len(binary) > 100
    for name in gpu.KERNELS[stem]:
        assert name.encode() in binary, name                            # extern "C": unmangled entry points
    assert "warning" not in log.getvalue().lower(), log.getvalue()


@pytest.mark.parametrize("build", BUILDS, ids=_id)
def test_kernel_compiles_for_the_host_without_a_warning(build, tmp_path):
    """Every kernel file through g++ -Wall -Wextra -Wshadow -Werror, with kernels/host_cuda.h, exactly as the
    simulator builds it: the host compiler warns where nvcc does not (a `double d1` shadowing the REAL d1 in
    softmax_xent once left the class-1 logit without a gradient, and nvcc compiled it silently)."""
    if sim.compiler() is None:
        pytest.skip("no host C++ compiler (g++ or $CXX)")
    stem, dtype = build
    src = tmp_path / f"{stem}.cu"
    src.write_text(sim.host_source(gpu.source(stem), gpu.defines(dtype)["REAL"]))
    cmd = sim.compile_command(gpu.compile_options(dtype), src)
    assert {"-Wall", "-Wextra", "-Wshadow", "-Werror", "-fsyntax-only"} <= set(cmd)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "warning" not in r.stderr.lower(), r.stderr[-3000:]


def _launch_permutation(subsets, seeds, epochs, trained, use_shared, threads):
    """rng.cu's permutation kernel with `threads` per block, straight through its module (not the launcher, which
    fixes ORDER_THREADS) -> the order rows (-1 where the kernel wrote nothing)."""
    cp = gpu.device.cupy_module()
    M, P = len(subsets), max(len(s) for s in subsets)
    table = np.zeros((M, P), np.int32)
    for m, s in enumerate(subsets):
        table[m, :len(s)] = s
    order, scratch = cp.full((M, P), -1, dtype=cp.int32), cp.zeros((M, P), dtype=cp.uint32)
    args = (order, scratch, cp.asarray(table), cp.asarray([len(s) for s in subsets], dtype=cp.int32),
            cp.asarray(seeds, dtype=cp.uint32), cp.asarray(epochs, dtype=cp.int32),
            cp.asarray(trained, dtype=cp.int32), np.int32(P), np.int32(use_shared))
    gpu.device.kernel("permutation")((M,), (threads,), args, shared_mem=8 * P if use_shared else 0)
    return order.get()


@pytest.mark.gpu
@pytest.mark.parametrize("use_shared, threads", [(1, 64), (0, 64), (0, 7), (1, 1), (0, 256)],
                         ids=["shared-64", "global-64", "global-7", "shared-1", "global-256"])
def test_minibatch_order_kernel_equals_the_cpus_for_any_block_size(use_shared, threads):
    """The kernel's rows are rng.permute_into's, bit for bit, for either variant and any block size (7 threads:
    groups of four steps split unevenly; 1: one thread does every step), up to n = 30,000."""
    g = np.random.default_rng(1)
    lengths = [1, 2, 3, 4, 5, 37, 1000, 7001, 0, 30000, 6] if not use_shared else [1, 2, 3, 5, 37, 1000, 6, 0]
    seeds = [0, 2**32 - 1, 5, 77, 123, 9, 4, 8, 1, 3, 2**31][:len(lengths)]
    epochs = [0, 3, 1, 2, 10, 0, 7, 5, 1, 2, 2**31 - 1][:len(lengths)]
    trained = [1] * len(lengths)
    trained[5] = 0                                             # a stopped network: its row is left alone
    subsets = [np.sort(g.choice(10**5, n, replace=False)) for n in lengths]
    order = _launch_permutation(subsets, seeds, epochs, trained, use_shared, threads)
    for m, s in enumerate(subsets):
        if not trained[m]:
            assert (order[m] == -1).all()
            continue
        np.testing.assert_array_equal(order[m, :len(s)], s[rng.permutation_np(len(s), seeds[m], epochs[m])],
                                      err_msg=f"n = {len(s)}")


def _order_in_rounds(subset, seed, epoch):
    """NumPy model of kernels/rng.cu's permutation: the epoch's Fisher-Yates swaps carried out in rounds of
    reservations (reserve with a max, commit the steps that hold both positions, release) -> (order, rounds)."""
    n = len(subset)
    done = np.uint32(0xFFFFFFFF)
    p = np.array(subset, dtype=np.int64)
    R = np.zeros(n, np.uint32)                                  # 0: free; i: held by step i; done: step i done
    words = rng.words_np(n, seed, STREAM_ORDER, epoch, 0).reshape(-1)[:n].astype(np.uint64)
    j = ((words * np.arange(1, n + 1, dtype=np.uint64)) >> np.uint64(32)).astype(np.int64)   # j_i in [0, i]
    steps = np.arange(1, n)
    rounds = 0
    while True:
        left = steps[R[steps] != done]
        if not left.size:
            return p, rounds
        rounds += 1
        np.maximum.at(R, left, left.astype(np.uint32))          # reserve
        np.maximum.at(R, j[left], left.astype(np.uint32))
        win = left[(R[left] == left) & (R[j[left]] == left)]    # commit: disjoint positions, so all at once
        p[win], p[j[win]] = p[j[win]], p[win].copy()
        R[win] = done
        R[R != done] = 0                                        # release


def test_minibatch_order_in_rounds_equals_the_cpus():
    """The algorithm of the order kernel, modelled in NumPy: rng.permutation_np's order for every n up to 300 and
    at the sizes that matter, in a number of rounds that grows like log n."""
    cases = [(n, n % 7, n % 3) for n in range(301)]
    cases += [(n, seed, epoch) for n in (1000, 6144, 7001, 30000) for seed, epoch in ((0, 0), (2**32 - 1, 9))]
    for n, seed, epoch in cases:
        got, rounds = _order_in_rounds(np.arange(n) * 3 + 1, seed, epoch)
        np.testing.assert_array_equal(got, rng.permutation_np(n, seed, epoch) * 3 + 1, err_msg=f"n = {n}")
        assert rounds <= 6 * np.log(n + 1) + 2, (n, rounds)


def test_wheel_ships_the_kernels(tmp_path):
    """A wheel built from the project holds fastmlp/gpu/kernels/*.cu*, and an install of it finds them there."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "fastmlp", src / "fastmlp", ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    r = subprocess.run([sys.executable, "-c", "import setuptools.build_meta as b; print(b.build_wheel('../out'))"],
                       cwd=src, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = tmp_path / "out" / r.stdout.split()[-1]
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)
    for p in gpu.kernel_dir().iterdir():
        if p.suffix in (".cu", ".cuh", ".h"):                  # host_cuda.h: the simulator builds with it
            assert f"fastmlp/gpu/kernels/{p.name}" in names, p.name
    r = subprocess.run([sys.executable, "-c", "import fastmlp.gpu as g; print(g.kernel_dir())"], cwd=tmp_path,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(r.stdout.strip()) == site / "fastmlp" / "gpu" / "kernels"


# --------------------------------------------------------------------------------- everywhere: no device
def test_without_cupy_the_gpu_backend_says_so_in_one_line(monkeypatch, without_gpu):
    monkeypatch.setitem(sys.modules, "cupy", None)           # import cupy now raises ImportError
    assert not gpu.available() and not backend.gpu_available()
    spec = tasks.parse_task("2-local", D=10)
    for call in (lambda: engine_class("gpu"), lambda: generate_on("gpu", spec, 0, "train", 0, 5),
                 lambda: backend.array_module("gpu"), lambda: backend.check("gpu")):
        with pytest.raises(UsageError) as e:
            call()
        assert str(e.value) == backend.NO_GPU and "\n" not in str(e.value)
        assert str(e.value).startswith("--backend gpu needs CuPy and a CUDA device")
        assert str(e.value).endswith("use --backend cpu")


def test_train_backend_gpu_without_a_gpu_exits_2_with_one_line(without_gpu):
    r = CliRunner().invoke(main, ["train", "2-local", "--D", "10", "--N", "20", "--lr", "0.1", "--backend", "gpu"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [f"fastmlp: error: {backend.NO_GPU}"]
    r = CliRunner().invoke(main, ["bench", "--impl", "fastmlp-gpu", "--workload", "W1"])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [f"fastmlp: error: {backend.NO_GPU}"]


@pytest.mark.slow
def test_gpu_check_stops_before_the_tests_when_the_engine_cannot_train(tmp_path, without_gpu):
    """bench/gpu_check.sh where the GPU engine cannot run (here: no CuPy): it stops at the smoke step, which builds
    a GpuEngine and trains one epoch, with the reason, before the GPU tests (which would all skip and pass)."""
    python = tmp_path / "python"                          # pip refuses (no install here); the checkout is used
    python.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then exit 1; fi\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "WHEELS", "PYTHONPATH", "FASTMLP_CUDASIM")}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=300,
                       env={**env, "PYTHON": str(python), "OUT": str(out), "WHEELS": str(tmp_path / "no-wheels")})
    log = r.stdout + r.stderr
    assert r.returncode == 2, log[-3000:]
    assert "STOPPED at step 'smoke'" in log and "the GPU backend cannot run here: CuPy is not importable" in log, log
    assert "gpu-tests" not in log and not (out / "gpu_tests.xml").exists()
    status = json.loads((out / "gpu_check.json").read_text())
    assert status["status"] == "stopped" and status["stopped_at"] == "smoke"
    assert [(s["step"], s["status"]) for s in status["steps"]] == [
        ("environment", "passed"), ("install", "passed"), ("preflight", "passed"), ("smoke", "stopped")]
    assert json.loads((out / "info.json").read_text())["gpu_stack"]["problem"].startswith("CuPy is not importable")


def test_gpu_check_fits_its_budget_in_the_order_of_value_and_returns_at_most_8_files():
    """bench/gpu_check.sh: the steps' caps add up to no more than the 460 s budget (8 minutes of a device with its
    start), correctness first, then the GPU rates, the protocol and the rest; it writes at most 8 files, and the
    only wheels it carries, skopt and pyaml, install without dependencies."""
    text = (ROOT / "bench" / "gpu_check.sh").read_text()
    caps = [entry.split(":") for entry in re.search(r'^CAPS="([^"]+)"', text, re.M).group(1).split()]
    assert [name for name, _ in caps] == ["environment", "install", "preflight", "smoke", "gpu-tests", "bench-gpu",
                                          "protocol", "other-tests", "bench-cpu"]
    assert sum(int(c) for _, c in caps) <= int(re.search(r"GPU_CHECK_BUDGET:-(\d+)", text).group(1)) == 460
    assert [m.group(1) for m in re.finditer(r'^step ([\w-]+) ', text, re.M)] == [name for name, _ in caps]
    assert not re.search(r"run_capped \d", text)                   # no cap but the table's
    written = set(re.findall(r'\$OUT_DIR/([\w.]+)', text)) | {"bench_gpu.jsonl", "summary.json"}  # + bench_gpu.py's
    assert len(written) <= 8 and int(re.search(r"^MAX_FILES=(\d+)", text, re.M).group(1)) == 8, written
    download = re.search(r"pip download (.+)", text).group(1)
    assert "--no-deps" in download and download.split()[-2:] == ["scikit-optimize==0.10.2", "pyaml"]
    assert re.search(r"pip install -q --no-index --no-deps .*\$wheels", text)


# ------------------------------------------------------------ everywhere: the GPU stack, with fakes of CuPy and cuBLAS
class _FakeArray:
    def __init__(self, n):
        self.values = [0] * n
        self.data = types.SimpleNamespace(ptr=0x7F0000)

    def get(self):
        return np.array(self.values)


def _fake_cupy(runtime=13000, driver=13000, devices=1, nvrtc=True):
    """A stand-in for CuPy: CUDA versions, a device count, and NVRTC that compiles the probe kernel (which then
    writes its values) or fails as it does without the NVRTC wheel."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "14.2.0"
    cp.int32, cp.uint8 = np.int32, np.uint8
    missing = RuntimeError(f"libnvrtc.so.{runtime // 1000}: cannot open shared object file")

    def nvrtc_version():
        if not nvrtc:
            raise missing
        return (runtime // 1000, 0)

    class RawKernel:
        def __init__(self, code, name):
            assert name in code
            if not nvrtc:
                raise missing

        def __call__(self, grid, block, args):
            args[0].values = [7 * t + 1 for t in range(block[0])]

    cp.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(runtimeGetVersion=lambda: runtime, driverGetVersion=lambda: driver,
                                      getDeviceCount=lambda: devices,
                                      getDeviceProperties=lambda i: {"name": b"NVIDIA H200"}),
        nvrtc=types.SimpleNamespace(getVersion=nvrtc_version))
    cp.zeros = lambda n, dtype=None: _FakeArray(n)
    cp.empty = lambda n, dtype=None: _FakeArray(0)
    cp.RawKernel = RawKernel
    return cp


@pytest.fixture
def fake_gpu(monkeypatch):
    """install(**kw): a fake CuPy (_fake_cupy) in sys.modules, probed afresh; no cuda.pathfinder unless a test
    installs one."""
    monkeypatch.setattr(provenance, "_PROBED", [], raising=False)   # (absent before the probe existed)
    monkeypatch.delenv(provenance.CUDASIM, raising=False)      # the real stack's checks, not the simulator's
    monkeypatch.setitem(sys.modules, "cuda", None)             # `from cuda import pathfinder` raises ImportError

    def install(**kw):
        cp = _fake_cupy(**kw)
        monkeypatch.setitem(sys.modules, "cupy", cp)
        return cp

    return install


def _fake_cdll(monkeypatch, found):
    """ctypes.CDLL opening only the names for which found(name) holds (a fake cuBLAS, version N.1.0 for a name
    ending in N): returns the list of names asked for."""
    tried = []

    class Lib:
        def __init__(self, name, *args, **kw):
            tried.append(name)
            if not found(name):
                raise OSError(f"{name}: cannot open shared object file: No such file or directory")
            self.major = int(name.rsplit(".", 1)[-1])

        def __getattr__(self, fn):
            if fn.startswith("__"):
                raise AttributeError(fn)

            def call(*args):
                if fn == "cublasGetProperty":
                    args[1]._obj.value = (self.major, 1, 0)[args[0]]
                return 0

            setattr(self, fn, call)
            return call

    monkeypatch.setattr(ctypes, "CDLL", Lib)
    return tried


def _fake_pathfinder(monkeypatch, path=None):
    """A cuda.pathfinder that finds cuBLAS at `path` (None: finds nothing); returns the names asked for."""
    asked = []
    pf = types.ModuleType("cuda.pathfinder")

    class DynamicLibNotFoundError(RuntimeError):
        pass

    def load_nvidia_dynamic_lib(name):
        asked.append(name)
        if path is None:
            raise DynamicLibNotFoundError(f"Failure finding lib{name}.so")
        return types.SimpleNamespace(abs_path=path, was_already_loaded_from_elsewhere=False)

    pf.DynamicLibNotFoundError, pf.load_nvidia_dynamic_lib = DynamicLibNotFoundError, load_nvidia_dynamic_lib
    cuda = types.ModuleType("cuda")
    cuda.__path__, cuda.pathfinder = [], pf
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", pf)
    return asked


def _fake_cupy_backends(monkeypatch):
    """CuPy's package cupy_backends.cuda.libs as older CuPy has it: its cuBLAS module is a submodule, not an
    attribute, until imported. Returns the list of submodules imported."""
    imported = []
    for name in ("cupy_backends", "cupy_backends.cuda", "cupy_backends.cuda.libs"):
        mod = types.ModuleType(name)
        mod.__path__ = []
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.cublas", None)
    del sys.modules["cupy_backends.cuda.libs.cublas"]          # absent now; monkeypatch restores what was there

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname == "cupy_backends.cuda.libs.cublas":
                return importlib.util.spec_from_loader(fullname, self)
            return None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            imported.append(module.__name__)

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    return imported


def test_the_gpu_extras_bring_nvrtc_and_cublas():
    """CuPy brings NVRTC and cuBLAS only with [ctk]; a CUDA 12 driver gets its own extra."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["gpu"]] == ["cupy-cuda13x[ctk]"]
    assert [d.split(">")[0] for d in extras["gpu-cuda12"]] == ["cupy-cuda12x[ctk]"]
    assert provenance.GPU_EXTRAS == {13: "gpu", 12: "gpu-cuda12"}


def test_available_with_nvrtc_and_cublas(fake_gpu, monkeypatch):
    fake_gpu()
    _fake_cdll(monkeypatch, found=lambda name: name == "libcublas.so.13")
    assert gpu.available() and backend.gpu_available()
    info = provenance.gpu_info()
    assert (info["device"], info["devices"], info["nvrtc"], info["cublas"]) == ("NVIDIA H200", 1, "13.0", "13.1.0")
    assert (info["cuda_runtime"], info["cuda_driver"]) == (13000, 13000)


@pytest.mark.parametrize("missing", ["nvrtc", "cublas"])
def test_available_means_the_engine_can_be_built_and_run(fake_gpu, monkeypatch, missing):
    """cupy-cuda13x without [ctk]: CuPy imports and sees the device, but cannot compile a kernel or find cuBLAS.
    The backend is then unusable, in one line that names the extra, and never fails later inside the engine."""
    fake_gpu(nvrtc=missing != "nvrtc")
    _fake_cdll(monkeypatch, found=lambda name: missing != "cublas")
    assert not gpu.available() and not backend.gpu_available()
    problem = provenance.gpu_report()["problem"]
    assert ("NVRTC" if missing == "nvrtc" else "cuBLAS") in problem
    assert "cupy-cuda13x[ctk]" in problem and "pip install 'fastmlp[gpu]'" in problem and "\n" not in problem
    with pytest.raises(UsageError) as e:
        engine_class("gpu")
    assert str(e.value) == backend.NO_GPU


def test_a_missing_cublas_says_what_to_install(fake_gpu, monkeypatch):
    """GpuEngine's cuBLAS loader, where cuBLAS is not found: one line naming cupy-cudaNNx[ctk] and the extra."""
    from fastmlp.gpu import cublas
    for runtime, extra in ((13000, "gpu"), (12040, "gpu-cuda12")):
        fake_gpu(runtime=runtime, driver=13000)
        _fake_cdll(monkeypatch, found=lambda name: False)
        with pytest.raises(UsageError) as e:
            cublas._load_cublas()
        msg = str(e.value)
        assert f"cupy-cuda{runtime // 1000}x[ctk]" in msg and f"pip install 'fastmlp[{extra}]'" in msg, msg
        assert f"libcublas.so.{runtime // 1000}" in msg and "reinstall" not in msg and "\n" not in msg


def test_cublas_gets_the_stream_before_its_workspace(fake_gpu, monkeypatch):
    """cublasSetStream resets the workspace to cuBLAS's own pool, so the handle's 32 MiB workspace is set after."""
    from fastmlp.gpu import cublas
    fake_gpu()
    calls = []

    class Lib:
        def __getattr__(self, fn):
            def call(*args):
                calls.append((fn, args[1:]))
                return 0
            return call

    monkeypatch.setattr(cublas, "_load_cublas", Lib)
    h = cublas.Cublas(types.SimpleNamespace(ptr=0x5151), tf32=True)
    assert [fn for fn, _ in calls] == ["cublasCreate_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2",
                                       "cublasSetMathMode"]
    assert calls[1][1] == (0x5151,)
    assert calls[2][1] == (h.workspace.data.ptr, cublas.CUBLAS_WORKSPACE_BYTES)
    assert calls[3][1] == (cublas.Cublas.TF32_TENSOR_OP_MATH,)


@pytest.mark.parametrize("runtime", [12080, 13000])
def test_without_pathfinder_cupys_cublas_module_is_imported_and_the_soname_follows_cuda(fake_gpu, monkeypatch,
                                                                                       runtime):
    """A CuPy without cuda.pathfinder: its cuBLAS module (a submodule) is imported, which links libcublas, and the
    library is opened by the soname of CuPy's CUDA major version only."""
    from fastmlp.gpu import cublas
    fake_gpu(runtime=runtime)
    imported = _fake_cupy_backends(monkeypatch)
    soname = f"libcublas.so.{runtime // 1000}"
    tried = _fake_cdll(monkeypatch, found=lambda name: name == soname)
    cublas._load_cublas()
    assert imported == ["cupy_backends.cuda.libs.cublas"]
    assert tried == [soname]


def test_with_pathfinder_cublas_comes_from_where_it_finds_it(fake_gpu, monkeypatch):
    cp = fake_gpu()
    wheel = "/site-packages/nvidia/cu13/lib/libcublas.so.13"
    asked = _fake_pathfinder(monkeypatch, wheel)
    tried = _fake_cdll(monkeypatch, found=lambda name: name == wheel)
    assert provenance.cuda_library("cublas", cp)[1] == wheel and asked == ["cublas"] and tried == [wheel]
    assert provenance.gpu_report()["cublas_path"] == wheel
    asked = _fake_pathfinder(monkeypatch, None)                 # pathfinder finds nothing: the soname, then a line
    tried = _fake_cdll(monkeypatch, found=lambda name: False)
    with pytest.raises(OSError) as e:
        provenance.cuda_library("cublas", cp)
    assert tried == ["libcublas.so.13"] and "cuda.pathfinder: Failure finding libcublas.so" in str(e.value)


def test_info_names_cupy_cuda_and_the_driver_and_why_the_gpu_is_unusable(fake_gpu, monkeypatch):
    """A CUDA 12 driver under cupy-cuda13x: `fastmlp info` says so, with the versions it found and the fix."""
    fake_gpu(runtime=13000, driver=12040)
    monkeypatch.setattr(provenance, "cupy_package", lambda: "cupy-cuda13x")
    r = CliRunner().invoke(main, ["info"])
    assert r.exit_code == 0, r.output
    line = next(line for line in r.stdout.splitlines() if line.startswith("gpu backend:"))
    assert "supports CUDA up to 12.4" in line and "built for CUDA 13.0" in line, line
    assert "pip install 'fastmlp[gpu-cuda12]'" in line, line
    assert "found: CuPy cupy-cuda13x 14.2.0, CUDA runtime 13.0, driver for CUDA 12.4" in r.stdout, r.stdout
    out = json.loads(CliRunner().invoke(main, ["info", "--json"]).stdout)
    assert out["backends"]["gpu"] is None
    assert (out["gpu_stack"]["cupy"], out["gpu_stack"]["cuda_runtime"], out["gpu_stack"]["cuda_driver"]) == (
        "cupy-cuda13x 14.2.0", 13000, 12040)
    assert not gpu.available()


def test_info_on_a_usable_cuda_12_gpu(fake_gpu, monkeypatch):
    fake_gpu(runtime=12080, driver=12080)
    monkeypatch.setattr(provenance, "cupy_package", lambda: "cupy-cuda12x")
    _fake_cdll(monkeypatch, found=lambda name: name == "libcublas.so.12")
    r = CliRunner().invoke(main, ["info"])
    line = next(line for line in r.stdout.splitlines() if line.startswith("gpu backend:"))
    assert line == ("gpu backend: NVIDIA H200 (1 device(s)); CuPy cupy-cuda12x 14.2.0, CUDA runtime 12.8, driver for "
                    "CUDA 12.8, NVRTC 12.0, cuBLAS 12.1.0"), line


@pytest.mark.parametrize("devices, problem", [(0, "no CUDA device"), (RuntimeError("cudaErrorNoDevice"),
                                                                       "CUDA cannot reach a device")])
def test_no_device_is_one_line(fake_gpu, monkeypatch, devices, problem):
    cp = fake_gpu()
    if isinstance(devices, Exception):
        def count():
            raise devices
        cp.cuda.runtime.getDeviceCount = count
    else:
        cp.cuda.runtime.getDeviceCount = lambda: devices
    assert provenance.gpu_report()["problem"].startswith(problem) and not gpu.available()


# ------------------------------------------------------------------------------------------ GPU: randomness
@pytest.mark.gpu
def test_philox_words_equal_the_cpus():
    g = np.random.default_rng(0)
    ctr = g.integers(0, 2**32, size=(1001, 4), dtype=np.uint64).astype(np.uint32)   # 1001: crosses blocks of 256
    ctr[0], ctr[1] = 0, 2**32 - 1
    for key in ((0, 0), (2**32 - 1, STREAM_ORDER), (12345, STREAM_TRAIN_X)):
        got = gpu.philox_words(ctr, key).get()
        np.testing.assert_array_equal(got, rng.philox4x32_np(ctr, np.array(key, dtype=np.uint32)))


@pytest.mark.gpu
@pytest.mark.parametrize("task, D", [("1-local", 37), ("2-local", 500), ("3-global", 40), ("2-global", 101),
                                     ("temperature", 100), ("temperature", 37)])
def test_datasets_equal_the_cpus(task, D):
    """Labels exactly; inputs to the last float32 bit (CUDA's and the host's libm may round a float64 Gaussian
    differently by one ulp, which rarely crosses a float32 rounding boundary); temperature inputs to FFT rounding."""
    spec = tasks.parse_task(task, D=D)
    for split, start, n in (("train", 0, 3001), ("test", 2**32 - 700, 700), ("train", 5, 0)):
        x_cpu, y_cpu = tasks.generate(spec, 7, split, start, n)
        x, y = gpu.generate(spec, 7, split, start, n)
        assert (x.dtype, y.dtype, x.shape, y.shape) == (np.float32, np.int8, (n, D), (n,))
        x, y = x.get(), y.get()
        np.testing.assert_array_equal(y, y_cpu)
        if spec.rule == "temperature":
            np.testing.assert_allclose(x, x_cpu, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_allclose(x, x_cpu, rtol=2.0**-23, atol=0)   # at most one float32 ulp
            assert n == 0 or (x == x_cpu).mean() > 0.999
    x, y = generate_on("gpu", spec, 7, "train", 0, 10)                      # the seam the protocol uses
    np.testing.assert_array_equal(y.get(), tasks.generate(spec, 7, "train", 0, 10)[1])


@pytest.mark.gpu
@pytest.mark.parametrize("lengths", [[1, 2, 5, 37, 1000, 6144 // 2], [3, 7000, 64], [16000, 30000, 2]],
                         ids=["shared", "global", "paper"])   # 2 * 7000 words do not fit shared memory
def test_minibatch_order_equals_the_cpus(lengths):
    cp = gpu.device.cupy_module()
    g = np.random.default_rng(1)
    M, P = len(lengths) + 1, max(lengths)
    seeds = np.array([0, 2**32 - 1, 5, 77, 123, 9, 4][:M], np.uint32)
    epochs = np.array([0, 3, 1, 2, 10, 0, 7][:M], np.int32)
    subsets = [np.sort(g.choice(10**5, n, replace=False)) for n in lengths] + [np.arange(4)]
    table = np.zeros((M, P), np.int32)
    for m, s in enumerate(subsets):
        table[m, :len(s)] = s
    n = np.array([len(s) for s in subsets], np.int32)
    trained = np.ones(M, np.int32)
    trained[-1] = 0                                            # a stopped network: its row is left alone
    order, scratch = cp.full((M, P), -1, dtype=cp.int32), cp.zeros((M, P), cp.uint32)
    for epoch in (epochs, epochs + 1):                         # the second epoch reuses the rows as the engine does
        gpu.permutation(order, scratch, cp.asarray(table), cp.asarray(n), cp.asarray(seeds), cp.asarray(epoch),
                        cp.asarray(trained), M)
        got = order.get()
        for m in range(M - 1):
            expected = subsets[m][rng.permutation_np(len(subsets[m]), int(seeds[m]), int(epoch[m]))]
            np.testing.assert_array_equal(got[m, :n[m]], expected)
        assert (got[-1] == -1).all()


# -------------------------------------------------------------------------------------- GPU: single kernels
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_and_gather_rows(dtype):
    cp = gpu.device.cupy_module()
    g = np.random.default_rng(2)
    S, R, F = 3, 17, 21
    z = g.standard_normal((S, R, F)).astype(dtype)
    z[0, 0, 0] = np.nan
    bias = g.standard_normal((S, F)).astype(dtype)
    for relu in (True, False):
        d = cp.asarray(z)
        gpu.bias_relu(d, cp.asarray(bias), 0.5, relu, S, R)
        v = z.astype(np.float64) + 0.5 * bias[:, None, :]
        expected = v * (v > 0) if relu else v                   # NaN stays NaN through the ReLU
        assert np.isnan(d.get()[0, 0, 0])
        assert_close(d.get().ravel()[1:], expected.ravel()[1:], "forward", dtype)

    X = g.standard_normal((40, 11)).astype(dtype)
    idx = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3], [5, 8, 9, 7, 9]], np.int32)
    n = np.array([5, 3, 5], np.int32)
    trained = np.array([1, 1, 0], np.int32)                    # network 2 is not live: zeros
    out = cp.full(S * 4 * 11, 7.0, dtype=dtype)
    gpu.gather_rows(out, cp.asarray(X), cp.asarray(idx), cp.asarray(n), cp.asarray(trained),
                    cp.zeros(S, cp.int32), 5, 1, 4, S)         # rows 1..4 of each index row
    out = out.get().reshape(S, 4, 11)
    np.testing.assert_array_equal(out[0], X[idx[0, 1:5]])
    np.testing.assert_array_equal(out[1, :2], X[idx[1, 1:3]])
    np.testing.assert_array_equal(out[1, 2:], 0)               # past n[1]
    np.testing.assert_array_equal(out[2], 0)


@pytest.mark.gpu
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_step(dtype, loss):
    """Loss, dlogits, the scaled gradient and the output-bias update against reference.output_loss, for every
    loss; a short minibatch, a network past its rows, and a diverging network that updates nothing."""
    cp = gpu.device.cupy_module()
    g = np.random.default_rng(3)
    S, B, L, H, P = 4, 17, 2, 5, 40
    zc = (3 * g.standard_normal((S, B, N_CLASSES))).astype(dtype)
    zc[3, 2, 1] = np.inf
    bo = g.standard_normal((S, N_CLASSES)).astype(dtype)
    Y = g.integers(0, 2, 100).astype(np.int8)
    order = g.integers(0, 100, (S, P)).astype(np.int32)
    n = np.array([P, 20, 10, P], np.int32)                     # start 17: 17, 3, 0 and 17 rows
    lrs = np.array([0.1, 0.5, 0.2, 0.3], dtype)
    s, start = 0.5, 17
    dz, dzs = cp.full(S * B * 2, 9.0, dtype=dtype), cp.full(S * B * 2, 9.0, dtype=dtype)
    act = cp.ones((L, S, B, H), dtype=dtype)
    dbo = cp.asarray(bo)
    loss_sum = cp.zeros(S)
    steps = cp.zeros(S, cp.int32)
    diverged = cp.zeros(S, cp.int32)
    gpu.softmax_xent(dz, dzs, dbo, loss_sum, steps, diverged, act, cp.asarray(zc), cp.asarray(Y),
                     cp.asarray(order), cp.asarray(n), cp.ones(S, cp.int32), cp.asarray(lrs), s, P, start, S, B,
                     LOSSES.index(loss))
    dz, dzs = dz.get().reshape(S, B, 2), dzs.get().reshape(S, B, 2)
    np.testing.assert_array_equal(steps.get(), [1, 1, 0, 1])
    np.testing.assert_array_equal(diverged.get(), [0, 0, 0, 1])
    for m, nb in ((0, 17), (1, 3)):
        z = (zc[m, :nb] + s * bo[m]).astype(np.float64)[None]
        y = Y[order[m, start:start + nb]]
        value, dlogits = reference.output_loss(z, y, loss)
        assert_close(loss_sum.get()[m], value[0], "loss", dtype)
        assert_close(dz[m, :nb], dlogits[0], "forward", dtype)
        np.testing.assert_array_equal(dz[m, nb:], 0)
        assert_close(dzs[m], -lrs[m] * dz[m], "forward", dtype)
        assert_close(dbo.get()[m], bo[m] - lrs[m] * s * dlogits[0].sum(axis=0), "step", dtype)
        assert (act[:, m].get() == 1).all()
    np.testing.assert_array_equal(dz[2], 0)                    # no rows left: no gradient, no update
    np.testing.assert_array_equal(dzs[2], 0)
    np.testing.assert_array_equal(dbo.get()[2], bo[2])
    assert (act[:, 2].get() == 0).all()                        # what the weight-update GEMMs read: exactly 0
    np.testing.assert_array_equal(dz[3], 0)                    # diverged: nothing moves, activations zeroed
    np.testing.assert_array_equal(dzs[3], 0)
    np.testing.assert_array_equal(dbo.get()[3], bo[3])
    assert (act[:, 3].get() == 0).all() and not np.isfinite(loss_sum.get()[3])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward(dtype):
    """The masked gradient, its -lr scaling and the bias update for the networks the step updates; for a diverged
    network, a stopped one and one past the end of its subset, zeros and the bias untouched even where the
    incoming gradient is NaN (0 * inf from overflowed weights)."""
    cp = gpu.device.cupy_module()
    g = np.random.default_rng(4)
    S, R, K, start = 5, 17, 133, 34                            # K = 133: crosses blocks of 128 threads
    da = g.standard_normal((S, R, K)).astype(dtype)
    da[2:, 0, :3] = np.nan
    a = np.maximum(g.standard_normal((S, R, K)), 0).astype(dtype)
    bias = g.standard_normal((S, K)).astype(dtype)
    lrs = np.array([0.1, 0.2, 0.3, 0.4, 0.5], dtype)
    n = np.array([40, 35, 60, 60, 34], np.int32)                # network 4 has no rows from 34 on
    trained = np.array([1, 1, 1, 0, 1], np.int32)              # network 3 stopped
    diverged = np.array([0, 0, 1, 0, 0], np.int32)             # network 2 diverged
    d_dz, d_dzs, d_bias = cp.asarray(da), cp.full(S * R * K, 9.0, dtype=dtype), cp.asarray(bias)
    gpu.relu_backward(d_dz, d_dzs, d_bias, cp.asarray(a), cp.asarray(lrs), cp.asarray(n), cp.asarray(trained),
                      cp.asarray(diverged), 0.5, start, S, R)
    dz = da.astype(np.float64) * (a > 0)
    dz[2:] = 0
    assert_close(d_dz.get(), dz, "forward", dtype)
    assert_close(d_dzs.get().reshape(S, R, K), -lrs[:, None, None] * dz, "forward", dtype)
    expected = bias - 0.5 * lrs[:, None] * dz.sum(axis=1)
    assert_close(d_bias.get()[:2], expected[:2], "step", dtype)
    np.testing.assert_array_equal(d_bias.get()[2:], bias[2:])


# ---------------------------------------------------------------------------------------------- GPU: engine
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param, init, scale", [("standard", "he", 1.0), ("standard", "lecun", 0.5),
                                                ("standard", "torch", 1.0), ("standard", "torch", 0.1),
                                                ("ntk", "he", 0.3)])
def test_initial_weights_drawn_on_the_device_equal_the_cpus(data_medium, param, init, scale, dtype):
    """The initial parameters drawn on the device (kernels/init.cu) from the CPU's Philox streams: uniform draws
    (torch) bit for bit, Gaussians to the last bit but for the rare one-ulp difference of the device's libm."""
    x, y = data_medium
    seeds = [3, 2**32 - 1, 3, 0]
    kw = dict(param=param, init=init, init_scale=scale, dtype=dtype)
    g = gpu.GpuEngine(x, y, 21, 3, 17, [0.1] * 4, seeds, **kw).params()
    c = Engine(x, y, 21, 3, 17, [0.1] * 4, seeds, **kw).params()
    if init == "torch":
        _assert_params_equal(g, c)
        return
    # float32: one ulp at most, rarely; float64 shows the libm's ulp of log and sincos directly (a few in 1000)
    rtol, exact = (np.finfo(np.float32).eps, 0.999) if dtype == np.float32 else (4 * np.finfo(np.float64).eps, 0.99)
    for (W, b), (W_c, b_c) in zip(g, c):
        for p, p_c in ((W, W_c), (b, b_c)):
            np.testing.assert_allclose(p, p_c, rtol=rtol, atol=0)
            assert (p == p_c).mean() > exact
        assert param == "ntk" or not b.any()


@pytest.mark.gpu
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_engine_follows_the_cpu_engine(data_medium, dtype, loss):
    """Same seeds, subsets and minibatches: the parameters after 3 epochs (45 steps) and the epoch losses agree,
    for every loss."""
    x, y = data_medium
    H, L, B = 21, 2, 17
    lrs, seeds = [0.02, 0.05, 0.1, 0.2, 0.5], [7, 1, 7, 2**32 - 1, 0]
    subsets = _subsets(len(x), [300, 250, 200, 290, 123], seed=5)
    cpu_e = Engine(x, y, H, L, B, lrs, seeds, subsets=subsets, dtype=dtype, loss=loss)
    gpu_e = gpu.GpuEngine(x, y, H, L, B, lrs, seeds, subsets=subsets, dtype=dtype, loss=loss)
    cpu_e.train_epochs(3)
    gpu_e.train_epochs(3)
    for (W, b), (W_c, b_c) in zip(gpu_e.params(), cpu_e.params()):
        assert_close(W, W_c, "step", dtype)
        assert_close(b, b_c, "step", dtype)
    assert_close(gpu_e.train_loss, cpu_e.train_loss, "loss", dtype)
    np.testing.assert_array_equal(gpu_e.epochs, cpu_e.epochs)
    err, loss = gpu_e.evaluate(x, y)
    err_c, loss_c = cpu_e.evaluate(x, y)
    assert np.abs(err - err_c).max() <= 2                     # near-ties may flip
    assert_close(loss, loss_c, "evaluate", dtype)


@pytest.mark.gpu
def test_graphs_change_nothing(data_medium):
    """An epoch replayed as a CUDA graph runs exactly the launches of the eager epoch: bit-identical results."""
    x, y = data_medium
    args = (x, y, 21, 2, 17, [0.05, 0.1, 0.3], [1, 2, 3])
    subsets = _subsets(len(x), [300, 200, 250], seed=2)
    eager = gpu.GpuEngine(*args, subsets=subsets, graphs=False)
    graphed = gpu.GpuEngine(*args, subsets=subsets, graphs=True)
    for e in (eager, graphed):
        e.train_epochs(4)
        e.fit(max_epochs=8)
    assert graphed.graph_launches >= 3 and graphed.graph_error is None and eager.graph_launches == 0
    _assert_params_equal(eager.params(), graphed.params())
    for name in ("epochs", "train_loss", "train_error", "converged", "stopped"):
        np.testing.assert_array_equal(getattr(eager, name), getattr(graphed, name), err_msg=name)


@pytest.mark.gpu
def test_stopped_networks_are_compacted_out_and_stay_frozen(data_medium):
    """The engines' stop-rule test (test_engine.py) on the GPU again, with compaction asserted: stopped networks
    stay frozen also after they are moved out of the batched calls."""
    e = check_fit_stop_rule(gpu.GpuEngine, data_medium, np.float32)
    assert e._S < e.M                                 # converged networks were compacted out of the batch


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_evaluate_and_logits_follow_the_reference(data_medium, dtype):
    x, y = data_medium
    x, y = x[:137], y[:137]
    e = gpu.GpuEngine(x, y, 21, 2, 17, [0.05, 0.2, 0.5], [3, 4, 5], param="ntk", dtype=dtype, sigma_b2=0.5)
    e.train_epochs(1)
    params = e.params()
    logits_ref, _ = reference.forward(params, _scales(e), x)
    assert_close(e.logits(x), logits_ref, "forward", dtype)
    keep = np.ones(len(x), bool)
    if dtype == np.float32:
        keep = (np.abs(logits_ref[..., 1] - logits_ref[..., 0]) >= 1e-5).all(axis=0)
    err_ref, loss_ref = reference.evaluate(params, _scales(e), x[keep], y[keep])
    err, loss = e.evaluate(x[keep], y[keep])
    n = keep.sum()
    np.testing.assert_array_equal(err, np.rint(err_ref * n).astype(np.int64))
    assert_close(loss, loss_ref * n, "evaluate", dtype)
    cp = gpu.device.cupy_module()
    halves = [(x[:60], y[:60]), (cp.asarray(x[60:]), cp.asarray(y[60:]))]   # host and device chunks
    in_halves = np.rint(e.test_error(halves) * len(x))
    assert np.abs(in_halves - e.evaluate(x, y)[0]).max() <= 1          # other GEMM shapes: a near-tie may flip


@pytest.mark.gpu
def test_learns_1_local_and_task_metrics_match_the_cpu():
    """1-local, D = 50, N = 500, L = 1, H = 50 reaches test error below 0.1 on the GPU; the test set generated on
    the device scores the networks as the CPU's test set does."""
    spec = tasks.parse_task("1-local", D=50)
    x, y = gpu.generate(spec, 0, "train", 0, 500)
    e = gpu.GpuEngine(x, y, 50, 1, 50, [1.0] * 6, np.arange(6))
    e.fit(max_epochs=2000)
    assert e.converged.all() and (e.train_error == 0).all()
    err, loss = e.task_metrics(spec, 0, "test", 10000, chunk=4096)
    assert err.mean() < 0.1
    cpu_e = Engine(x.get(), y.get(), 50, 1, 50, [1.0] * 6, np.arange(6))
    cpu_e.set_params(e.params())
    err_c, loss_c = cpu_e.task_metrics(spec, 0, "test", 10000)
    assert np.abs(err - err_c).max() <= 3 / 10000
    assert_close(loss, loss_c, "loss", np.float32)


# ------------------------------------------------------------------------ only a device: what the simulator cannot show
@pytest.mark.device
def test_tf32_rounds_the_gemms_only_when_asked(data_medium):
    """TF32 tensor cores (10-bit products) move the parameters by more than float32 rounding, yet stay near them;
    the simulator computes every GEMM in float32, so only a device shows the difference."""
    x, y = data_medium
    args = (x, y, 64, 2, 17, [0.1, 0.2], [1, 2])
    exact, tf32 = gpu.GpuEngine(*args), gpu.GpuEngine(*args, tf32=True)
    for e in (exact, tf32):
        e.train_epochs(2)
    assert tf32.tf32 and not exact.tf32
    W, W_t = exact.params()[0][0], tf32.params()[0][0]
    assert np.abs(W_t - W).max() > 1e-5                        # beyond the "step" tolerance of float32
    np.testing.assert_allclose(W_t, W, rtol=0.05, atol=1e-2)


@pytest.mark.device
def test_preflight_sees_the_devices_memory():
    """What preflight checks the GPU's allocations against: free device memory, at most the device's total."""
    from fastmlp import preflight
    cp = gpu.device.cupy_module()
    free, total = cp.cuda.Device().mem_info
    assert 0 < preflight.available_memory(cp) <= total and free <= total


def _assert_engines_agree(gpu_e, cpu_e, dtype=np.float32):
    """Parameters to the "step" tolerance, epochs and stop flags exactly."""
    for (W, b), (W_c, b_c) in zip(gpu_e.params(), cpu_e.params()):
        assert_close(W, W_c, "step", dtype)
        assert_close(b, b_c, "step", dtype)
    for name in ("epochs", "converged", "diverged", "stopped"):
        np.testing.assert_array_equal(getattr(gpu_e, name), getattr(cpu_e, name), err_msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["H=500", "M=128", "P=7000"])
def test_shapes_past_the_small_tests(case):
    """Shapes the small tests never reach, against the CPU engine: the paper's width (H = 500: the CPU's wide-layer
    path, GEMMs of 500 x 500), more networks than any block count used elsewhere (M = 128, fit with its stop
    checks and compaction), and training subsets longer than 6144 samples (the order kernel's global-memory
    variant, 140 steps an epoch)."""
    D, H, L, B, N, M, epochs = {"H=500": (20, 500, 2, 50, 150, 2, 2), "M=128": (11, 16, 1, 25, 100, 128, 5),
                                "P=7000": (5, 8, 1, 50, 7000, 2, 1)}[case]
    x, _ = make_data(N, D, seed=4)
    y = (x[:, 0] > 0).astype(np.int8)                  # 1-local: some networks fit it within a few epochs
    g = np.random.default_rng(5)
    lrs, seeds = list(g.choice([0.02, 0.1, 0.5], M)), list(range(M))
    subsets = _subsets(N, [N - 37 * (m % 3) for m in range(M)], seed=6)
    engines = [cls(x, y, H, L, B, lrs, seeds, subsets=subsets) for cls in (gpu.GpuEngine, Engine)]
    for e in engines:
        if case == "M=128":
            e.fit(max_epochs=epochs)
        else:
            e.train_epochs(epochs)
    _assert_engines_agree(*engines)
    if case == "M=128":
        assert engines[0].converged.any() and not engines[0].converged.all()   # some stopped, the rest went on


@pytest.mark.gpu
def test_a_diverged_networks_parameters_stay_as_on_the_cpu(data_medium):
    """A learning rate so large (and inputs so large) that the first step overflows weights to inf while its own
    loss is still finite: the next step's loss is not finite, and on both engines that step changes nothing (on the
    GPU, 0 * inf in the zeroed step made 294 of the network's parameters NaN). The others train on unaffected."""
    x, y = data_medium
    args = (100 * x, y, 21, 1, 17, [1e-5, 1e38, 1e-4], [1, 2, 3])
    gpu_e, cpu_e = gpu.GpuEngine(*args), Engine(*args)
    for e in (gpu_e, cpu_e):
        e.train_epochs(2)
    assert list(gpu_e.diverged) == list(cpu_e.diverged) == [False, True, False]
    for (W, b), (W_c, b_c) in zip(gpu_e.params(), cpu_e.params()):
        for p, p_c in ((W, W_c), (b, b_c)):
            np.testing.assert_array_equal(np.isnan(p), np.isnan(p_c))
            both = np.isfinite(p) & np.isfinite(p_c)
            assert_close(p[both], p_c[both], "step", np.float32)
            edge = np.isinf(p) != np.isinf(p_c)    # summation order decides overflow, but only at float32's edge
            assert (np.abs(np.where(np.isinf(p), p_c, p)[edge]) > 1e37).all()
    assert not np.isnan(np.concatenate([W[1].ravel() for W, _ in gpu_e.params()])).any()
    assert np.isinf(np.concatenate([W[1].ravel() for W, _ in cpu_e.params()])).any()   # the case it is about


@pytest.mark.gpu
def test_cli_train_and_protocol_run_on_the_gpu():
    r = CliRunner().invoke(main, ["train", "2-local", "--D", "20", "--N", "200", "--L", "2", "--H", "16", "--lr",
                                  "0.05,0.2", "--seeds", "0-2", "--n-test", "500", "--max-epochs", "30", "--json",
                                  "--backend", "gpu"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["networks"]) == 6 and out["provenance"]["backend"] == "gpu" and out["provenance"]["device"]
    for n in out["networks"]:
        assert 1 <= n["epochs"] <= 30 and 0.0 <= n["test_error"] <= 1.0
        assert n["converged"] == (n["train_error"] == 0.0)
    from fastmlp import protocol
    spec = tasks.parse_task("1-local", D=10)
    x, y = generate_on("gpu", spec, 0, "train", 0, 100)
    folds = protocol.fold_indices(100, 4, 0)
    scores = protocol.validation_errors(protocol.Trainer(gpu.GpuEngine, x, y, 16, 1, 25, 100), [0.1, 0.5], folds)
    cpu_scores = protocol.validation_errors(protocol.Trainer(Engine, x.get(), y.get(), 16, 1, 25, 100), [0.1, 0.5],
                                            folds)
    for (err, _, _), (err_c, _, _) in zip(scores, cpu_scores):
        assert err.shape == (4,) and np.abs(err - err_c).max() <= 0.1
    rec = protocol.run(tasks.parse_task("1-local", D=10), N=100, L=1, H=16, B=25, repeats=3, n_test=1000, lr=0.3,
                       backend="gpu", max_epochs=200)
    assert rec["config"]["backend"] == "gpu" and len(rec["final"]["repeats"]) == 3
    assert rec["final"]["test_error"]["mean"] < 0.3
    # `fastmlp run` end to end, the search included, on both backends: the same folds, candidates and test set
    point = ["run", "1-local", "--D", "10", "--N", "120", "--L", "1", "--H", "16", "--B", "20", "--folds", "3",
             "--bo-calls", "4", "--bo-batch", "2", "--repeats", "2", "--n-test", "2000", "--max-epochs", "60",
             "--json"]
    recs = {}
    for name in ("gpu", "cpu"):
        r = CliRunner().invoke(main, point + ["--backend", name])
        assert r.exit_code == 0, r.output
        recs[name] = json.loads(r.stdout)
    assert recs["gpu"]["provenance"]["backend"] == "gpu"
    history = [[(h["lr"], h["mean_error"]) for h in recs[b]["search"]["history"]] for b in ("gpu", "cpu")]
    assert len(history[0]) == 4 and history[0][0][0] == history[1][0][0]   # the same first candidate, scored alike
    assert abs(history[0][0][1] - history[1][0][1]) <= 0.02                # (near-ties may flip a sample or two)
    assert abs(recs["gpu"]["final"]["test_error"]["mean"] - recs["cpu"]["final"]["test_error"]["mean"]) < 0.02
