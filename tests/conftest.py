"""Shared tolerances and small data sets for the reference, CPU-kernel and engine tests."""
import numpy as np
import pytest

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
