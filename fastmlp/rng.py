"""Counter-based Philox4x32-10 (Salmon et al. 2011, Random123): the one source of randomness.

Every random number is a pure function of (seed, stream, counter):
key = (k0, k1) = (seed, stream), counter = (c0, c1, c2, c3), all uint32 words.
Each function has a Numba twin (scalar, for kernels) and a NumPy twin (vectorised, for tests and
the reference); the CUDA kernels implement the same layout, so every backend sees the same words.

Counter layouts used by the whole project:

- Gaussian vector addressed by (seed, stream, a, b): element e is Gaussian number e % 4 of
  philox4x32(c0=e // 4, c1=a, c2=b, c3=0, k0=seed, k1=stream). Inputs: stream STREAM_TRAIN_X or
  STREAM_TEST_X, a = sample index, b = 0. Initial weights: stream STREAM_INIT, a = layer index, b = 0.
- Uniform vector addressed by (seed, stream, a, b): element e is (w + 1/2) 2^-32 in (0, 1) for word
  w = word e % 4 of philox4x32(c0=e // 4, c1=a, c2=b, c3=0, k0=seed, k1=stream).  Initial weights and biases of
  the `torch` scheme: stream STREAM_INIT, a = layer index, b = 2 (weights) and 3 (biases).
- Minibatch order of epoch `epoch`: word i % 4 of philox4x32(c0=i // 4, c1=epoch, c2=0, c3=0,
  k0=seed, k1=STREAM_ORDER) drives Fisher-Yates step i (see `permutation`).

Gaussians come from Box-Muller in float64 on a pair of words (w0, w1):
u1 = (w0 + 1/2) 2^-32 in (0, 1), u2 = w1 2^-32, r = sqrt(-2 log u1),
g0 = r cos(2 pi u2), g1 = r sin(2 pi u2). Words (r0, r1) give (g0, g1), words (r2, r3) give (g2, g3).
"""

import numpy as np
from numba import njit

from fastmlp.constants import PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1, STREAM_ORDER

# uint64 constants: Numba types a mix of uint64 and int64 as float64, so every operand stays uint64.
_MASK = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)
_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint64(PHILOX_W0)
_W1 = np.uint64(PHILOX_W1)
_TWO_POW_M32 = 2.0**-32
_TWO_PI = 2.0 * np.pi


# ---------------------------------------------------------------------------------------------
# Philox4x32-10
# ---------------------------------------------------------------------------------------------

@njit(inline="always")
def _philox_round(c0, c1, c2, c3, k0, k1):
    """One Philox round on uint64-held uint32 words: two 32x32 -> 64-bit products, hi/lo xor-mixed."""
    p0 = _M0 * c0  # exact: a product of two 32-bit words fits in 64 bits
    p1 = _M1 * c2
    return ((p1 >> _SHIFT) ^ c1 ^ k0, p1 & _MASK, (p0 >> _SHIFT) ^ c3 ^ k1, p0 & _MASK)


@njit(inline="always")
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter (c0..c3) under key (k0, k1); returns 4 uint32 values held in uint64."""
    x0 = np.uint64(c0) & _MASK
    x1 = np.uint64(c1) & _MASK
    x2 = np.uint64(c2) & _MASK
    x3 = np.uint64(c3) & _MASK
    y0 = np.uint64(k0) & _MASK
    y1 = np.uint64(k1) & _MASK
    x0, x1, x2, x3 = _philox_round(x0, x1, x2, x3, y0, y1)
    for _ in range(PHILOX_ROUNDS - 1):
        y0 = (y0 + _W0) & _MASK  # Weyl key schedule: bump the key before every round after the first
        y1 = (y1 + _W1) & _MASK
        x0, x1, x2, x3 = _philox_round(x0, x1, x2, x3, y0, y1)
    return x0, x1, x2, x3


def philox4x32_np(ctr, key):
    """Philox4x32-10, vectorised: ctr (n, 4) uint32, key (2,) or (n, 2) uint32 -> (n, 4) uint32."""
    c = np.asarray(ctr, dtype=np.uint32).astype(np.uint64)  # (n, 4)
    k = np.broadcast_to(np.asarray(key, dtype=np.uint32).astype(np.uint64), (c.shape[0], 2))
    x0, x1, x2, x3 = c[:, 0], c[:, 1], c[:, 2], c[:, 3]  # (n,) each
    k0, k1 = k[:, 0].copy(), k[:, 1].copy()  # (n,) each
    for r in range(PHILOX_ROUNDS):
        if r > 0:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = _M0 * x0
        p1 = _M1 * x2
        x0, x1, x2, x3 = (p1 >> _SHIFT) ^ x1 ^ k0, p1 & _MASK, (p0 >> _SHIFT) ^ x3 ^ k1, p0 & _MASK
    return np.stack([x0, x1, x2, x3], axis=1).astype(np.uint32)  # (n, 4)


def words_np(n, seed, stream, a, b):
    """The Philox words of the vector addressed by (seed, stream, a, b): counters (q, a, b, 0) for q < ceil(n / 4)
    -> (ceil(n / 4), 4) uint32; element e of the vector comes from word e % 4 of row e // 4."""
    _check_key(seed, stream)
    n_blocks = (n + 3) // 4
    ctr = np.zeros((n_blocks, 4), dtype=np.uint32)  # (n/4, 4)
    ctr[:, 0] = np.arange(n_blocks, dtype=np.uint32)
    ctr[:, 1] = a
    ctr[:, 2] = b
    return philox4x32_np(ctr, np.array([seed, stream], dtype=np.uint32))


