"""The batched SGD engine: M networks of one architecture trained at once, each with its own learning rate,
seed (initialization and minibatch order), training subset, epoch count and stop state.

Stop rule (PAPER.md): at the end of every epoch each network is evaluated on its whole training subset; training
error exactly zero stops it as converged, a non-finite loss stops it as diverged, the epoch cap stops it as not
converged.  Stopped networks leave the active set and cost nothing more.
"""
import time
from dataclasses import dataclass, asdict

import numba
import numpy as np

from . import cpu, reference
from .constants import N_CLASSES
from .errors import UsageError
from .tasks import generate, iter_chunks

BACKENDS = ("cpu", "gpu")


@dataclass
class NetworkResult:
    """What one network did: its settings and how it stopped."""
    index: int
    lr: float
    seed: int
    n_train: int
    epochs: int
    converged: bool
    diverged: bool
    train_loss: float
    train_error: float

    def to_dict(self):
        d = asdict(self)
        for key in ("train_loss", "train_error"):   # JSON has no NaN; a diverged network's loss is null
            if not np.isfinite(d[key]):
                d[key] = None
        return d


def _check_positive(name, value):
    if value < 1:
        raise UsageError(f"{name} must be at least 1 (got {value})")


def check_engine_args(x_shape, y_shape, hidden_width, depth, batch_size, lrs, seeds, subsets, param, dtype,
                      sigma_w2, sigma_b2, init=reference.DEFAULT_INIT, init_scale=1.0):
    """Validate an engine's arguments, the same for every backend -> (lrs (M,) float64, seeds (M,) int64,
    dtype, subsets: M int64 index arrays)."""
    if len(x_shape) != 2 or tuple(y_shape) != (x_shape[0],):
        raise ValueError(f"need x (N, D) and y (N,); got {tuple(x_shape)} and {tuple(y_shape)}")
    lrs = np.atleast_1d(np.asarray(lrs, dtype=np.float64))
    seeds = np.atleast_1d(np.asarray(seeds, dtype=np.int64))
    if lrs.shape != seeds.shape:
        raise ValueError(f"one learning rate per seed: {lrs.shape} vs {seeds.shape}")
    _check_positive("--H (hidden width)", hidden_width)
    _check_positive("--L (depth)", depth)
    _check_positive("--B (batch size)", batch_size)
    _check_positive("--N (training samples)", x_shape[0])
    if not np.all(np.isfinite(lrs)) or np.any(lrs <= 0):
        raise UsageError(f"learning rates must be positive and finite (got {lrs.min():g})")
    if np.any(seeds < 0) or np.any(seeds >= 2**32):
        raise UsageError("network seeds must lie in [0, 2**32)")
    if param not in reference.PARAMS:
        raise UsageError(f"--param must be one of {', '.join(reference.PARAMS)} (got {param!r})")
    if param == "ntk" and not (sigma_w2 > 0 and sigma_b2 >= 0):
        raise UsageError(f"the NTK parameterization needs --sigma-w2 > 0 and --sigma-b2 >= 0 "
                         f"(got {sigma_w2:g}, {sigma_b2:g})")
    reference.check_init(init, init_scale)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise UsageError(f"--dtype must be float32 or float64 (got {dtype})")
    N, M = x_shape[0], len(lrs)
    if subsets is None:
        subsets = [np.arange(N)] * M
    if len(subsets) != M:
        raise ValueError(f"need one training subset per network ({M}), got {len(subsets)}")
    subsets = [np.asarray(s, dtype=np.int64) for s in subsets]
    for s in subsets:
        if s.size == 0 or s.min() < 0 or s.max() >= N:
            raise ValueError("every training subset needs indices in [0, N)")
    return lrs, seeds, dtype, subsets


def init_stop_state(engine):
    """Every network's stop state, on the host for every backend: epochs trained, converged, diverged, stopped,
    and its last training loss and error (NaN until known)."""
    M = engine.M
    engine.epochs = np.zeros(M, np.int64)
    engine.converged = np.zeros(M, bool)
    engine.diverged = np.zeros(M, bool)
    engine.train_loss = np.full(M, np.nan)
    engine.train_error = np.full(M, np.nan)
    engine.stopped = np.zeros(M, bool)


