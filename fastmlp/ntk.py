"""The analytic NTK (and NNGP) of the depth-L ReLU network, kernel regression with it, and the empirical NTK of a
finite network.

Shapes: N training samples, n other inputs, D input dim, H hidden width, L hidden layers, M networks.

The network is `reference` with param="ntk": dense layer l computes ``z = sqrt(sigma_w2 / fan_in) * a @ W +
sqrt(sigma_b2) * b`` with W, b ~ N(0, 1), a = x for the first layer and ReLU of the layer below otherwise; the
last dense layer gives the logits. For one logit f, as H -> infinity (Jacot et al. 2018, Arora et al. 2019):

    first dense layer          K = sigma_w2 x.x' / D + sigma_b2                    Theta = K
    each of the L (ReLU, dense) pairs above it, the last dense being the output layer:
        theta = arccos(K(x, x') / sqrt(K(x, x) K(x', x')))
        K     <- sigma_w2 sqrt(K(x, x) K(x', x')) (sin theta + (pi - theta) cos theta) / (2 pi) + sigma_b2
        Theta <- K + sigma_w2 Theta (pi - theta) / (2 pi)                         (K the updated one)

K is the NNGP kernel E[f(x) f(x')], Theta the NTK sum_w df/dw(x) df/dw(x'). This is the recursion of
docs/science.md, and it matches the reference network term by term: the weights of layer l contribute
c_l^2 a.a' + s_l^2 = sigma_w2 / H sum_j relu(z_j) relu(z'_j) + sigma_b2 -> K (E[relu(u) relu(v)] is the
arc-cosine term), the layers below arrive through c_l W^T diag(relu'), giving
sigma_w2 E[relu'(u) relu'(v)] Theta = sigma_w2 (pi - theta) / (2 pi) Theta.
Both logits have the same kernel. tests/test_ntk.py checks it against Monte-Carlo networks and `empirical_ntk`.

Kernels are computed in float64, in tiles, written against an array module ``xp`` (NumPy, or CuPy when given CuPy
arrays), so the same code runs on a GPU; only the Cholesky solve has a branch per library.
"""
import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np

from . import preflight, reference
from .errors import UsageError
from .preflight import available_memory

KINDS = ("ntk", "nngp")
TILE = 1024          # rows and columns of one kernel tile: ~7 float64 work arrays of TILE^2 (8 MB each)
TEST_CHUNK = 2048    # test samples per chunk: the test kernel is never larger than TEST_CHUNK x N
_WORK_TILES = 8      # tile-sized float64 arrays alive at once while one tile is computed (with slack)
_JITTER_STEPS = [10.0 ** k for k in range(-12, -3)]   # diagonal jitter, relative to mean(diag), tried in order
# OpenBLAS's threaded Cholesky (dpotrf) crashes the process on large matrices: with 2 threads it segfaulted at
# N = 32,000, and in a later sweep at N = 16,000 (which had run fine before); OpenMathLib/OpenBLAS#2562 reports
# N = 32,768.  Above this N it runs on one thread (at N = 32,000: 175 s on one core of a 2-core EPYC).
POTRF_THREADED_MAX_N = 8192


# ------------------------------------------------------------------------------------------- array module
def array_module(*arrays):
    """numpy, or cupy when any argument is a CuPy array (cupy is imported only then)."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy
            return cupy
    return np


def _sync(xp):
    """Wait for the device, so timings cover the work and not only its launch."""
    if xp is not np:
        xp.cuda.Device().synchronize()


def check_memory(nbytes, what, xp=np, fix="lower --N"):
    """UsageError (one line, with the estimate and what is available) unless nbytes can be allocated: the rule of
    `fastmlp.preflight.check_memory`, with what is available measured by this module's `available_memory`."""
    preflight.check_memory(nbytes, what, xp, fix, available=available_memory(xp))


def kernel_bytes(n1, n2, tile=TILE):
    """Bytes `ntk_kernel` needs for an (n1, n2) kernel: the result plus one tile's work arrays."""
    t1, t2 = min(tile, n1), min(tile, n2)
    return 8 * (n1 * n2 + _WORK_TILES * t1 * t2)


