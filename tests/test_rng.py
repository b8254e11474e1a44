"""Philox4x32-10, Box-Muller Gaussians and Fisher-Yates orders: numba twins against NumPy twins."""

import itertools

import numpy as np
import pytest
from numba import njit

from fastmlp import rng
from fastmlp.constants import STREAM_INIT, STREAM_TRAIN_X

# Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter (4 words), key (2 words), expected.
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@njit
def _philox_many(ctr, key):
    """Numba philox4x32 over rows: ctr (n, 4) uint32, key (n, 2) uint32 -> (n, 4) uint32."""
    out = np.empty_like(ctr)
    for i in range(ctr.shape[0]):
        r = rng.philox4x32(ctr[i, 0], ctr[i, 1], ctr[i, 2], ctr[i, 3], key[i, 0], key[i, 1])
        for w in range(4):
            out[i, w] = r[w]
    return out


@njit
def _box_muller_many(w0, w1):
    """Numba box_muller over arrays: (n,) uint32 each -> (n, 2) float64."""
    out = np.empty((w0.shape[0], 2))
    for i in range(w0.shape[0]):
        out[i, 0], out[i, 1] = rng.box_muller(w0[i], w1[i])
    return out


@pytest.mark.parametrize("ctr, key, expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    assert tuple(int(w) for w in rng.philox4x32(*ctr, *key)) == expected  # numba, called from Python
    got = _philox_many(np.array([ctr], dtype=np.uint32), np.array([key], dtype=np.uint32))  # numba, compiled caller
    assert tuple(int(w) for w in got[0]) == expected
    words = rng.philox4x32_np(np.array([ctr], dtype=np.uint32), np.array(key, dtype=np.uint32))[0]
    assert tuple(int(w) for w in words) == expected


def test_philox_numba_equals_numpy():
    gen = np.random.default_rng(0)
    ctr = gen.integers(0, 2**32, size=(20_000, 4), dtype=np.uint32)
    key = gen.integers(0, 2**32, size=(20_000, 2), dtype=np.uint32)
    ctr[:4] = 0xFFFFFFFF  # carries and top bits at the edges of the word range
    key[:2] = 0
    np.testing.assert_array_equal(_philox_many(ctr, key), rng.philox4x32_np(ctr, key))
    # one key broadcast over all counters equals the per-row key
    np.testing.assert_array_equal(rng.philox4x32_np(ctr, key[7]),
                                  rng.philox4x32_np(ctr, np.tile(key[7], (len(ctr), 1))))


def test_box_muller_twins_and_edges():
    edge = np.array([0, 1, 2**31, 2**32 - 1], dtype=np.uint32)
    w0, w1 = (a.ravel() for a in np.meshgrid(edge, edge))
    g = _box_muller_many(w0, w1)
    g0, g1 = rng.box_muller_np(w0, w1)
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, np.stack([g0, g1], axis=1), rtol=0, atol=1e-14)  # libm vs NumPy SIMD: ulps apart
    # w0 = 0 is the largest radius sqrt(2 * 33 ln 2); w1 = 0 puts it all in g0
    np.testing.assert_allclose(g[0], [np.sqrt(66 * np.log(2.0)), 0.0], atol=1e-12)


def test_gaussian_layout():
    """Element e is Gaussian e % 4 of Philox call (c0 = e // 4, c1 = a, c2 = b, c3 = 0)."""
    seed, a, b = 12345, 7, 3
    words = rng.philox4x32_np(np.array([[2, a, b, 0]], dtype=np.uint32),
                              np.array([seed, STREAM_INIT], dtype=np.uint32))[0]
    g0, g1 = rng.box_muller_np(words[[0]], words[[1]])
    g2, _ = rng.box_muller_np(words[[2]], words[[3]])
    g = rng.gaussian_np(11, seed, STREAM_INIT, a, b)
    np.testing.assert_array_equal(g[8:11], [g0[0], g1[0], g2[0]])
    np.testing.assert_array_equal(rng.gaussian_np(13, seed, STREAM_INIT, a, b)[:11], g)  # length only truncates


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 1001])  # lengths that end mid-block
def test_gaussian_fill_equals_numpy(n):
    out = np.empty(n)
    rng.gaussian_fill(out, 99, STREAM_TRAIN_X, 5, 0)
    np.testing.assert_allclose(out, rng.gaussian_np(n, 99, STREAM_TRAIN_X, 5, 0), rtol=1e-14, atol=1e-14)
    out32 = np.empty(n, dtype=np.float32)
    rng.gaussian_fill(out32, 99, STREAM_TRAIN_X, 5, 0)
    np.testing.assert_array_equal(out32, out.astype(np.float32))  # a float32 out rounds to nearest


def test_gaussian_moments():
    n = 1_000_000
    g = rng.gaussian_np(n, 2024, STREAM_TRAIN_X, 0, 0)
    assert abs(g.mean()) < 5 / np.sqrt(n)
    assert abs(g.var() - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(np.mean(g**3)) < 5 * np.sqrt(15.0 / n)  # odd moment: catches a sign bias of sin/cos
    assert abs(np.mean(g**4) - 3.0) < 5 * np.sqrt(96.0 / n)  # Var(g^4) = 105 - 9
    # the four Gaussians of one Philox call are uncorrelated
    quads = g.reshape(-1, 4)
    corr = np.corrcoef(quads, rowvar=False)
    assert np.abs(corr - np.eye(4)).max() < 5 / np.sqrt(len(quads))


def test_gaussian_streams_differ():
    base = rng.gaussian_np(64, 1, STREAM_TRAIN_X, 0, 0)
    others = [(2, STREAM_TRAIN_X, 0, 0), (1, STREAM_INIT, 0, 0), (1, STREAM_TRAIN_X, 1, 0), (1, STREAM_TRAIN_X, 0, 1)]
    for other in others:
        assert not np.any(base == rng.gaussian_np(64, *other))


def test_seed_out_of_range():
    with pytest.raises(ValueError, match="seed"):
        rng.gaussian_np(4, 2**32, STREAM_TRAIN_X, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        rng.permutation_np(4, -1, 0)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 8, 1000, 4097])
def test_permutation_twins(n):
    for seed, epoch in [(0, 0), (7, 3), (2**32 - 1, 2**32 - 1)]:
        p = rng.permutation(n, seed, epoch)
        assert p.dtype == np.int64
        np.testing.assert_array_equal(np.sort(p), np.arange(n))
        np.testing.assert_array_equal(p, rng.permutation_np(n, seed, epoch))


def test_permute_into_shuffles_any_index_array():
    idx = np.array([40, 3, 17, 99, 5, 61, 8, 12, 77], dtype=np.int64)
    out = np.empty_like(idx)
    rng.permute_into(out, idx, 11, 4)
    np.testing.assert_array_equal(out, idx[rng.permutation(len(idx), 11, 4)])
    rng.permute_into(idx, idx, 11, 4)  # in place on the same array
    np.testing.assert_array_equal(idx, out)


def test_epochs_and_seeds_differ():
    orders = {tuple(rng.permutation(50, 1, epoch)) for epoch in range(20)}
    assert len(orders) == 20
    assert tuple(rng.permutation(50, 2, 0)) not in orders


def test_permutation_uniform():
    """All 3! orders of 3 items equally likely over epochs (chi-square, 5 dof)."""
    n_epochs = 6000
    counts = dict.fromkeys(itertools.permutations(range(3)), 0)
    for epoch in range(n_epochs):
        counts[tuple(rng.permutation(3, 5, epoch))] += 1
    expected = n_epochs / 6
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 25.0  # P(chi2_5 > 25) ~ 1.4e-4