def _check_key(seed, stream):
    """Raise ValueError unless seed and stream are uint32 values."""
    for name, value in (("seed", seed), ("stream", stream)):
        if not 0 <= int(value) < 2**32:
            raise ValueError(f"{name} must be in [0, 2**32); got {value}")


# ---------------------------------------------------------------------------------------------
# Gaussians
# ---------------------------------------------------------------------------------------------

@njit(inline="always")
def box_muller(w0, w1):
    """Two standard Gaussians (float64) from two uint32 words."""
    u1 = (np.float64(w0) + 0.5) * _TWO_POW_M32  # in (0, 1): log(u1) is finite
    u2 = np.float64(w1) * _TWO_POW_M32  # in [0, 1)
    r = np.sqrt(-2.0 * np.log(u1))
    return r * np.cos(_TWO_PI * u2), r * np.sin(_TWO_PI * u2)


def box_muller_np(w0, w1):
    """Box-Muller, vectorised: w0, w1 (n,) uint32 -> g0, g1 (n,) float64."""
    u1 = (np.asarray(w0, dtype=np.float64) + 0.5) * _TWO_POW_M32
    u2 = np.asarray(w1, dtype=np.float64) * _TWO_POW_M32
    r = np.sqrt(-2.0 * np.log(u1))
    return r * np.cos(_TWO_PI * u2), r * np.sin(_TWO_PI * u2)


@njit
def gaussian_fill(out, seed, stream, a, b):
    """Fill out (n,) with the Gaussian vector addressed by (seed, stream, a, b); a float32 out rounds."""
    n = out.shape[0]
    for q in range((n + 3) // 4):  # one Philox call gives elements 4q .. 4q+3
        r0, r1, r2, r3 = philox4x32(q, a, b, 0, seed, stream)
        g0, g1 = box_muller(r0, r1)
        g2, g3 = box_muller(r2, r3)
        e = 4 * q
        out[e] = g0
        if e + 1 < n:
            out[e + 1] = g1
        if e + 2 < n:
            out[e + 2] = g2
        if e + 3 < n:
            out[e + 3] = g3


def gaussian_np(n, seed, stream, a, b):
    """The Gaussian vector addressed by (seed, stream, a, b), vectorised -> (n,) float64."""
    words = words_np(n, seed, stream, a, b)  # (n/4, 4)
    g0, g1 = box_muller_np(words[:, 0], words[:, 1])
    g2, g3 = box_muller_np(words[:, 2], words[:, 3])
    return np.stack([g0, g1, g2, g3], axis=1).reshape(-1)[:n]  # (n,)


def uniform_np(n, seed, stream, a, b):
    """The uniform vector addressed by (seed, stream, a, b), vectorised -> (n,) float64 in (0, 1)."""
    words = words_np(n, seed, stream, a, b).reshape(-1)[:n]  # (n,)
    return (words.astype(np.float64) + 0.5) * _TWO_POW_M32


# ---------------------------------------------------------------------------------------------
# Minibatch order
# ---------------------------------------------------------------------------------------------

@njit
def permute_into(p_out, idx_in, seed, epoch):
    """Write into p_out (n,) the epoch's Fisher-Yates shuffle of idx_in (n,); n < 2**32."""
    n = idx_in.shape[0]
    p_out[:] = idx_in
    words = (np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(0))
    for i in range(n - 1, 0, -1):
        if i == n - 1 or i % 4 == 3:  # entering a new block of four steps: one Philox call serves them
            words = philox4x32(i // 4, epoch, 0, 0, seed, STREAM_ORDER)
        w = words[i % 4]
        j = (w * np.uint64(i + 1)) >> _SHIFT  # in [0, i]: multiply-shift, no modulo, bias < (i+1) 2^-32
        tmp = p_out[i]
        p_out[i] = p_out[j]
        p_out[j] = tmp


@njit
def permutation(n, seed, epoch):
    """The epoch's order of n samples -> (n,) int64, a permutation of 0..n-1."""
    p = np.empty(n, dtype=np.int64)
    permute_into(p, np.arange(n), seed, epoch)
    return p


def permutation_np(n, seed, epoch):
    """NumPy twin of `permutation` -> (n,) int64."""
    _check_key(seed, STREAM_ORDER)
    n_blocks = (n + 3) // 4
    ctr = np.zeros((n_blocks, 4), dtype=np.uint32)  # (n/4, 4)
    ctr[:, 0] = np.arange(n_blocks, dtype=np.uint32)
    ctr[:, 1] = epoch
    words = philox4x32_np(ctr, np.array([seed, STREAM_ORDER], dtype=np.uint32)).reshape(-1)[:n]  # (n,)
    js = (words.astype(np.uint64) * np.arange(1, n + 1, dtype=np.uint64)) >> _SHIFT  # (n,) swap targets
    p = np.arange(n, dtype=np.int64)
    for i in range(n - 1, 0, -1):
        j = int(js[i])
        p[i], p[j] = p[j], p[i]
    return p
