"""Label rules (k-local, k-global, temperature): validation, parameters, fused data generation.

Shapes: N samples, D input dimension, k indices of a rule.

Sample i of a split is a pure function of (seed, split, i): its inputs are the Gaussian vector
(seed, stream of the split, a=i, b=0) of `fastmlp.rng`, rounded to float32, so any sample can be
regenerated alone and test sets of any size are streamed in chunks, never stored.

- k-local:  M = prod_t x[i_t]                              (i_t the k indices)
- k-global: M = sum_{j=0}^{D-1} prod_t x[(j + i_t) mod D]   (i_t the k offsets)
  y = 1 if M > 0 else 0. M is computed in float64 from the float32 inputs with a fixed loop order
  (j ascending, t ascending), so every backend gets the same label bit for bit.
- temperature: class y = i % 2 (exactly balanced); class 0 has beta1, class 1 beta2;
  x = irfft(rfft(z) / sqrt(lambda)) with lambda_q = 1 - 2 beta cos(2 pi q / D), z the Gaussian vector
  of sample i in float64, rounded to float32 at the end.
"""

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from fastmlp.constants import STREAM_TEST_X, STREAM_TRAIN_X
from fastmlp.errors import UsageError
from fastmlp import jitcache
from fastmlp.preflight import check_memory, data_bytes
from fastmlp.rng import gaussian_fill

RULES = ("local", "global", "temperature")
SPLIT_STREAMS = {"train": STREAM_TRAIN_X, "test": STREAM_TEST_X}

# Input dimension of each experiment in the paper; other k need an explicit --D.
DEFAULT_D = {
    ("local", 1): 1000, ("global", 1): 1000,
    ("local", 2): 500, ("global", 2): 100,
    ("local", 3): 100, ("global", 3): 40,
}
TEMPERATURE_D = 100


@dataclass(frozen=True)
class TaskSpec:
    """A resolved label rule: k-local / k-global indices, or the two temperatures."""

    rule: str  # "local" | "global" | "temperature"
    k: int  # 0 for temperature
    D: int
    indices: tuple = ()  # 0-based: k-local indices, k-global offsets; () for temperature
    beta1: float | None = None  # temperature only
    beta2: float | None = None

    @property
    def name(self):
        """The TASK spelling: "2-local", "3-global", "temperature"."""
        return "temperature" if self.rule == "temperature" else f"{self.k}-{self.rule}"

    def to_dict(self):
        """JSON-friendly fields (indices as a list)."""
        d = dataclasses.asdict(self)
        d["indices"] = list(self.indices)
        return d

    @classmethod
    def from_dict(cls, d):
        """Inverse of `to_dict`."""
        return cls(**{**d, "indices": tuple(d["indices"])})


# ---------------------------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------------------------

_TASK_RE = re.compile(r"^(\d+)-(local|global)$")


def parse_task(name, D=None, indices=None, beta1=0.1, beta2=0.2):
    """Validate a TASK name and its options -> TaskSpec; raises UsageError naming the option to change."""
    name = str(name).strip()
    if name == "temperature":
        return _parse_temperature(D, indices, beta1, beta2)
    m = _TASK_RE.match(name)
    if m is None:
        raise UsageError(f"unknown task {name!r}: TASK must be K-local, K-global (K = 1, 2, 3, ...) or temperature")
    k, rule = int(m.group(1)), m.group(2)
    if k < 1:
        raise UsageError(f"TASK {name!r} needs K >= 1, e.g. 1-{rule}")
    if D is None:
        if (rule, k) not in DEFAULT_D:
            raise UsageError(f"{name} has no default input dimension: give --D")
        D = DEFAULT_D[(rule, k)]
    D = _as_int(D, "--D")
    if D < 1:
        raise UsageError(f"--D must be >= 1; got --D {D}")
    if k > D:
        raise UsageError(f"{name} needs k <= D: raise --D to at least {k} (got --D {D})")
    what = "indices" if rule == "local" else "offsets"
    idx = tuple(range(k)) if indices is None else _parse_indices(indices)
    if len(idx) != k or len(set(idx)) != k or not all(0 <= i < D for i in idx):
        raise UsageError(
            f"--indices must be {k} distinct {what} in [0, {D}) for {name}; got --indices {_fmt(indices)}")
    return TaskSpec(rule=rule, k=k, D=D, indices=idx)


def _parse_temperature(D, indices, beta1, beta2):
    """Validate the temperature task's options -> TaskSpec."""
    if indices is not None:
        raise UsageError("temperature takes no --indices; drop the option")
    D = TEMPERATURE_D if D is None else _as_int(D, "--D")
    if D < 1:
        raise UsageError(f"--D must be >= 1; got --D {D}")
    betas = []
    for opt, beta in (("--beta1", beta1), ("--beta2", beta2)):
        try:
            beta = float(beta)
        except (TypeError, ValueError):
            raise UsageError(f"{opt} must be a number; got {opt} {beta!r}") from None
        if not abs(beta) < 0.5:  # also rejects NaN
            raise UsageError(f"temperature needs |beta| < 1/2; got {opt} {beta}")
        betas.append(beta)
    if betas[0] == betas[1]:
        raise UsageError(f"temperature needs two different temperatures: change --beta1 or --beta2 (both {betas[0]})")
    return TaskSpec(rule="temperature", k=0, D=D, indices=(), beta1=betas[0], beta2=betas[1])