def regression_bytes(N, D, tile=TILE, test_chunk=TEST_CHUNK, copy=False):
    """Bytes a kernel regression on N samples needs at its peak: the Gram matrix (a second one for the Cholesky
    factor when ``copy``, as on a GPU), one tile's work arrays, one test chunk's kernel, and the inputs."""
    t = min(tile, N)
    return 8 * (N * N * (2 if copy else 1) + _WORK_TILES * t * t + test_chunk * N + (N + test_chunk) * D)


# ---------------------------------------------------------------------------------------- analytic kernel
def _check_hyper(depth, sigma_w2, sigma_b2, kind):
    if isinstance(depth, bool) or int(depth) != depth or depth < 1:
        raise UsageError(f"--L (depth) must be an integer of at least 1 (got {depth})")
    if not (math.isfinite(sigma_w2) and sigma_w2 > 0):
        raise UsageError(f"--sigma-w2 must be positive and finite (got {sigma_w2:g})")
    if not (math.isfinite(sigma_b2) and sigma_b2 >= 0):
        raise UsageError(f"--sigma-b2 must be 0 or more and finite (got {sigma_b2:g})")
    if kind not in KINDS:
        raise UsageError(f"--kind must be one of {', '.join(KINDS)} (got {kind!r})")
    _check_range(int(depth), sigma_w2, sigma_b2)


def _settings(depth, sigma_w2, sigma_b2):
    return f"--L {depth}, --sigma-w2 {sigma_w2:g}, --sigma-b2 {sigma_b2:g}"


def scale_range(depth, sigma_w2, sigma_b2):
    """(lowest, highest) log10 of the kernel's scale over the layers, for inputs with x.x / D = 1: the variances
    K^l(x, x) = sigma_w2 K^(l-1)(x, x) / 2 + sigma_b2 of l = 0..depth (monotone in l, so the ends bound them), the
    highest times depth + 1 for Theta, their sum.  In closed form, so any depth costs the same."""
    a, d0 = sigma_w2 / 2, sigma_w2 + sigma_b2
    n = depth
    if a == 1.0:
        log_last = math.log10(d0 + n * sigma_b2)
    elif a < 1.0 and sigma_b2 > 0:          # tends to the fixed point sigma_b2 / (1 - a), between d0 and it
        fixed = sigma_b2 / (1 - a)
        log_last = math.log10(fixed + a ** n * (d0 - fixed)) if a ** n > 0 else math.log10(fixed)
    elif a < 1.0:                           # a^n d0, in logs (it may be far below the smallest float)
        log_last = n * math.log10(a) + math.log10(d0)
    else:                                   # a^n (d0 + sigma_b2 / (a - 1)) - sigma_b2 / (a - 1), in logs
        log_last = n * math.log10(a) + math.log10(d0 + sigma_b2 / (a - 1))
    log_first = math.log10(d0)
    return min(log_first, log_last), max(log_first, log_last) + math.log10(depth + 1)


SCALE_LIMIT = 140   # |log10| of the kernel's scale: its products of two variances stay far inside float64


def _check_range(depth, sigma_w2, sigma_b2):
    """UsageError naming the settings when the kernel's scale leaves float64's range (overflow to inf, or underflow
    to 0, in the recursion's products), before any kernel is computed."""
    lo, hi = scale_range(depth, sigma_w2, sigma_b2)
    if hi > SCALE_LIMIT:
        raise UsageError(f"{_settings(depth, sigma_w2, sigma_b2)}: the kernel grows to about 1e{hi:.0f} over the "
                         f"layers (K is multiplied by sigma_w2 / 2 per layer) and overflows float64; lower "
                         f"--sigma-w2 towards 2, or --L")
    if lo < -SCALE_LIMIT:
        raise UsageError(f"{_settings(depth, sigma_w2, sigma_b2)}: the kernel shrinks to about 1e{lo:.0f} over the "
                         f"layers and underflows float64; raise --sigma-w2 towards 2 (or --sigma-b2), or lower --L")


def _diagonals(xp, x, depth, sigma_w2, sigma_b2):
    """K^l(x, x) for l = 0..depth-1, (depth, n): the variances the recursion normalises by (theta = 0 there)."""
    d = xp.empty((depth, x.shape[0]))
    d[0] = sigma_w2 * (x * x).sum(axis=1) / x.shape[1] + sigma_b2
    for l in range(1, depth):
        d[l] = sigma_w2 * d[l - 1] / 2 + sigma_b2
    return d


