"""The CPU engine: M networks trained at once by the Numba kernels of `fastmlp.cpu`, one thread per network,
under the contract of `fastmlp.engine` (its stop rule, records and checks)."""
import time

import numba
import numpy as np

from . import cpu, jitcache, reference
from .constants import N_CLASSES
from .engine import EngineBase, check_engine_args, check_positive
from .tasks import iter_chunks


class Engine(EngineBase):
    """Train M = len(lrs) networks on one dataset x (N, D), y (N,) in {0, 1}.

    ``subsets``: None (every network trains on all N samples) or M index arrays into x (CV folds use this).
    ``init``, ``init_scale``: the initialization scheme and its scale (see reference.init_params).
    ``loss``: one of constants.LOSSES; ``stop``, ``target_loss``: the stop rule (see fastmlp.engine).
    ``wide``: the input-gradient path of the hidden layers (fastmlp.cpu): None chooses by width (cpu.WIDE_H); the
    two give the same numbers, bit for bit.
    ``f0``: "keep" (the network's function is its output) or "subtract" (its output less its initial output, see
    fastmlp.engine.F0S).
    """

    def __init__(self, x, y, hidden_width, depth, batch_size, lrs, seeds, subsets=None, param="standard",
                 dtype=np.float32, sigma_w2=2.0, sigma_b2=0.0, threads=None, init=reference.DEFAULT_INIT,
                 init_scale=1.0, loss="xent", stop="zero-error", target_loss=None, wide=None, f0="keep"):
        x = np.asarray(x)
        y = np.asarray(y)
        lrs, seeds, self.dtype, subsets = check_engine_args(x.shape, y.shape, hidden_width, depth, batch_size, lrs,
                                                            seeds, subsets, param, dtype, sigma_w2, sigma_b2,
                                                            init, init_scale, loss, stop, target_loss, f0)
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
        self.wide = bool(self.Hp >= cpu.WIDE_H if wide is None else wide)
        self._X = np.zeros((N, self.Dp), self.dtype)
        self._X[:, :D] = x
        self._Y = np.ascontiguousarray(y, dtype=np.int8)
        c, s = reference.layer_scales(D, H, L, param, sigma_w2, sigma_b2)
        self._c, self._s = c.astype(self.dtype), s.astype(self.dtype)
        self._lrs = lrs.astype(self.dtype)
        self._pack(reference.init_params(D, H, L, seeds, param, init=init, init_scale=init_scale))

        T, Hp, Bp = self.threads, self.Hp, self.Bp
        Bt = cpu.dinp_columns(Bp)                              # columns of the transposed arrays (dinp's tiles)
        Ht = Hp if self.wide else 0                            # the transposed arrays: the wide path's alone
        Dt = self.Dp if self.wide and cpu.AT_WIDE else 0
        self._act = np.zeros((T, L, Bp, Hp), self.dtype)       # hidden activations of the current minibatch
        self._actT = np.zeros((T, L, Ht, Bt), self.dtype)      # the same, transposed (dinp's masks, dweight's operands)
        self._xT = np.zeros((T, Dt, Bt), self.dtype)           # the minibatch, transposed (the first dweight's)
        self._dz = np.zeros((T, 2, Bt, Hp), self.dtype)        # gradients w.r.t. pre-activations (ping-pong)
        self._dzT = np.zeros((T, 2, Ht * Bt), self.dtype)      # the same, transposed, flat tile by tile (to_tiles)
        self._z = np.zeros((T, Bp, N_CLASSES), self.dtype)     # logits, then their gradients
        # Row indexes are unsigned (cpu.ROW_INDEX): a signed index costs every kernel's inner loop Numba's
        # wraparound test for negative indexes
        self._rows = np.zeros((T, Bp), cpu.ROW_INDEX)          # dataset rows of the current minibatch
        self._perm = np.zeros((T, int(self.n_train.max())), np.int64)
        self._ident = np.arange(Bp, dtype=cpu.ROW_INDEX)       # rows of an activation buffer, in order
        self._pb = cpu.split_panels(Hp, T)                     # each thread's panels, when a network is split
        self._kb = cpu.split_even(Hp // cpu.PAD, T)            # and its 8-row tiles of dinp

        self._init_training(loss, stop, target_loss)
        # f0 = "subtract": the initial weights, kept, and the initial logits on the training set, subtracted from the
        # logits of every step and check (and, through _offsets, of every evaluation on other inputs)
        self.f0 = f0
        self._none = np.zeros((M, 0, N_CLASSES), self.dtype)
        self._initial = tuple(a.copy() for a in self._weights()) if f0 == "subtract" else None
        self._F0 = self._offsets(self._X)

    # ------------------------------------------------------------------------------------------ parameters
    def _pack(self, params):
        """Parameters in the reference layout -> the kernels' padded, packed arrays (fastmlp.cpu)."""
        M, D, H, L, Dp, Hp, dt = self.M, self.D, self.H, self.L, self.Dp, self.Hp, self.dtype
        W0 = np.zeros((M, Dp, Hp), dt)                          # (M, Dp, Hp) before packing
        Wh = np.zeros((M, L - 1, Hp, Hp), dt)                   # (M, L-1, Hp, Hp)
        self._b0 = np.zeros((M, Hp), dt)
        self._bh = np.zeros((M, L - 1, Hp), dt)
        self._Wo = np.zeros((M, N_CLASSES, Hp), dt)
        self._bo = np.zeros((M, N_CLASSES), dt)
        W0[:, :D, :H], self._b0[:, :H] = params[0]
        for l in range(1, L):
            Wh[:, l - 1, :H, :H], self._bh[:, l - 1, :H] = params[l]
        self._W0 = cpu.pack(W0)                                  # (M, Dp*Hp)
        self._Wh = cpu.pack(Wh)                                  # (M, L-1, Hp*Hp)
        # the transposed copy of a narrow network's hidden weights, (M, L-1, Hp*Hp) packed (none when wide)
        self._WhT = np.zeros((M, L - 1, 0), dt) if self.wide else cpu.pack(np.ascontiguousarray(
            Wh.transpose(0, 1, 3, 2)))
        self._Wo[:, :, :H] = params[L][0].transpose(0, 2, 1)
        self._bo[:] = params[L][1]

    def set_params(self, params):
        """Replace every network's parameters (reference layout: [(W (M, fan_in, fan_out), b (M, fan_out))]).  With
        f0 = "subtract" the initial function subtracted stays the one of the engine's own initialization."""
        self._pack(params)

    def params(self):
        """Every network's parameters in the reference layout, as float64 copies."""
        D, H, L, Dp, Hp = self.D, self.H, self.L, self.Dp, self.Hp
        W0, Wh = cpu.unpack(self._W0, Dp, Hp), cpu.unpack(self._Wh, Hp, Hp)
        out = [(W0[:, :D, :H], self._b0[:, :H])]
        out += [(Wh[:, l - 1, :H, :H], self._bh[:, l - 1, :H]) for l in range(1, L)]
        out.append((self._Wo[:, :, :H].transpose(0, 2, 1), self._bo))
        return [(W.astype(np.float64), b.astype(np.float64)) for W, b in out]

    def _weights(self):
        return (self._W0, self._b0, self._Wh, self._WhT, self._bh, self._Wo, self._bo, self._c, self._s)

    # ------------------------------------------------------------------------------------------- training
    def compile(self):
        """Compile (or load from Numba's on-disk cache) the kernels for this dtype without training anything;
        returns the seconds it took, so that timings of training never include compilation."""
        t0 = time.perf_counter()
        with jitcache.first_compile(f"engine-{cpu.FAMILY.name}-{self.dtype.name}"):
            self._epoch(np.empty(0, np.int64), check=True, full=np.zeros(self.M, bool))
            self.evaluate(np.zeros((0, self.D), self.dtype), np.zeros(0, np.int8))
        return time.perf_counter() - t0

    def _epoch(self, active, check, full=None):
        """One epoch of the networks in active.  Threads take whole networks; the networks left over when fewer
        remain than threads (all of them, when there are fewer networks than threads) then train one at a time,
        each with every thread (cpu.train_epoch_split): the same numbers, bit for bit, either way."""
        loss = np.full(self.M, np.nan)
        err = np.zeros(self.M, np.int64)
        seen = np.zeros(self.M, np.int64)
        div = np.zeros(self.M, bool)
        full = np.ones(self.M, bool) if full is None else full
        n_spread = len(active) - len(active) % self.threads
        spread, split = active[:n_spread], active[n_spread:]
        common = (self._X, self._Y, self._subsets, self._sub_off)
        buffers = (self.seeds, self.epochs, self.B, self.loss_kind, self.wide, check, full, self._act, self._actT,
                   self._xT, self._dz, self._dzT, self._z, self._rows, self._perm, self._ident, self._F0)
        outputs = (loss, err, seen, div)
        with cpu.slp_vectorize():
            if spread.size or not active.size:   # an empty call compiles (see compile)
                cpu.train_epoch(*common, spread, *self._weights(), self._lrs, *buffers, *outputs)
            if split.size or not active.size:
                cpu.train_epoch_split(*common, split, *self._weights(), self._lrs, *buffers, self._pb, self._kb,
                                      *outputs)
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

        ``progress(epoch, n_active, n_networks)`` is called after every epoch.  Under the zero-error rule a
        training network's check stops at the first misclassified sample (nothing more is needed to know it goes
        on), so ``train_error`` is NaN and ``train_loss`` the epoch's mean minibatch loss; once it has stopped, both
        are exact values over its whole training subset.  Under the loss rule every check scans the whole subset.
        """
        check_positive("--max-epochs", max_epochs)
        by_loss = self.stop == "loss"
        for epoch in range(int(max_epochs)):
            active = np.flatnonzero(~self.stopped)
            if active.size == 0:
                break
            full = (self.epochs + 1 >= max_epochs) | by_loss      # (M,) exact error and loss wanted
            loss, err, seen, div = self._epoch(active, check=True, full=full)
            # exact values when the check scanned the whole subset and the network stops or must report them; a
            # scan that reached the end past an error is not reported (the GPU, scanning everything, agrees)
            whole = (seen[active] == self.n_train[active]) & ((err[active] == 0) | full[active])
            self.train_loss[active] = loss[active]
            self.train_error[active] = np.where(whole, err[active] / self.n_train[active], np.nan)
            self.diverged[active] = div[active]
            self.train_error[active[div[active]]] = np.nan
            reached = whole & (loss[active] <= self.target_loss) if by_loss else err[active] == 0
            self.converged[active] = ~div[active] & reached
            self.stopped[active] = self.converged[active] | self.diverged[active]
            self.stopped |= self.epochs >= max_epochs
            if progress is not None:
                progress(epoch + 1, int((~self.stopped).sum()), self.M)
        return self.results()

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
        F0 = self._offsets(X)
        with cpu.slp_vectorize():
            cpu.evaluate(X, np.ascontiguousarray(y, dtype=np.int8), idx, *self._weights(), self.loss_kind,
                         self._act, self._z, self._rows, self._ident, F0, err, loss)
        return err, loss

    def _forward(self, X, weights, F0):
        """Logits (M, n, C) of the networks with these weights on the padded inputs X, less F0."""
        out = np.zeros((self.M, len(X), N_CLASSES), self.dtype)
        with cpu.slp_vectorize():
            cpu.forward(X, np.arange(len(X), dtype=np.int64), *weights, self._act, self._z, self._rows,
                        self._ident, F0, out)
        return out

    def _offsets(self, X):
        """What every logit on the padded inputs X (n, Dp) is less: the initial logits (M, n, C) with f0 =
        "subtract", nothing ((M, 0, C)) with "keep"."""
        return self._none if self._initial is None else self._forward(X, self._initial, self._none)

    def logits(self, x):
        """Logits (M, n, C) of every network on x (n, D) (less its initial ones with f0 = "subtract")."""
        X = self._padded(x)
        return self._forward(X, self._weights(), self._offsets(X))

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

    def task_metrics(self, spec, seed, split, n):
        """Error rate (M,) and mean loss (M,) on n samples of a task's split, generated in chunks on this
        engine's device: the fresh test set of the protocol."""
        return self.test_metrics((x, y) for _, x, y in iter_chunks(spec, seed, split, n))
