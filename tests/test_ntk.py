"""The analytic NTK/NNGP against closed forms, Monte-Carlo networks and the empirical NTK of the reference network;
kernel regression; tiling; the `fastmlp ntk` record; clear errors."""
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import assert_close
from fastmlp import ntk, reference
from fastmlp.cli import main
from fastmlp.cpu_engine import Engine
from fastmlp.errors import UsageError
from fastmlp.tasks import generate, iter_chunks, parse_task

SQ = math.sqrt(2.0) / 2.0


def _inputs(n, D=10, seed=0):
    x, _ = generate(parse_task("2-local", D=D), seed, "train", 0, n)
    return x.astype(np.float64)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------------------------------ closed forms
def test_one_hidden_layer_closed_forms():
    # D = 2, sigma_w2 = 2, sigma_b2 = 0: K0(e1, e1) = 1; for unit vectors at angle t,
    # K1 = (sin t + (pi - t) cos t) / pi and Theta1 = (sin t + 2 (pi - t) cos t) / pi.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [SQ, SQ]])   # e1, e2, -e1, at 45 degrees from both
    theta = ntk.ntk_kernel(x, None, 1)
    nngp = ntk.ntk_kernel(x, None, 1, kind="nngp")
    at45 = SQ * (1 + 2 * 0.75 * math.pi) / math.pi
    assert theta[0, 0] == pytest.approx(2.0, rel=1e-14)                 # orthogonal: 1 / pi, antiparallel: 0
    assert theta[0, 1] == pytest.approx(1 / math.pi, rel=1e-14)
    assert theta[0, 2] == pytest.approx(0.0, abs=1e-15)
    assert theta[0, 3] == pytest.approx(at45, rel=1e-14)
    assert theta[2, 3] == pytest.approx(SQ * (1 - 2 * 0.25 * math.pi) / math.pi, rel=1e-13)   # 135 degrees
    assert nngp[0, 0] == pytest.approx(1.0, rel=1e-14)
    assert nngp[0, 1] == pytest.approx(1 / math.pi, rel=1e-14)
    assert nngp[0, 3] == pytest.approx(SQ * (1 + 0.75 * math.pi) / math.pi, rel=1e-14)
    np.testing.assert_array_equal(theta, theta.T)


@pytest.mark.parametrize("L", [1, 2, 3, 5])
def test_diagonal_and_antipodal_closed_forms(L):
    # sigma_w2 = 2, sigma_b2 = 0 keeps K(x, x) = 2|x|^2 / D at every layer and adds it to Theta once per layer.
    x = _inputs(3, D=7)
    theta = ntk.ntk_kernel(x, None, L)
    nngp = ntk.ntk_kernel(x, None, L, kind="nngp")
    sq = 2 * (x * x).sum(axis=1) / 7
    np.testing.assert_allclose(np.diag(theta), (L + 1) * sq, rtol=1e-13)
    np.testing.assert_allclose(np.diag(nngp), sq, rtol=1e-13)
    # x and -x (theta = pi): K1 = Theta1 = 0; then theta = pi / 2 and K2 = Theta2 = (2|x|^2 / D) / pi
    anti = ntk.ntk_kernel(x[:1], -x[:1], L)[0, 0]
    if L <= 2:
        assert anti == pytest.approx([0.0, sq[0] / math.pi][L - 1], abs=1e-14, rel=1e-13)
    else:
        assert anti > 0


def test_bias_and_zero_input():
    # x = 0: K0 = sigma_b2; one ReLU layer: K1 = sigma_w2 sigma_b2 / 2 + sigma_b2, Theta1 = K1 + sigma_w2 sigma_b2 / 2
    z = np.zeros((1, 4))
    assert ntk.ntk_kernel(z, None, 1, sigma_w2=2.0, sigma_b2=1.0)[0, 0] == pytest.approx(3.0, rel=1e-15)
    assert ntk.ntk_kernel(z, None, 1, sigma_w2=2.0, sigma_b2=1.0, kind="nngp")[0, 0] == pytest.approx(2.0)
    k = ntk.ntk_kernel(np.vstack([z, _inputs(2, D=4)]), None, 3)      # sigma_b2 = 0: the zero input has kernel 0
    assert np.all(np.isfinite(k)) and np.all(k[0] == 0.0)