def _tile(xp, x1, x2, d1, d2, depth, sigma_w2, sigma_b2, kind, on_diagonal):
    """One (n1, n2) tile of the kernel; d1 (depth, n1), d2 (depth, n2) from `_diagonals`.

    ``on_diagonal``: x1 is x2, so cos theta is exactly 1 on the tile's diagonal (rounding would make theta
    ~1e-8 there, and Theta's (pi - theta) factor would carry it).
    """
    inv2pi = 1.0 / (2.0 * math.pi)
    K = x1 @ x2.T                                      # (n1, n2)
    K *= sigma_w2 / x1.shape[1]
    K += sigma_b2
    T = K.copy() if kind == "ntk" else None            # Theta of the first dense layer
    for l in range(depth):
        norm = xp.sqrt(xp.outer(d1[l], d2[l]))         # sqrt(K(x, x) K(x', x'))
        cos = K / xp.maximum(norm, 1e-300)             # K = 0 wherever norm = 0
        xp.clip(cos, -1.0, 1.0, out=cos)
        if on_diagonal:
            xp.fill_diagonal(cos, 1.0)
        pi_theta = math.pi - xp.arccos(cos)           # pi - theta
        K = xp.sqrt(1.0 - cos * cos)                    # sin theta
        K += pi_theta * cos
        K *= norm
        K *= sigma_w2 * inv2pi
        K += sigma_b2                                  # the dense layer above this ReLU: new NNGP kernel
        if T is not None:
            T *= pi_theta
            T *= sigma_w2 * inv2pi
            T += K
    return K if T is None else T


def ntk_kernel(x1, x2, depth, sigma_w2=2.0, sigma_b2=0.0, kind="ntk", tile=TILE):
    """Analytic kernel (N1, N2) float64 between x1 (N1, D) and x2 (N2, D) of the depth-L ReLU network in NTK
    parameterization: kind "ntk" (Theta) or "nngp" (K); see the module docstring for the recursion.

    x2 None (or x2 is x1) computes the symmetric Gram matrix of x1, only its upper tiles and a mirror copy.
    Computed in tiles of at most ``tile`` x ``tile``; NumPy or CuPy arrays in, the same kind out.
    """
    _check_hyper(depth, sigma_w2, sigma_b2, kind)
    depth = int(depth)
    if int(tile) != tile or tile < 1:
        raise UsageError(f"tile must be a positive integer (got {tile})")
    tile = int(tile)
    same = x2 is None or x2 is x1
    xp = array_module(x1, x2)
    x1 = xp.asarray(x1, dtype=xp.float64)
    x2 = x1 if same else xp.asarray(x2, dtype=xp.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"need x1 (N1, D) and x2 (N2, D); got {x1.shape} and {x2.shape}")
    n1, n2 = x1.shape[0], x2.shape[0]
    check_memory(kernel_bytes(n1, n2, tile), f"a {n1} x {n2} kernel", xp, fix="use fewer samples")
    with np.errstate(over="ignore"):
        d1 = _diagonals(xp, x1, depth, sigma_w2, sigma_b2)
        d2 = d1 if same else _diagonals(xp, x2, depth, sigma_w2, sigma_b2)
    out = xp.empty((n1, n2))
    total = 0.0                                        # sum of every tile: finite exactly when every entry is
    with np.errstate(over="ignore", invalid="ignore"):     # an overflow is found in the sum, and refused below
        for i0 in range(0, n1, tile):
            i1 = min(i0 + tile, n1)
            for j0 in range(i0 if same else 0, n2, tile):
                j1 = min(j0 + tile, n2)
                blk = _tile(xp, x1[i0:i1], x2[j0:j1], d1[:, i0:i1], d2[:, j0:j1], depth, sigma_w2, sigma_b2, kind,
                            on_diagonal=same and i0 == j0)
                out[i0:i1, j0:j1] = blk
                total = total + blk.sum()
                if same and j0 != i0:
                    out[j0:j1, i0:i1] = blk.T
    if not math.isfinite(float(total)):
        raise UsageError(f"{_settings(depth, sigma_w2, sigma_b2)}: the {kind} kernel of these inputs is not finite "
                         f"in float64 (inf or NaN entries); lower --sigma-w2 towards 2, or --L")
    return out