class Engine:
    """Train M = len(lrs) networks on one dataset x (N, D), y (N,) in {0, 1}.

    ``subsets``: None (every network trains on all N samples) or M index arrays into x (CV folds use this).
    ``init``, ``init_scale``: the initialization scheme and its scale (see reference.init_params).
    """

    def __init__(self, x, y, hidden_width, depth, batch_size, lrs, seeds, subsets=None, param="standard",
                 dtype=np.float32, sigma_w2=2.0, sigma_b2=0.0, threads=None, init=reference.DEFAULT_INIT,
                 init_scale=1.0):
        x = np.asarray(x)
        y = np.asarray(y)
        lrs, seeds, self.dtype, subsets = check_engine_args(x.shape, y.shape, hidden_width, depth, batch_size, lrs,
                                                            seeds, subsets, param, dtype, sigma_w2, sigma_b2,
                                                            init, init_scale)
        N, D = x.shape
        H, L, B, M = int(hidden_width), int(depth), int(batch_size), len(lrs)
        self.N, self.D, self.H, self.L, self.B, self.M = N, D, H, L, B, M
        self.param, self.lrs, self.seeds = param, lrs, seeds
        self.threads = int(threads or numba.get_num_threads())

        self.n_train = np.array([len(s) for s in subsets])
        self._sub_off = np.concatenate([[0], np.cumsum(self.n_train)]).astype(np.int64)
        self._subsets = np.concatenate(subsets)

        self.Dp, self.Hp = cpu.round_up(D, cpu.PAD), cpu.round_up(H, cpu.PAD)
        self.Bp = cpu.round_up(B, cpu.MR_ROWS)
        self._X = np.zeros((N, self.Dp), self.dtype)
        self._X[:, :D] = x
        self._Y = np.ascontiguousarray(y, dtype=np.int8)
        c, s = reference.layer_scales(D, H, L, param, sigma_w2, sigma_b2)
        self._c, self._s = c.astype(self.dtype), s.astype(self.dtype)
        self._lrs = lrs.astype(self.dtype)
        self._pack(reference.init_params(D, H, L, seeds, param, init=init, init_scale=init_scale))

        T, Hp, Bp = self.threads, self.Hp, self.Bp
        self._act = np.zeros((T, L, Bp, Hp), self.dtype)       # hidden activations of the current minibatch
        self._dz = np.zeros((T, 2, Bp, Hp), self.dtype)        # gradients w.r.t. pre-activations (ping-pong)
        self._z = np.zeros((T, Bp, N_CLASSES), self.dtype)     # logits, then their gradients
        self._rows = np.zeros((T, Bp), np.int64)               # dataset rows of the current minibatch
        self._perm = np.zeros((T, int(self.n_train.max())), np.int64)
        self._ident = np.arange(Bp, dtype=np.int64)            # rows of an activation buffer, in order

        init_stop_state(self)

    # ------------------------------------------------------------------------------------------ parameters
    def _pack(self, params):
        M, D, H, L, Dp, Hp, dt = self.M, self.D, self.H, self.L, self.Dp, self.Hp, self.dtype
        self._W0 = np.zeros((M, Dp, Hp), dt)
        self._b0 = np.zeros((M, Hp), dt)
        self._Wh = np.zeros((M, L - 1, Hp, Hp), dt)
        self._bh = np.zeros((M, L - 1, Hp), dt)
        self._Wo = np.zeros((M, N_CLASSES, Hp), dt)
        self._bo = np.zeros((M, N_CLASSES), dt)
        self._W0[:, :D, :H], self._b0[:, :H] = params[0]
        for l in range(1, L):
            self._Wh[:, l - 1, :H, :H], self._bh[:, l - 1, :H] = params[l]
        self._WhT = np.ascontiguousarray(self._Wh.transpose(0, 1, 3, 2))
        self._Wo[:, :, :H] = params[L][0].transpose(0, 2, 1)
        self._bo[:] = params[L][1]

    def set_params(self, params):
        """Replace every network's parameters (reference layout: [(W (M, fan_in, fan_out), b (M, fan_out))])."""
        self._pack(params)

    def params(self):
        """Every network's parameters in the reference layout, as float64 copies."""
        D, H, L = self.D, self.H, self.L
        out = [(self._W0[:, :D, :H], self._b0[:, :H])]
        out += [(self._Wh[:, l - 1, :H, :H], self._bh[:, l - 1, :H]) for l in range(1, L)]
        out.append((self._Wo[:, :, :H].transpose(0, 2, 1), self._bo))
        return [(W.astype(np.float64), b.astype(np.float64)) for W, b in out]

    def _weights(self):
        return (self._W0, self._b0, self._Wh, self._WhT, self._bh, self._Wo, self._bo, self._c, self._s)

    # ------------------------------------------------------------------------------------------- training
    def compile(self):
        """Compile (or load from Numba's on-disk cache) the kernels for this dtype without training anything;
        returns the seconds it took, so that timings of training never include compilation."""
        t0 = time.perf_counter()
        self._epoch(np.empty(0, np.int64), check=True, full=np.zeros(self.M, bool))
        self.evaluate(np.zeros((0, self.D), self.dtype), np.zeros(0, np.int8))
        return time.perf_counter() - t0

    def _epoch(self, active, check, full=None):
        loss = np.full(self.M, np.nan)
        err = np.zeros(self.M, np.int64)
        seen = np.zeros(self.M, np.int64)
        div = np.zeros(self.M, bool)
        full = np.ones(self.M, bool) if full is None else full
        with cpu.slp_vectorize():
            cpu.train_epoch(self._X, self._Y, self._subsets, self._sub_off, active, *self._weights(), self._lrs,
                            self.seeds, self.epochs, self.B, check, full, self._act, self._dz, self._z,
                            self._rows, self._perm, self._ident, loss, err, seen, div)
        self.epochs[active] += 1
        return loss, err, seen, div

    def train_epochs(self, n_epochs):
        """Train every non-diverged network for n_epochs more epochs, ignoring the stop rule (benchmarks)."""
        for _ in range(n_epochs):
            active = np.flatnonzero(~self.diverged)
            if active.size == 0:
                return
            loss, _, _, div = self._epoch(active, check=False)
            self.train_loss[active] = loss[active]
            self.diverged[active] |= div[active]

    def fit(self, max_epochs=2000, progress=None):
        """Train until every network has stopped (converged, diverged or hit max_epochs); returns the results.

        ``progress(epoch, n_active, n_networks)`` is called after every epoch.  While a network trains, its
        check stops at the first misclassified sample (nothing more is needed to know it goes on), so
        ``train_error`` is NaN and ``train_loss`` the epoch's mean minibatch loss; once it has stopped, both are
        exact values over its whole training subset.
        """
        _check_positive("--max-epochs", max_epochs)
        for epoch in range(int(max_epochs)):
            active = np.flatnonzero(~self.stopped)
            if active.size == 0:
                break
            last = self.epochs + 1 >= max_epochs                 # (M,) exact error and loss wanted
            loss, err, seen, div = self._epoch(active, check=True, full=last)
            whole = seen[active] == self.n_train[active]
            self.train_loss[active] = loss[active]
            self.train_error[active] = np.where(whole, err[active] / self.n_train[active], np.nan)
            self.diverged[active] = div[active]
            self.train_error[active[div[active]]] = np.nan
            self.converged[active] = ~div[active] & (err[active] == 0)
            self.stopped[active] = self.converged[active] | self.diverged[active]
            self.stopped |= self.epochs >= max_epochs
            if progress is not None:
                progress(epoch + 1, int((~self.stopped).sum()), self.M)
        return self.results()

    def results(self):
        """One NetworkResult per network, in input order."""
        return [NetworkResult(index=m, lr=float(self.lrs[m]), seed=int(self.seeds[m]),
                              n_train=int(self.n_train[m]), epochs=int(self.epochs[m]),
                              converged=bool(self.converged[m]), diverged=bool(self.diverged[m]),
                              train_loss=float(self.train_loss[m]), train_error=float(self.train_error[m]))
                for m in range(self.M)]

    # ----------------------------------------------------------------------------------------- evaluation
    def _padded(self, x):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.D:
            raise ValueError(f"need inputs of shape (n, {self.D}); got {x.shape}")
        X = np.zeros((x.shape[0], self.Dp), self.dtype)
        X[:, :self.D] = x
        return X

    def evaluate(self, x, y):
        """Error counts (M,) and summed losses (M,) of every network on x (n, D), y (n,)."""
        X = self._padded(x)
        err = np.zeros(self.M, np.int64)
        loss = np.zeros(self.M)
        idx = np.arange(len(X), dtype=np.int64)
        with cpu.slp_vectorize():
            cpu.evaluate(X, np.ascontiguousarray(y, dtype=np.int8), idx, *self._weights(), self._act, self._z,
                         self._rows, self._ident, err, loss)
        return err, loss

    def logits(self, x):
        """Logits (M, n, C) of every network on x (n, D)."""
        X = self._padded(x)
        out = np.zeros((self.M, len(X), N_CLASSES), self.dtype)
        with cpu.slp_vectorize():
            cpu.forward(X, np.arange(len(X), dtype=np.int64), *self._weights(), self._act, self._z, self._rows,
                        self._ident, out)
        return out

    def test_metrics(self, chunks):
        """Error rate (M,) and mean loss (M,) over an iterable of (x, y) chunks: test sets of any size are
        streamed, never stored."""
        errors = np.zeros(self.M, np.int64)
        loss = np.zeros(self.M)
        n = 0
        for x, y in chunks:
            err, lsum = self.evaluate(x, y)
            errors += err
            loss += lsum
            n += len(y)
        return errors / max(n, 1), loss / max(n, 1)

    def test_error(self, chunks):
        """Error rate (M,) over an iterable of (x, y) chunks."""
        return self.test_metrics(chunks)[0]

    def task_metrics(self, spec, seed, split, n):
        """Error rate (M,) and mean loss (M,) on n samples of a task's split, generated in chunks on this
        engine's device: the fresh test set of the protocol."""
        return self.test_metrics((x, y) for _, x, y in iter_chunks(spec, seed, split, n))


# ---------------------------------------------------------------------------------------------- backends
def engine_class(backend="cpu"):
    """The engine of a backend, one interface for all: 'cpu' (Numba, this module) or 'gpu' (CuPy).

    Asking for the GPU where CuPy or a device is missing raises UsageError with one line.
    """
    if backend == "cpu":
        return Engine
    if backend == "gpu":
        from . import gpu
        return gpu.engine_class()
    raise UsageError(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r})")


def generate_on(backend, spec, seed, split, start, n):
    """n samples of a task's split, (x (n, D), y (n,)), generated on the backend's device: host NumPy arrays
    for 'cpu', CuPy arrays for 'gpu' (the dataset never crosses the bus)."""
    if backend == "gpu":
        from . import gpu
        return gpu.generate(spec, seed, split, start, n)
    engine_class(backend)
    return generate(spec, seed, split, start, n)