# ------------------------------------------------------------------------------- Monte-Carlo NNGP
@pytest.mark.parametrize("L, H, M, sigma_w2, sigma_b2, allowance", [
    (1, 64, 20000, 2.0, 0.0, 0.0),      # one hidden layer: E[f f'] = K exactly at any width
    (3, 128, 8000, 1.5, 0.5, 0.01),     # deeper: O(1/H) finite-width bias, allowed 1% of the diagonal
])
@pytest.mark.slow
def test_nngp_against_monte_carlo_networks(L, H, M, sigma_w2, sigma_b2, allowance):
    """E[f(x) f(x')] over M random reference networks (param="ntk", W, b ~ N(0, 1)) against the NNGP kernel."""
    D = 10
    x = _inputs(5, D=D)
    scales = reference.layer_scales(D, H, L, "ntk", sigma_w2, sigma_b2)
    rng = np.random.default_rng(12345)
    samples = []
    for m0 in range(0, M, 1000):
        params = [(rng.standard_normal((1000, fi, fo)), rng.standard_normal((1000, fo)))
                  for fi, fo in reference.layer_sizes(D, H, L)]
        f, _ = reference.forward(params, scales, x)                       # (1000, n, C)
        samples.append(np.einsum("mic,mjc->mij", f, f) / f.shape[-1])   # both logits, averaged per network
    samples = np.concatenate(samples)                                   # (M, n, n)
    est, se = samples.mean(axis=0), samples.std(axis=0, ddof=1) / math.sqrt(M)
    K = ntk.ntk_kernel(x, None, L, sigma_w2, sigma_b2, kind="nngp")
    scale = np.diag(K).mean()
    assert se.max() < 0.02 * scale                                      # the estimate is sharp enough to fail
    assert np.all(np.abs(est - K) <= 4 * se + allowance * scale), (est - K) / se
    theta = ntk.ntk_kernel(x, None, L, sigma_w2, sigma_b2)              # and it tells the NTK from the NNGP
    assert np.abs(est - theta).max() > 10 * se.max()


# ------------------------------------------------------------------------------------------ empirical NTK
def test_empirical_ntk_matches_finite_differences():
    """Per-sample gradients through reference.backward: the empirical NTK equals G1 G2^T with G the central
    difference gradients of one logit, on parameters taken from an Engine (its reference layout)."""
    D, H, L, sigma_w2, sigma_b2 = 3, 5, 2, 1.7, 0.3
    x1, x2 = _inputs(3, D=D, seed=1), _inputs(2, D=D, seed=2)
    y = np.zeros(4, np.int8)
    eng = Engine(np.zeros((4, D), np.float32), y, H, L, 2, [0.1, 0.1], [7, 8], param="ntk", dtype=np.float64,
                 sigma_w2=sigma_w2, sigma_b2=sigma_b2)
    params = [(np.ascontiguousarray(W), np.ascontiguousarray(b)) for W, b in eng.params()]   # views below write
    scales = reference.layer_scales(D, H, L, "ntk", sigma_w2, sigma_b2)
    emp = ntk.empirical_ntk(params, x1, x2, sigma_w2, sigma_b2, logit=1)         # (2, 3, 2)
    assert emp.shape == (2, 3, 2)

    def grad(x, m, h=1e-6):
        out = []
        for arr in (a for layer in params for a in layer):
            flat = arr[m].reshape(-1)        # a view into params
            for i in range(flat.size):
                old = flat[i]
                flat[i] = old + h
                up = reference.forward(params, scales, x)[0][m, :, 1]
                flat[i] = old - h
                down = reference.forward(params, scales, x)[0][m, :, 1]
                flat[i] = old
                out.append((up - down) / (2 * h))
        return np.array(out).T                                              # (n, P)

    for m in range(2):
        assert_close(emp[m], grad(x1, m) @ grad(x2, m).T, "fd", np.float64)


@pytest.mark.parametrize("L, widths, n_networks", [
    (1, (64, 512, 4096, 32768), 4),
    (3, (64, 256, 1024), 16),
])
def test_empirical_ntk_approaches_analytic_as_width_grows(L, widths, n_networks):
    """The reference network's empirical NTK (averaged over n_networks initializations, seeds 0..) converges to
    ntk_kernel: relative Frobenius error falls with every 4x-8x of width and ends below 5%."""
    x = _inputs(6)
    analytic = ntk.ntk_kernel(x, None, L)
    errors = []
    for H in widths:
        params = reference.init_params(10, H, L, np.arange(n_networks), "ntk")
        errors.append(_rel(ntk.empirical_ntk(params, x).mean(axis=0), analytic))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05, errors
    assert errors[0] > 0.05, errors                 # narrow networks are visibly off: the test has teeth
    if L == 1:                                      # the other logit has the same kernel
        assert _rel(ntk.empirical_ntk(params, x, logit=1).mean(axis=0), analytic) < 0.05