# ------------------------------------------------------------------------------------- kernel regression
def _factor_threads(n, xp=np):
    """A context in which NumPy/SciPy's BLAS factors an n x n matrix: one thread above POTRF_THREADED_MAX_N (CuPy
    arrays: no change)."""
    if n <= POTRF_THREADED_MAX_N or xp is not np:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1, user_api="blas")


def _cholesky_inplace(K, y):
    """Solve K alpha = y (NumPy) by Cholesky in K's own memory: no second N x N array.

    LAPACK factors one triangle and never reads the other, so the other keeps K and gives K @ alpha (the
    training predictions) afterwards. Returns alpha (N,), the jitter added to the diagonal, and K @ alpha.
    """
    from scipy.linalg import blas, lapack
    A = K.T                                 # the same symmetric matrix, Fortran-ordered: LAPACK works in place
    diag = np.diagonal(A).copy()            # (N,) the factorization overwrites it
    jitter = 0.0
    for rel in [0.0] + _JITTER_STEPS:
        if rel:                             # restore the factored triangle from the untouched one
            _mirror_upper_to_lower(A)
            jitter = rel * float(diag.mean())
            np.fill_diagonal(A, diag + jitter)
        with _factor_threads(A.shape[0]):
            c, info = lapack.dpotrf(A, lower=1, overwrite_a=1, clean=0)
        if info < 0:
            raise RuntimeError(f"dpotrf: illegal argument {-info}")
        if info == 0:
            break
    else:
        raise np.linalg.LinAlgError(f"kernel matrix not positive definite even with jitter {jitter:g}")
    alpha, info = lapack.dpotrs(c, y, lower=1)
    np.fill_diagonal(A, diag + jitter)      # the upper triangle and this diagonal are K + jitter I again
    fit = blas.dsymv(1.0, A, alpha, lower=0)
    return alpha, jitter, fit


def _mirror_upper_to_lower(A, tile=TILE):
    """A[i, j] = A[j, i] for i > j, block by block (no N x N temporary)."""
    n = A.shape[0]
    for i0 in range(0, n, tile):
        i1 = min(i0 + tile, n)
        for j0 in range(0, i0, tile):
            A[i0:i1, j0:j0 + tile] = A[j0:j0 + tile, i0:i1].T
        blk = A[i0:i1, i0:i1]
        low = np.tril_indices(i1 - i0, -1)
        blk[low] = blk.T[low]


def _cholesky_copy(xp, K, y):
    """Solve K alpha = y by Cholesky into a new array (NumPy or CuPy): alpha, jitter, (K + jitter I) @ alpha.
    K is left as it came in."""
    if xp is np:
        from scipy.linalg import solve_triangular
        raising = contextlib.nullcontext()
    else:
        import cupyx
        from cupyx.scipy.linalg import solve_triangular
        raising = cupyx.errstate(linalg="raise")     # CuPy checks the factorization only when told to raise
    diag = xp.diagonal(K).copy()                     # (N,)
    jitter = 0.0
    try:
        for rel in [0.0] + _JITTER_STEPS:
            jitter = rel * float(diag.mean())
            xp.fill_diagonal(K, diag + jitter)       # in K itself: no N x N identity or sum
            try:
                with raising, _factor_threads(K.shape[0], xp):
                    C = xp.linalg.cholesky(K)        # lower
                break
            except np.linalg.LinAlgError:
                continue
        else:
            raise np.linalg.LinAlgError(f"kernel matrix not positive definite even with jitter {jitter:g}")
        alpha = solve_triangular(C, solve_triangular(C, y, lower=True), lower=True, trans="T")
        return alpha, jitter, K @ alpha
    finally:
        xp.fill_diagonal(K, diag)


