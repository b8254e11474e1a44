"""Shared tolerances, small data sets and engine helpers for the tests, the package every process a test starts
imports, and the one rule for GPU and SLURM tests: a test marked `gpu` is skipped where the GPU backend cannot run
(fastmlp.backend.gpu_available), one marked `slurm` where no SLURM cluster answers (fastmlp.slurm.environment_ok;
the tests never start one).

Where no CUDA device is usable but a C++ compiler is, the GPU tests run on the host simulator of the GPU backend
(FASTMLP_CUDASIM=1, set here for this process and every process it starts): the CUDA kernels built for the host,
launched by the same code. Only the tests marked `device` (timings, TF32 rounding, memory limits, CuPy itself) need
a real device and are skipped without one."""
import os
from pathlib import Path

import numpy as np
import pytest

import fastmlp
from fastmlp import provenance, reference

# Every process a test starts (the CLI, Dask workers, batch jobs) imports the package the tests import: they test
# the same code, and they share its Numba cache (an installed copy elsewhere would compile its own, minutes).
PACKAGE_ROOT = str(Path(fastmlp.__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])



def _real_device():
    """A CUDA device the GPU backend can use, not the simulator (CuPy is asked once, with the simulator off)."""
    if not hasattr(_real_device, "answer"):
        saved = os.environ.pop(provenance.CUDASIM, None)
        try:
            _real_device.answer = provenance.gpu_report()["problem"] is None
        finally:
            if saved is not None:
                os.environ[provenance.CUDASIM] = saved
    return _real_device.answer


if provenance.CUDASIM not in os.environ and not _real_device() and provenance.host_compiler():
    os.environ[provenance.CUDASIM] = "1"


def _usable_gpu():
    from fastmlp.backend import gpu_available
    return gpu_available()


@pytest.fixture
def without_gpu(monkeypatch):
    """The simulator off for this test, so that it sees a machine without a usable GPU (skipped on a real one)."""
    if _real_device():
        pytest.skip("a GPU is usable here: the test needs a machine without one")
    monkeypatch.delenv(provenance.CUDASIM, raising=False)


def _usable_slurm():
    from fastmlp.slurm import environment_ok
    return environment_ok()


SKIPPED = {   # marker: (whether it can run here, the reason when not)
    "gpu": (_usable_gpu, "needs CuPy and a CUDA device, or g++ for the host simulator (fastmlp.backend."
                         "gpu_available() is False)"),
    "device": (_real_device, "needs a real CUDA device (timings, TF32, memory limits): the host simulator cannot "
                             "show it"),
    "slurm": (_usable_slurm, "needs a SLURM cluster whose sinfo shows a usable node (for the one-node cluster of the "
                             "tests: sudo bash bench/slurm_local.sh start)"),
}


def pytest_collection_modifyitems(config, items):
    """Skip every test marked gpu or slurm, with one reason, where that is not usable (asked once per marker, only
    if a test has it)."""
    for marker, (usable, reason) in SKIPPED.items():
        marked = [item for item in items if item.get_closest_marker(marker)]
        if not marked or usable():
            continue
        skip = pytest.mark.skip(reason=reason)
        for item in marked:
            item.add_marker(skip)

# (atol, rtol) per operation and dtype; a check passes when |actual - expected| <= atol + rtol * |expected|.
# float32 values have been through a reduction over D or H (and, for "step", 20 SGD steps of them); float64 ones
# differ from the reference only by summation order.  "fd" is a float64 reference gradient against central
# differences with h = 1e-6 (truncation ~h^2, cancellation ~1e-16 / h).
TOL = {
    ("forward", np.float32): (1e-5, 1e-4),    # logits
    ("forward", np.float64): (1e-12, 1e-10),
    ("step", np.float32): (1e-5, 1e-4),       # parameters after SGD steps, gradients from parameter changes
    ("step", np.float64): (1e-12, 1e-10),
    ("loss", np.float32): (1e-6, 1e-4),       # mean cross-entropy of a dataset
    ("loss", np.float64): (1e-12, 1e-10),
    ("evaluate", np.float32): (1e-4, 1e-4),   # summed cross-entropy over up to a few hundred samples
    ("evaluate", np.float64): (1e-10, 1e-10),
    ("fd", np.float64): (1e-8, 1e-6),
}

DTYPES = [np.float32, np.float64]


def tol(op, dtype):
    """(atol, rtol) of op at dtype."""
    return TOL[(op, np.dtype(dtype).type)]


def assert_close(actual, expected, op, dtype):
    """|actual - expected| <= atol + rtol * |expected| elementwise (llm.c style), with the worst offender named."""
    atol, rtol = tol(op, dtype)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    excess = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
    if excess.size and not np.all(excess <= 0):   # also fails on NaN
        i = np.unravel_index(np.nanargmax(np.where(np.isnan(excess), np.inf, excess)), excess.shape)
        raise AssertionError(f"{op} ({np.dtype(dtype).name}): {int((~(excess <= 0)).sum())} of {excess.size} "
                             f"elements out of tolerance (atol {atol:g}, rtol {rtol:g}); worst at {i}: "
                             f"{actual[i]!r} vs {expected[i]!r}")


SIGMA_B2 = {"standard": 0.0, "ntk": 0.5}   # engine tests: NTK with sigma_b > 0, so the bias paths count


def scales(engine):
    """The reference's per-layer (c, s) for an engine's architecture and parameterization."""
    return reference.layer_scales(engine.D, engine.H, engine.L, engine.param, 2.0, SIGMA_B2[engine.param])


def network(params, m):
    """Network m of stacked reference-layout parameters, as a stack of one."""
    return [(W[m:m + 1], b[m:m + 1]) for W, b in params]