# -------------------------------------------------------------------------------------- kernel regression
def test_kernel_regression_interpolates_and_generalizes_on_1_local():
    spec = parse_task("1-local", D=20)
    x, y = generate(spec, 0, "train", 0, 2000)
    fit = ntk.kernel_regression(x, y, 3)
    target = np.where(y == 1, 1.0, -1.0)
    K = ntk.ntk_kernel(x, None, 3)
    assert fit.jitter == 0.0 and fit.train_error == 0.0
    assert np.abs(K @ fit.alpha - target).max() < 1e-9 and fit.train_residual < 1e-9   # ridgeless: f(X) = y
    np.testing.assert_allclose(fit.predict(x[:50]), target[:50], atol=1e-9)
    err = fit.test_error((xc, yc) for _, xc, yc in iter_chunks(spec, 0, "test", 4000, chunk=1500))
    assert err < 0.1, err
    assert err > 0.01, err                          # a test error of 0 would mean it saw its training set
    copy = ntk.kernel_regression(x, y, 3, inplace=False)   # the array-module (CuPy) path, run by NumPy
    np.testing.assert_allclose(copy.alpha, fit.alpha, rtol=1e-8, atol=1e-8 * np.abs(fit.alpha).max())


@pytest.mark.parametrize("inplace", [True, False])
def test_jitter_only_when_the_factorization_fails(inplace):
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    eig = np.linspace(1.0, 2.0, 40)
    y = rng.choice([-1.0, 1.0], 40)
    for last, needs in ((1e-3, False), (-1e-9, True)):     # positive definite, then one eigenvalue below zero
        eig[-1] = last
        K = np.ascontiguousarray((q * eig) @ q.T)
        K = (K + K.T) / 2
        work = K.copy()
        alpha, jitter, fit = ntk._cholesky_inplace(work, y) if inplace else ntk._cholesky_copy(np, work, y)
        assert (jitter > 0) == needs
        assert np.array_equal(work, K) != inplace       # in place: the factor overwrote one triangle
        if needs:
            assert 1e-9 < jitter < 1e-6
        np.testing.assert_allclose((K + jitter * np.eye(40)) @ alpha, y, atol=1e-6)
        np.testing.assert_allclose(fit, (K + jitter * np.eye(40)) @ alpha, atol=1e-6)


@pytest.mark.parametrize("inplace", [True, False])
def test_large_factorizations_run_on_one_blas_thread(monkeypatch, inplace):
    # OpenBLAS's threaded dpotrf segfaults at N = 32,000 on 2 threads: above POTRF_THREADED_MAX_N, one thread.
    # Checked here on a small matrix with the threshold lowered, by asking threadpoolctl inside the factorization.
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg.lapack
    seen = []

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}

    def recording(factor):
        def wrapped(*args, **kwargs):
            seen.append(blas_threads())
            return factor(*args, **kwargs)
        return wrapped
    monkeypatch.setattr(scipy.linalg.lapack, "dpotrf", recording(scipy.linalg.lapack.dpotrf))
    monkeypatch.setattr(np.linalg, "cholesky", recording(np.linalg.cholesky))
    if max(blas_threads().values(), default=1) == 1:
        pytest.skip("the BLAS runs on one thread here anyway")
    K = np.eye(30) * 2.0 + 0.1
    y = np.ones(30)

    def solve():
        return ntk._cholesky_inplace(K.copy(), y) if inplace else ntk._cholesky_copy(np, K.copy(), y)
    solve()
    monkeypatch.setattr(ntk, "POTRF_THREADED_MAX_N", 29)
    solve()
    below, above = seen
    assert set(above.values()) == {1}
    assert below == blas_threads()                       # untouched below the threshold, and restored after