@dataclass
class KernelFit:
    """A fitted kernel regression: f(x*) = Theta(x*, X) alpha with alpha = (Theta(X, X) + jitter I)^-1 y."""
    x: object                 # (N, D) float64 training inputs (NumPy or CuPy)
    alpha: object             # (N,)
    depth: int
    sigma_w2: float
    sigma_b2: float
    kind: str
    tile: int
    jitter: float             # added to the Gram diagonal; 0.0 unless the plain factorization failed
    train_error: float        # error rate of sign(f) on the training set itself (0 when it interpolates)
    train_residual: float     # max |f(x_i) - y_i| over the training set
    kernel_s: float
    solve_s: float

    def predict(self, x):
        """f (n,) at inputs x (n, D), in row chunks of `tile` (the test kernel is never n x N at once)."""
        xp = array_module(self.x)
        x = xp.asarray(x, dtype=xp.float64)
        out = xp.empty(x.shape[0])
        for i0 in range(0, x.shape[0], self.tile):
            Kt = ntk_kernel(x[i0:i0 + self.tile], self.x, self.depth, self.sigma_w2, self.sigma_b2, self.kind,
                            self.tile)                                   # (chunk, N)
            out[i0:i0 + self.tile] = Kt @ self.alpha
        if not math.isfinite(float(out.sum())):
            raise UsageError(f"{_settings(self.depth, self.sigma_w2, self.sigma_b2)}: the kernel regression's "
                             f"predictions are not finite; lower --L or change --sigma-w2")
        return out

    def errors(self, x, y):
        """Misclassified samples among x (n, D), y (n,) in {0, 1}: class 1 where f > 0."""
        xp = array_module(self.x)
        f = self.predict(x)
        return int(((f > 0) != (xp.asarray(y) == 1)).sum())

    def test_error(self, chunks):
        """Error rate over an iterable of (x, y) chunks (test sets of any size, streamed)."""
        wrong = n = 0
        for x, y in chunks:
            wrong += self.errors(x, y)
            n += len(y)
        return wrong / n if n else float("nan")


def kernel_regression(x, y, depth, sigma_w2=2.0, sigma_b2=0.0, kind="ntk", tile=TILE, inplace=None):
    """Ridgeless kernel regression on x (N, D), y (N,) in {0, 1} with targets +-1 -> KernelFit.

    Cholesky of the Gram matrix; only if that fails, a diagonal jitter of 1e-12, 1e-11, ... 1e-4 times its mean
    diagonal (the first that works, recorded in the fit). ``inplace`` (NumPy only, the default there): factor
    in the Gram matrix's own memory, so N = 20,000 needs one 3.2 GB matrix, not two.
    """
    xp = array_module(x, y)
    inplace = (xp is np) if inplace is None else inplace
    if inplace and xp is not np:
        raise ValueError("the in-place Cholesky is NumPy only")
    x = xp.asarray(x, dtype=xp.float64)
    y = xp.asarray(y)
    N = x.shape[0]
    if N < 1 or y.shape != (N,):
        raise ValueError(f"need x (N, D) with N >= 1 and y (N,); got {x.shape} and {y.shape}")
    _check_hyper(depth, sigma_w2, sigma_b2, kind)
    check_memory(regression_bytes(N, x.shape[1], tile, copy=not inplace),
                 f"kernel regression on --N {N} (a {N} x {N} float64 Gram matrix and workspace)", xp)
    target = xp.where(y == 1, 1.0, -1.0)                 # (N,)
    t0 = time.perf_counter()
    K = ntk_kernel(x, None, depth, sigma_w2, sigma_b2, kind, tile)   # (N, N)
    _sync(xp)
    t1 = time.perf_counter()
    settings = _settings(depth, sigma_w2, sigma_b2)
    try:
        if inplace:
            alpha, jitter, fit = _cholesky_inplace(K, target)
        else:
            alpha, jitter, fit = _cholesky_copy(xp, K, target)
    except np.linalg.LinAlgError as e:
        raise UsageError(f"{settings}: the {N} x {N} Gram matrix cannot be factored ({e}): at this depth and scale "
                         f"the kernel is numerically degenerate; lower --L or change --sigma-w2") from None
    del K
    if not (math.isfinite(float(alpha.sum())) and math.isfinite(float(fit.sum()))):
        raise UsageError(f"{settings}: the kernel regression's solution is not finite (the {N} x {N} Gram matrix is "
                         f"numerically singular); lower --L or change --sigma-w2")
    train_error = float(((fit > 0) != (target > 0)).mean())
    residual = float(xp.abs(fit - target).max())
    _sync(xp)
    t2 = time.perf_counter()
    return KernelFit(x=x, alpha=alpha, depth=int(depth), sigma_w2=float(sigma_w2), sigma_b2=float(sigma_b2),
                     kind=kind, tile=int(tile), jitter=float(jitter), train_error=train_error,
                     train_residual=residual, kernel_s=t1 - t0, solve_s=t2 - t1)