def assert_params_equal(a, b):
    for (W, bias), (W1, bias1) in zip(a, b):
        np.testing.assert_array_equal(W, W1)
        np.testing.assert_array_equal(bias, bias1)


def subsets(N, sizes, seed):
    """One sorted random subset of [0, N) per size."""
    g = np.random.default_rng(seed)
    return [np.sort(g.choice(N, size, replace=False)) for size in sizes]


def check_fit_stop_rule(engine_class, data, dtype):
    """The stop rule of fit(), with the reference as the oracle, for any engine class; returns the engine.

    Networks converge or hit the cap (both occur); each stops at the first epoch with zero training error;
    records match the final parameters; stopped networks are frozen while the others go on."""
    x, y = data
    H, L, B, max_epochs = 21, 3, 17, 40
    lrs = [0.1, 0.05, 1e-4, 0.2, 0.1]                 # 1e-4 cannot fit 200 samples in 40 epochs
    seeds = [3, 1, 2, 4, 5]
    subs = subsets(len(x), [200, 200, 200, 150, 300], seed=6)
    e = engine_class(x, y, H, L, B, lrs, seeds, subsets=subs, dtype=dtype, init="he")   # the lrs are chosen for he
    snaps = []                                        # (params, epochs, stopped, n_active) after every epoch

    def progress(epoch, n_active, n_networks):
        assert n_networks == 5
        snaps.append((e.params(), e.epochs.copy(), e.stopped.copy(), n_active))

    results = e.fit(max_epochs=max_epochs, progress=progress)
    sc = scales(e)
    assert 2 <= e.converged.sum() <= 4 and not e.diverged.any()    # both outcomes occur
    for r in results:
        m = r.index
        assert (r.lr, r.seed, r.n_train, r.epochs, r.converged) == (lrs[m], seeds[m], len(subs[m]),
                                                                    e.epochs[m], e.converged[m])
        S = subs[m]
        net = network(e.params(), m)
        _, loss_ref = reference.evaluate(net, sc, x[S], y[S])
        assert_close(r.train_loss, loss_ref[0], "loss", dtype)   # the loss reported is that of the final params
        logits, _ = reference.forward(net, sc, x[S])
        margin = logits[0, :, 1] - logits[0, :, 0]
        wrong = (margin > 0) != (y[S] == 1)
        near = np.zeros(len(S), bool)
        if dtype == np.float32:
            # engine and reference logits differ by float32 rounding of sums over H (the "forward" tolerance),
            # so only a sample closer to a tie than twice that may be classified differently
            atol, rtol = tol("forward", dtype)
            near = np.abs(margin) <= 2 * (atol + rtol * np.abs(logits[0]).max(axis=1))
        if not r.converged:
            assert r.epochs == max_epochs and r.train_error > 0
            assert abs(r.train_error * len(S) - wrong.sum()) <= near.sum()
            continue
        assert r.train_error == 0 and r.epochs < max_epochs
        assert not (wrong & ~near).any()              # float64: no sample at all
        # it stopped at the first epoch with zero error: one epoch earlier it still had errors
        if r.epochs >= 2:
            before = network(snaps[r.epochs - 2][0], m)
            assert reference.evaluate(before, sc, x[S], y[S])[0][0] > 0

    # stopped networks are frozen while the others go on; the active set shrinks
    assert len(snaps) == max_epochs
    for k, (params, epochs, stopped, n_active) in enumerate(snaps):
        assert n_active == (~stopped).sum()
        np.testing.assert_array_equal(epochs, np.minimum(k + 1, e.epochs))
        if k > 0:
            assert n_active <= snaps[k - 1][3]
    for m in np.flatnonzero(e.converged):
        stop = e.epochs[m] - 1                        # snapshot index at which m stopped
        assert snaps[stop][2][m] and not snaps[stop - 1][2][m]
        assert_params_equal(network(snaps[stop][0], m), network(snaps[-1][0], m))
    m_last = np.flatnonzero(~e.converged)[0]
    first_stop = e.epochs[e.converged].min() - 1
    assert not np.array_equal(snaps[first_stop][0][0][0][m_last], snaps[-1][0][0][0][m_last])   # others moved
    return e


def make_data(N, D, seed=0):
    """x (N, D) float32 standard Gaussian, y (N,) int8 = [x0 * x1 > 0] (a 2-local rule)."""
    x = np.random.default_rng(seed).standard_normal((N, D)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int8)
    return x, y


@pytest.fixture(scope="session")
def data_small():
    """37 samples, D = 11: N is a multiple of neither 5 (tile rows) nor the batch sizes used, D is odd."""
    return make_data(37, 11, seed=0)


@pytest.fixture(scope="session")
def data_medium():
    """300 samples, D = 11, for training runs."""
    return make_data(300, 11, seed=1)


# A tiny sweep of networks at a fixed lr and the NTK of the same points (sweep and plot tests): two tasks x two N x
# two depths, each job well under a second once compiled.
NETWORKS_AND_NTK = """\
task = ["1-local", "1-global"]
D = 10
N = [40, 80]
L = [1, 2]
repeats = 2
n-test = 200

[[grid]]
H = 8
lr = 0.1
max-epochs = 30

[[grid]]
command = "ntk"
"""


@pytest.fixture
def engine_calls(monkeypatch):
    """The M of every CPU Engine.fit call made in this process (a list that grows as they happen)."""
    from fastmlp import cpu_engine
    calls = []
    fit = cpu_engine.Engine.fit

    def counted(self, *args, **kwargs):
        calls.append(self.M)
        return fit(self, *args, **kwargs)
    monkeypatch.setattr(cpu_engine.Engine, "fit", counted)
    return calls