# ------------------------------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_tiles_give_the_same_kernel_as_one_block(kind):
    x1, x2 = _inputs(37, D=11, seed=3), _inputs(23, D=11, seed=4)
    args = dict(depth=3, sigma_w2=1.8, sigma_b2=0.2, kind=kind)
    one = ntk.ntk_kernel(x1, x2, tile=10**6, **args)
    np.testing.assert_allclose(ntk.ntk_kernel(x1, x2, tile=5, **args), one, rtol=1e-12)   # 5 crosses 37 and 23
    gram = ntk.ntk_kernel(x1, None, tile=10**6, **args)
    tiled = ntk.ntk_kernel(x1, None, tile=8, **args)
    np.testing.assert_allclose(tiled, gram, rtol=1e-12)
    np.testing.assert_array_equal(tiled, tiled.T)
    general = ntk.ntk_kernel(x1, x1.copy(), tile=8, **args)            # not known to be symmetric
    np.testing.assert_allclose(general, gram, rtol=1e-7)               # theta ~ 1e-8 from rounding on the diagonal


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, option", [
    ({"sigma_w2": 0.0}, "--sigma-w2"), ({"sigma_w2": -1.0}, "--sigma-w2"), ({"sigma_w2": float("nan")}, "--sigma-w2"),
    ({"sigma_b2": -0.1}, "--sigma-b2"), ({"depth": 0}, "--L"), ({"kind": "rbf"}, "--kind"),
])
def test_bad_hyperparameters_raise_usage_error(kwargs, option):
    args = {"depth": 2} | kwargs
    with pytest.raises(UsageError, match=option):
        ntk.ntk_kernel(_inputs(3), None, **args)


def test_memory_estimate_refuses_what_does_not_fit(monkeypatch):
    with pytest.raises(UsageError, match=r"--N 1000000 .*needs about 8\d{3} GB but [\d.]+ GB is available"):
        ntk.run(parse_task("1-local", D=20), N=10**6, L=1)
    monkeypatch.setattr(ntk, "available_memory", lambda xp=np: 10**6)
    with pytest.raises(UsageError, match=r"400 x 400 kernel needs about 0\.0115 GB but 0\.001 GB"):
        ntk.ntk_kernel(_inputs(400), None, 1)


