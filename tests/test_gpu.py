"""The GPU backend: kernels/*.cu against the float64 reference and the CPU, and GpuEngine against Engine.

Everywhere: every .cu file compiles with nvcc -arch=sm_90 (where nvcc exists) and through NVRTC as CuPy will
compile it (where CuPy and NVRTC exist), with exactly the -D options fastmlp.gpu passes; the kernel sources are
found in a checkout and inside the wheel; asking for the GPU where there is none is one line and exit status 2.
On a GPU (tests marked gpu, skipped without CuPy and a device): Philox words and datasets equal the CPU's, each
kernel follows the reference, and the engine follows the reference for 20 steps, the CPU engine, and the stop rule.
Shapes cross block and warp edges on purpose (D = 11, H = 21, B = 17, N = 37 / 75, P > 6144 for the order kernel).
"""
import json
import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastmlp import backend, gpu, reference, rng, tasks
from fastmlp.cli import main
from fastmlp.constants import (N_CLASSES, PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1, STREAM_FOLD,
                               STREAM_INIT, STREAM_ORDER, STREAM_TEST_X, STREAM_TRAIN_X)
from fastmlp.backend import engine_class, generate_on
from fastmlp.cpu_engine import Engine
from fastmlp.errors import UsageError
from conftest import (DTYPES, assert_close, assert_params_equal as _assert_params_equal, check_fit_stop_rule,
                      scales as _scales, subsets as _subsets)