# ------------------------------------------------------------------------------------------ empirical NTK
def _per_sample_grads(params, scales, x, logit):
    """Gradients of logit f(x_i) of one network (params with M = 1) for each input x (n, D):
    [(dW (n, fan_in, fan_out), db (n, fan_out))], by the reference backward with dlogits the unit vector."""
    n = x.shape[0]
    stacked = [(np.broadcast_to(W, (n,) + W.shape[1:]), np.broadcast_to(b, (n,) + b.shape[1:]))
               for W, b in params]                 # the same network n times, no copy
    xs = x[:, None, :]                             # (n, 1, D): copy i sees input i alone
    logits, acts = reference.forward(stacked, scales, xs)
    dlogits = np.zeros_like(logits)                # (n, 1, C)
    dlogits[..., logit] = 1.0
    return reference.backward(stacked, scales, xs, acts, dlogits)


def empirical_ntk(params, x1, x2=None, sigma_w2=2.0, sigma_b2=0.0, logit=0, param="ntk"):
    """Empirical NTK (M, N1, N2) of each of M finite networks: sum over all parameters w of df/dw(x1_i) df/dw(x2_j),
    f the logit ``logit``; params in the reference layout [(W (M, fan_in, fan_out), b (M, fan_out))], as
    `Engine.params()` returns them, in the parameterization ``param`` with sigma_w2, sigma_b2.

    Per-sample gradients come from `reference.backward`; memory is (N1 + N2) x (number of parameters) float64
    per network, so keep N1, N2 small (tens) at large widths.
    """
    if param == "ntk":
        _check_hyper(1, sigma_w2, sigma_b2, "ntk")
    x1 = np.asarray(x1, dtype=np.float64)
    same = x2 is None or x2 is x1
    x2 = x1 if same else np.asarray(x2, dtype=np.float64)
    params = [(np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)) for W, b in params]
    D, H = params[0][0].shape[1:]
    L = len(params) - 1
    if x1.shape[1] != D or x2.shape[1] != D:
        raise ValueError(f"the networks take inputs of dimension {D}; got {x1.shape} and {x2.shape}")
    scales = reference.layer_scales(D, H, L, param, sigma_w2, sigma_b2)
    M = params[0][0].shape[0]
    out = np.zeros((M, x1.shape[0], x2.shape[0]))
    for m in range(M):
        net = [(W[m:m + 1], b[m:m + 1]) for W, b in params]
        g1 = _per_sample_grads(net, scales, x1, logit)
        g2 = g1 if same else _per_sample_grads(net, scales, x2, logit)
        for (dW1, db1), (dW2, db2) in zip(g1, g2):
            out[m] += dW1.reshape(len(x1), -1) @ dW2.reshape(len(x2), -1).T + db1 @ db2.T
    return out


# ---------------------------------------------------------------------------------------- the experiment
def check_config(N, depth, sigma_w2, sigma_b2, n_test, repeats, seed, kind="ntk"):
    """UsageError (one line, what to change) for settings `run` cannot run."""
    if N < 1:
        raise UsageError(f"--N must be at least 1 (got {N})")
    _check_hyper(depth, sigma_w2, sigma_b2, kind)
    if not 0 <= n_test <= 2**32:
        raise UsageError(f"--n-test must lie in [0, 2**32] (a sample's index is one 32-bit word; got {n_test})")
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1 (got {repeats})")
    if repeats * N > 2**32:
        raise UsageError(f"--repeats x --N must be at most 2**32 training samples (got {repeats * N})")
    if not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2**32) (got {seed})")