# ---------------------------------------------------------------------------------------------- the CLI
def test_cli_ntk_record_uses_the_train_and_test_sets_of_train():
    r = CliRunner().invoke(main, ["ntk", "1-local", "--D", "12", "--N", "150", "--L", "2", "--repeats", "2",
                                  "--n-test", "700", "--seed", "3", "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["command"] == "ntk" and rec["task"]["name"] == "1-local" and rec["task"]["D"] == 12
    assert rec["config"] == {"N": 150, "L": 2, "sigma_w2": 2.0, "sigma_b2": 0.0, "n_test": 700, "repeats": 2,
                             "seed": 3, "backend": "cpu", "kind": "ntk"}
    spec = parse_task("1-local", D=12)
    for r_ in range(2):                        # repeat r: train samples r*N .. (r+1)*N-1 of seed 3
        x, y = generate(spec, 3, "train", 150 * r_, 150)
        fit = ntk.kernel_regression(x, y, 2)
        xt, yt = generate(spec, 3, "test", 0, 700)
        rep = rec["repeats"][r_]
        assert rep["repeat"] == r_ and rep["jitter"] == 0.0 and rep["train_error"] == 0.0
        assert rep["test_error"] == fit.errors(xt, yt) / 700
        assert rep["kernel_s"] >= 0 and rep["solve_s"] >= 0
    values = [rep["test_error"] for rep in rec["repeats"]]
    assert rec["repeats"][0]["test_error"] != rec["repeats"][1]["test_error"]   # new training sets
    assert rec["test_error"]["values"] == values
    assert rec["test_error"]["mean"] == pytest.approx(np.mean(values))
    assert rec["test_error"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert rec["timing"]["wall_s"] > 0 and rec["provenance"]["backend"] == "cpu"


@pytest.mark.parametrize("args, option", [
    (["--sigma-w2", "0"], "--sigma-w2"),
    (["--sigma-b2", "-1"], "--sigma-b2"),
    (["--L", "0"], "--L"),
    (["--repeats", "0"], "--repeats"),
    (["--n-test", "-1"], "--n-test"),
    (["--N", "0"], "--N"),
    (["--N", "1000000"], "GB"),
])
def test_cli_ntk_bad_input_exits_2_with_one_line(args, option):
    r = CliRunner().invoke(main, ["ntk", "1-local", "--D", "10"] + args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastmlp: error:") and option in lines[0]


# ------------------------------------------------------------------------------- finite, or refused
@pytest.mark.parametrize("args", [
    ["--sigma-w2", "1e300"],                         # overflows at once
    ["--sigma-w2", "1e-300"],                        # underflows at once (was a LinAlgError traceback)
    ["--sigma-w2", "3", "--L", "1000"],              # (3/2)^1000: a deep kernel that overflows
    ["--sigma-w2", "10", "--L", "300", "--kind", "nngp"],
    ["--sigma-w2", "0.001", "--L", "200"],           # a deep kernel that underflows
    ["--sigma-b2", "1e300"],
])
def test_a_kernel_out_of_float64_range_is_refused_naming_the_settings(args):
    r = CliRunner().invoke(main, ["ntk", "1-local", "--D", "10", "--N", "100", "--n-test", "100", "--repeats", "1",
                                  "--json", *args])
    assert r.exit_code == 2, r.output
    assert r.stdout == ""                                                 # no record, no number
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastmlp: error:"), lines
    assert "--sigma-w2" in lines[0] and "--L" in lines[0] and "float64" in lines[0]


def test_deep_kernels_within_range_still_run():
    for depth, sigma_w2, sigma_b2 in ((2000, 2.1, 0.0), (10**6, 2.0, 0.1), (10**9, 1.9, 0.1), (50, 0.5, 1.0)):
        ntk.check_config(100, depth, sigma_w2, sigma_b2, 100, 1, 0)      # refuses nothing that fits float64
    fit = ntk.kernel_regression(_inputs(60), np.arange(60) % 2, 300, sigma_w2=2.2)
    assert np.isfinite(fit.alpha).all() and np.isfinite(fit.predict(_inputs(20, seed=1))).all()


def test_a_kernel_of_inputs_out_of_range_is_refused_not_returned():
    x = _inputs(30) * 1e80                 # x.x / D ~ 1e160: the recursion's products overflow
    with pytest.raises(UsageError, match="--L 2.*not finite"):
        ntk.ntk_kernel(x, None, 2)
    with pytest.raises(UsageError, match="not finite"):
        ntk.ntk_kernel(x[:5], x[5:12], 2)
    with pytest.raises(UsageError, match="not finite"):
        ntk.kernel_regression(x, np.arange(30) % 2, 2)


@pytest.mark.parametrize("inplace", [True, False])
def test_a_factorization_that_fails_is_a_usage_error_naming_the_settings(monkeypatch, inplace):
    monkeypatch.setattr(ntk, "_JITTER_STEPS", [])           # no jitter to rescue a singular Gram matrix
    x = np.repeat(_inputs(1), 12, axis=0)                   # twelve copies of one sample: rank one
    with pytest.raises(UsageError, match="--L 3, --sigma-w2 2, --sigma-b2 0: the 12 x 12 Gram matrix cannot be"):
        ntk.kernel_regression(x, np.arange(12) % 2, 3, inplace=inplace)


def test_non_finite_predictions_are_refused():
    fit = ntk.kernel_regression(_inputs(40), np.arange(40) % 2, 2)
    fit.alpha = fit.alpha.copy()
    fit.alpha[3] = np.inf
    with pytest.raises(UsageError, match="predictions are not finite"):
        fit.predict(_inputs(10, seed=2))
    with pytest.raises(UsageError, match="predictions are not finite"):
        fit.test_error([(_inputs(10, seed=2), np.zeros(10))])


def test_a_sweep_of_an_overflowing_kernel_exits_2_before_anything_runs(tmp_path):
    (tmp_path / "s.toml").write_text('command = "ntk"\ntask = "1-local"\nD = 10\nN = 50\nrepeats = 1\n'
                                     'n-test = 50\nL = [1, 1000]\nsigma-w2 = 3.0\n')
    r = CliRunner().invoke(main, ["sweep", str(tmp_path / "s.toml"), "--store", str(tmp_path / "store")])
    assert r.exit_code == 2 and "L = 1000" in r.output and "overflows float64" in r.output, r.output
    assert not (tmp_path / "store").exists()


# ------------------------------------------------------------------------------------------------ the GPU
@pytest.mark.device        # CuPy's own linear algebra (cupyx), which the host simulator does not stand in for
def test_cupy_kernel_and_regression_match_numpy():
    import cupy
    x, y = generate(parse_task("1-local", D=20), 0, "train", 0, 600)
    k = ntk.ntk_kernel(cupy.asarray(x), None, 3, tile=256)
    assert isinstance(k, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(k), ntk.ntk_kernel(x, None, 3), rtol=1e-12)
    fit = ntk.kernel_regression(cupy.asarray(x), cupy.asarray(y), 3)
    np.testing.assert_allclose(cupy.asnumpy(fit.alpha), ntk.kernel_regression(x, y, 3).alpha, rtol=1e-6, atol=1e-6)