def _as_int(value, opt):
    """An integer option value, or UsageError naming the option."""
    try:
        if isinstance(value, str):
            return int(value)
        if isinstance(value, (bool, np.bool_)) or float(value) != int(value):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{opt} must be an integer; got {opt} {value!r}") from None


def _parse_indices(indices):
    """Indices as given ("0,2,5" or a sequence of ints) -> tuple of ints."""
    items = indices.split(",") if isinstance(indices, str) else list(indices)
    return tuple(_as_int(i, "--indices") for i in items)


def _fmt(indices):
    """An --indices value as the user would type it."""
    return indices if isinstance(indices, str) else ",".join(str(i) for i in indices)


def _check_sample_range(seed, split, start, n):
    """Raise UsageError unless seed, split and the sample range address valid Philox keys/counters."""
    if split not in SPLIT_STREAMS:
        raise UsageError(f"split must be 'train' or 'test'; got {split!r}")
    if not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32); got --seed {seed}")
    if start < 0 or n < 0 or start + n > 2**32:  # the sample index is one 32-bit counter word
        raise UsageError(f"samples {start}..{start + n - 1} out of range: sample indices must lie in [0, 2**32)")


# ---------------------------------------------------------------------------------------------
# Fused generation
# ---------------------------------------------------------------------------------------------

@njit(inline="always")
def _feature(row, offsets, n_shifts):
    """M = sum_{j < n_shifts} prod_t row[(j + offsets[t]) % D] in float64; n_shifts = 1 for k-local."""
    D = row.shape[0]
    m = 0.0
    for j in range(n_shifts):
        p = 1.0
        for t in range(offsets.shape[0]):
            p *= np.float64(row[(j + offsets[t]) % D])
        m += p
    return m


@njit(parallel=True, cache=True)
def _labeled_rows(x, y, seed, stream, start, offsets, n_shifts):
    """Draw samples start.. into x (N, D) float32 and label each into y (N,) from the row just drawn."""
    for i in prange(x.shape[0]):  # one sample per iteration: its row stays in L1 between draw and label
        row = x[i]  # (D,)
        gaussian_fill(row, seed, stream, start + i, 0)  # rounds to float32 on store
        y[i] = 1 if _feature(row, offsets, n_shifts) > 0.0 else 0


@njit(parallel=True, cache=True)
def _gaussian_rows(z, seed, stream, start):
    """Draw samples start.. into z (N, D) float64."""
    for i in prange(z.shape[0]):
        gaussian_fill(z[i], seed, stream, start + i, 0)


jitcache.drop_stale(_labeled_rows)


def _temperature_rows(z, betas):
    """Filter each row z[i] (N, D) float64 by its precision eigenvalues: betas (N,) -> x (N, D) float64."""
    D = z.shape[1]
    q = np.arange(D // 2 + 1)  # rfft frequencies
    x = np.empty_like(z)
    for beta in np.unique(betas):  # one FFT pass per class
        rows = betas == beta
        lam = 1.0 - 2.0 * beta * np.cos(2.0 * np.pi * q / D)  # (D/2+1,) eigenvalues of I - beta (S + S^T)
        x[rows] = np.fft.irfft(np.fft.rfft(z[rows], axis=1) / np.sqrt(lam), n=D, axis=1)
    return x


def generate(spec, seed, split, start, n):
    """Samples start .. start+n-1 of a split -> x (n, D) float32, y (n,) int8 in {0, 1}."""
    _check_sample_range(seed, split, start, n)
    check_memory(data_bytes(n, spec.D, spec.rule), f"generating {n} samples of {spec.name} (D = {spec.D})",
                 fix="lower --N (or --D)")
    stream = SPLIT_STREAMS[split]
    if spec.rule == "temperature":
        y = (np.arange(start, start + n) % 2).astype(np.int8)  # (n,) exactly balanced classes
        z = np.empty((n, spec.D), dtype=np.float64)
        with jitcache.first_compile("data-temperature"):
            _gaussian_rows(z, seed, stream, start)
        x = _temperature_rows(z, np.where(y == 0, spec.beta1, spec.beta2)).astype(np.float32)
        return x, y
    x = np.empty((n, spec.D), dtype=np.float32)
    y = np.empty(n, dtype=np.int8)
    offsets = np.asarray(spec.indices, dtype=np.int64)  # (k,)
    n_shifts = spec.D if spec.rule == "global" else 1
    with jitcache.first_compile("data"):
        _labeled_rows(x, y, seed, stream, start, offsets, n_shifts)
    return x, y


def iter_chunks(spec, seed, split, n, chunk=8192):
    """Yield (start, x (c, D) float32, y (c,) int8) covering samples 0..n-1 of a split, c <= chunk."""
    _check_sample_range(seed, split, 0, n)
    for start in range(0, n, chunk):
        x, y = generate(spec, seed, split, start, min(chunk, n - start))
        yield start, x, y