ROOT = Path(__file__).resolve().parent.parent
HAS_GPU = backend.gpu_available()          # CuPy importable and a device reachable; never raises
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
        if p.suffix in (".cu", ".cuh"):
            assert f"fastmlp/gpu/kernels/{p.name}" in names, p.name
    r = subprocess.run([sys.executable, "-c", "import fastmlp.gpu as g; print(g.kernel_dir())"], cwd=tmp_path,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(r.stdout.strip()) == site / "fastmlp" / "gpu" / "kernels"


# --------------------------------------------------------------------------------- everywhere: no device
def test_without_cupy_the_gpu_backend_says_so_in_one_line(monkeypatch):
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


@pytest.mark.skipif(HAS_GPU, reason="a GPU is usable here")
def test_train_backend_gpu_without_a_gpu_exits_2_with_one_line():
    r = CliRunner().invoke(main, ["train", "2-local", "--D", "10", "--N", "20", "--lr", "0.1", "--backend", "gpu"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [f"fastmlp: error: {backend.NO_GPU}"]
    r = CliRunner().invoke(main, ["bench", "--impl", "fastmlp-gpu", "--workload", "W1"])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [f"fastmlp: error: {backend.NO_GPU}"]


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
@pytest.mark.parametrize("lengths", [[1, 2, 5, 37, 1000, 6144 // 2], [3, 7000, 64]],
                         ids=["shared", "global"])            # 2 * 7000 words do not fit shared memory
def test_minibatch_order_equals_the_cpus(lengths):
    import cupy as cp
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
    order = cp.full((M, P), -1, dtype=cp.int32)
    gpu.permutation(order, cp.zeros((M, P), cp.uint32), cp.asarray(table), cp.asarray(n), cp.asarray(seeds),
                    cp.asarray(epochs), cp.asarray(trained), M)
    got = order.get()
    for m in range(M - 1):
        expected = subsets[m][rng.permutation_np(len(subsets[m]), int(seeds[m]), int(epochs[m]))]
        np.testing.assert_array_equal(got[m, :n[m]], expected)
    assert (got[-1] == -1).all()


# -------------------------------------------------------------------------------------- GPU: single kernels
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_relu_and_gather_rows(dtype):
    import cupy as cp
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
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_step(dtype):
    """Loss, dlogits, the scaled gradient and the output-bias update against reference.softmax_xent; a short
    minibatch, a network past its rows, and a diverging network that updates nothing."""
    import cupy as cp
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
                     cp.asarray(order), cp.asarray(n), cp.ones(S, cp.int32), cp.asarray(lrs), s, P, start, S, B)
    dz, dzs = dz.get().reshape(S, B, 2), dzs.get().reshape(S, B, 2)
    np.testing.assert_array_equal(steps.get(), [1, 1, 0, 1])
    np.testing.assert_array_equal(diverged.get(), [0, 0, 0, 1])
    for m, nb in ((0, 17), (1, 3)):
        z = (zc[m, :nb] + s * bo[m]).astype(np.float64)[None]
        y = Y[order[m, start:start + nb]]
        loss, dlogits = reference.softmax_xent(z, y)
        assert_close(loss_sum.get()[m], loss[0], "loss", dtype)
        assert_close(dz[m, :nb], dlogits[0], "forward", dtype)
        np.testing.assert_array_equal(dz[m, nb:], 0)
        assert_close(dzs[m], -lrs[m] * dz[m], "forward", dtype)
        assert_close(dbo.get()[m], bo[m] - lrs[m] * s * dlogits[0].sum(axis=0), "step", dtype)
        assert (act[:, m].get() == 1).all()
    np.testing.assert_array_equal(dz[2], 0)                    # no rows left: no gradient, no update
    np.testing.assert_array_equal(dbo.get()[2], bo[2])
    np.testing.assert_array_equal(dz[3], 0)                    # diverged: nothing moves, activations zeroed
    np.testing.assert_array_equal(dzs[3], 0)
    np.testing.assert_array_equal(dbo.get()[3], bo[3])
    assert (act[:, 3].get() == 0).all() and not np.isfinite(loss_sum.get()[3])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward(dtype):
    import cupy as cp
    g = np.random.default_rng(4)
    S, R, K = 3, 17, 133                                       # K = 133: crosses blocks of 128 threads
    da = g.standard_normal((S, R, K)).astype(dtype)
    a = np.maximum(g.standard_normal((S, R, K)), 0).astype(dtype)
    bias = g.standard_normal((S, K)).astype(dtype)
    lrs = np.array([0.1, 0.2, 0.3], dtype)
    d_dz, d_dzs, d_bias = cp.asarray(da), cp.zeros(S * R * K, dtype=dtype), cp.asarray(bias)
    gpu.relu_backward(d_dz, d_dzs, d_bias, cp.asarray(a), cp.asarray(lrs), 0.5, S, R)
    dz = da.astype(np.float64) * (a > 0)
    assert_close(d_dz.get(), dz, "forward", dtype)
    assert_close(d_dzs.get().reshape(S, R, K), -lrs[:, None, None] * dz, "forward", dtype)
    assert_close(d_bias.get(), bias - 0.5 * lrs[:, None] * dz.sum(axis=1), "step", dtype)


# ---------------------------------------------------------------------------------------------- GPU: engine
@pytest.mark.gpu
@pytest.mark.parametrize("param, init, scale", [("standard", "he", 1.0), ("standard", "lecun", 0.5),
                                                ("standard", "torch", 1.0), ("standard", "torch", 0.1),
                                                ("ntk", "he", 0.3)])
def test_initial_weights_equal_the_cpus_bit_for_bit(data_medium, param, init, scale):
    x, y = data_medium
    seeds = [3, 2**32 - 1, 3, 0]
    kw = dict(param=param, init=init, init_scale=scale)
    g = gpu.GpuEngine(x, y, 21, 3, 17, [0.1] * 4, seeds, **kw)
    _assert_params_equal(g.params(), Engine(x, y, 21, 3, 17, [0.1] * 4, seeds, **kw).params())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_engine_follows_the_cpu_engine(data_medium, dtype):
    """Same seeds, subsets and minibatches: the parameters after 3 epochs and the epoch losses agree."""
    x, y = data_medium
    H, L, B = 21, 2, 17
    lrs, seeds = [0.02, 0.05, 0.1, 0.2, 0.5], [7, 1, 7, 2**32 - 1, 0]
    subsets = _subsets(len(x), [300, 250, 200, 290, 123], seed=5)
    cpu_e = Engine(x, y, H, L, B, lrs, seeds, subsets=subsets, dtype=dtype)
    gpu_e = gpu.GpuEngine(x, y, H, L, B, lrs, seeds, subsets=subsets, dtype=dtype)
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
    import cupy as cp
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