def _to_host(a):
    """A NumPy copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def run(spec, N, L, n_test=10000, repeats=10, seed=0, sigma_w2=2.0, sigma_b2=0.0, kind="ntk", backend="cpu",
        tile=TILE, progress=None, save_outputs=None):
    """NTK kernel-regression test error for one (task, N, L); returns the record (a JSON-ready dict).

    Data: repeat r trains on samples r*N .. (r+1)*N - 1 of the "train" split of ``seed`` (repeat 0 is exactly the
    training set of `fastmlp train` and `fastmlp run` for that seed); every repeat is tested on the first n_test
    samples of the "test" split of ``seed`` (the test set they use), streamed in chunks of TEST_CHUNK.
    ``progress(text)`` receives one line per repeat.  ``save_outputs``: a path to write the predictor on the test
    points to (.npz: f (repeats, n_test) float64, the regression's f(x*); y (n_test,) the test labels in {-1, +1}),
    the points of `fastmlp train --save-outputs`.

    Record keys:
      command "ntk"; task (the task spec and its name)
      config       {N, L, sigma_w2, sigma_b2, n_test, repeats, seed, backend, kind}
      repeats      one per training set: {repeat, test_error, train_error, train_residual, jitter, kernel_s,
                   solve_s, test_s}; train_error is sign(f) against the training labels (0 when the regression
                   interpolates), train_residual max |f(x_i) - y_i|, jitter what was added to the Gram diagonal
                   (0.0 unless the plain Cholesky failed), kernel_s the Gram matrix, solve_s Cholesky + solve,
                   test_s the test kernel and predictions
      test_error   {mean, std (ddof = 1; null for one repeat), values}; all null with n_test = 0
      timing       {data_s, kernel_s, solve_s, test_s, wall_s} summed over repeats
      provenance   versions, git commit, backend, device, argv
    """
    from .backend import array_module, generate_on
    from .provenance import record
    from .tasks import iter_chunks

    check_config(N, L, sigma_w2, sigma_b2, n_test, repeats, seed, kind)
    preflight.check_outputs(("--save-outputs", save_outputs, "npz"))
    xp = array_module(backend)
    check_memory(regression_bytes(N, spec.D, tile, copy=xp is not np),
                 f"--N {N} (a {N} x {N} float64 Gram matrix and workspace)", xp)
    say = progress or (lambda text: None)
    t_start = time.perf_counter()
    reps, outputs = [], []
    timing = dict.fromkeys(["data_s", "kernel_s", "solve_s", "test_s"], 0.0)
    for r in range(repeats):
        t0 = time.perf_counter()
        x, y = generate_on(backend, spec, seed, "train", r * N, N)
        timing["data_s"] += time.perf_counter() - t0
        fit = kernel_regression(xp.asarray(x), xp.asarray(y), L, sigma_w2, sigma_b2, kind, tile)
        t1 = time.perf_counter()
        test_error = None
        if n_test > 0:
            test_error = fit.test_error((xp.asarray(xc), yc) for _, xc, yc in
                                        iter_chunks(spec, seed, "test", n_test, chunk=TEST_CHUNK))
            _sync(xp)
        if save_outputs:
            outputs.append(np.concatenate([np.zeros(0)] + [_to_host(fit.predict(xp.asarray(xc))) for _, xc, _ in
                                                            iter_chunks(spec, seed, "test", n_test, TEST_CHUNK)]))
        test_s = time.perf_counter() - t1
        reps.append({"repeat": r, "test_error": test_error, "train_error": fit.train_error,
                     "train_residual": fit.train_residual, "jitter": fit.jitter, "kernel_s": fit.kernel_s,
                     "solve_s": fit.solve_s, "test_s": test_s})
        timing["kernel_s"] += fit.kernel_s
        timing["solve_s"] += fit.solve_s
        timing["test_s"] += test_s
        del fit
        say(f"repeat {r + 1}/{repeats}: test error {'-' if test_error is None else f'{test_error:.4f}'}, "
            f"kernel {reps[-1]['kernel_s']:.1f}s, solve {reps[-1]['solve_s']:.1f}s, test {test_s:.1f}s"
            + (f", jitter {reps[-1]['jitter']:.3g}" if reps[-1]["jitter"] else ""))
    if save_outputs:
        y_test = np.concatenate([np.zeros(0, np.int8)] + [yc for _, _, yc in iter_chunks(spec, seed, "test", n_test)])
        np.savez(save_outputs, f=np.array(outputs).reshape(repeats, n_test), y=2 * y_test.astype(np.int8) - 1)
    values = [rep["test_error"] for rep in reps]
    summary = {"mean": None, "std": None, "values": values}
    if n_test > 0:
        summary["mean"] = float(np.mean(values))
        summary["std"] = float(np.std(values, ddof=1)) if repeats > 1 else None
    return {
        "command": "ntk",
        "task": spec.to_dict() | {"name": spec.name},
        "config": {"N": N, "L": L, "sigma_w2": sigma_w2, "sigma_b2": sigma_b2, "n_test": n_test,
                   "repeats": repeats, "seed": seed, "backend": backend, "kind": kind},
        "repeats": reps,
        "test_error": summary,
        "timing": timing | {"wall_s": time.perf_counter() - t_start},
        "provenance": record(backend),
    }
