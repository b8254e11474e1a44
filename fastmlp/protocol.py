"""The paper's protocol for one (task, N, L): K-fold cross-validation + Bayesian optimization of the learning
rate, then repeated training on all N samples at the selected rate, then test error on fresh samples.

Batching: every candidate learning rate asked for in one Bayesian-optimization batch (q of them) is scored by K
fold networks, and all q x K networks train in **one** engine call; the final repeats are a second engine call.

Seeds (all derived from the run's data seed ``seed``, so one seed names one whole record):
  training set       samples 0..N-1 of the "train" split of ``seed`` (the set `fastmlp train` uses)
  test set           the first n_test samples of the "test" split of ``seed``, streamed in chunks
  folds              Philox stream STREAM_FOLD keyed by ``seed`` (see `fold_assignment`)
  fold network k     network seed 4096 * seed + k for every candidate: candidates differ only by their learning
                     rate (common random numbers make the optimizer's comparisons less noisy)
  final repeat r     network seed 4096 * seed + 2048 + r
  optimizer          scikit-optimize's random state ``seed``
"""
import math
import time
import warnings

import numpy as np

from .constants import STREAM_FOLD
from .engine import check_training
from .reference import DEFAULT_INIT, check_init
from .rng import philox4x32_np
from .errors import UsageError
from .preflight import check_dtype_values, check_memory, check_sample_counts, engine_bytes

FOLD_SEED_OFFSET = 0
REPEAT_SEED_OFFSET = 2048
SEEDS_PER_RUN = 4096
# The one rule for a diverged network (its training loss became non-finite) in every record, `run`'s and `train`'s:
# its validation error (a fold of the search) and its test error (a final repeat of `run`, a network of `train`)
# are DIVERGED_ERROR, chance level on these balanced tasks (the paper counts a diverging run as error 0.5), and its
# test loss is null.  Means and counts include it.  (`ntk` has no divergence: a kernel that is not finite is
# refused.)
DIVERGED_ERROR = 0.5
# The search never ends at a bound (`lr_widen="on"`): when the best learning rate lies within WIDEN_EDGE decades of an
# end of the range, that end moves out by a decade (never past LR_LIMITS) and one more batch is scored there.
WIDEN_EDGE = 0.1
LR_LIMITS = (1e-5, 100.0)
WIDENS = ("on", "off")
EPOCH_PROGRESS_S = 30.0   # inside one engine call, a progress line at most this often


# --------------------------------------------------------------------------------------------------- folds
def fold_assignment(n, n_folds, seed):
    """Fold index (n,) in [0, n_folds) of each of n samples: disjoint, covering, sizes differing by at most one.

    Samples are ranked by one Philox word each (stream STREAM_FOLD, key (seed, STREAM_FOLD), counter (i // 4, 0,
    0, 0), word i % 4); the sample of rank j goes to fold j % n_folds.
    """
    if not 1 <= n_folds <= n:
        raise UsageError(f"--folds must lie in [1, N] (got {n_folds} folds for N = {n})")
    ctr = np.zeros((-(-n // 4), 4), np.uint32)
    ctr[:, 0] = np.arange(ctr.shape[0])
    words = philox4x32_np(ctr, np.array([seed, STREAM_FOLD], np.uint32)).reshape(-1)[:n]   # (n,)
    order = np.argsort(words, kind="stable")
    fold = np.empty(n, np.int64)
    fold[order] = np.arange(n) % n_folds
    return fold


def fold_indices(n, n_folds, seed):
    """The validation indices of each fold: a list of n_folds sorted index arrays."""
    fold = fold_assignment(n, n_folds, seed)
    return [np.flatnonzero(fold == k) for k in range(n_folds)]


# ----------------------------------------------------------------------------------------------- optimizer
class Search:
    """The interface the protocol needs from an optimizer of one real variable (here log10 of the learning
    rate): ``ask(n)`` proposes n points, ``tell(points, values)`` reports their objective values (to minimize).
    Any surrogate that keeps it can replace the Gaussian process below without touching the protocol."""

    def ask(self, n):
        raise NotImplementedError

    def tell(self, points, values):
        raise NotImplementedError


class GaussianProcessSearch(Search):
    """Bayesian optimization with scikit-optimize, behind `Search`.

    The first ``n_initial`` points are the centres of n_initial equal strata of [low, high], so the whole range
    is seen once whatever the seed; after that a Gaussian process (Matern 5/2, length scale at least a tenth of
    the range, a fixed small noise term) proposes points by GP-Hedge, in batches by the constant-liar strategy.
    Left to fit their own noise level, scikit-optimize's default GPs explained four or so scattered error rates
    as pure noise and went flat; the bounds keep the surrogate informative from the first batch on.
    """

    def __init__(self, low, high, n_initial, seed):
        from skopt import Optimizer
        from skopt.learning import GaussianProcessRegressor
        from skopt.learning.gaussian_process.kernels import ConstantKernel, Matern
        from skopt.space import Real
        kernel = ConstantKernel(1.0, (0.01, 1000.0)) * Matern(length_scale=1.0, length_scale_bounds=(0.1, 10.0),
                                                               nu=2.5)
        gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, noise=1e-2, n_restarts_optimizer=2,
                                      random_state=int(seed))
        self._initial = list(low + (high - low) * (np.arange(n_initial) + 0.5) / n_initial)
        self._opt = Optimizer([Real(low, high)], base_estimator=gp, n_initial_points=max(n_initial, 1),
                              acq_func="gp_hedge", random_state=int(seed))

    def ask(self, n):
        points, self._initial = self._initial[:n], self._initial[n:]
        if len(points) < n:
            more = n - len(points)
            with warnings.catch_warnings():
                # scikit-optimize warns when its proposal repeats an evaluated point (often a bound of the range)
                # and replaces it by a random one: expected here, and noise in a sweep's log.
                warnings.filterwarnings("ignore", message="The objective has been evaluated at point")
                asked = self._opt.ask(n_points=more, strategy="cl_min") if more > 1 else [self._opt.ask()]
            points += [float(p[0]) for p in asked]
        return [float(p) for p in points]

    def tell(self, points, values):
        self._opt.tell([[p] for p in points], [float(v) for v in values])


# ------------------------------------------------------------------------------------------------ training
def epoch_reporter(say, phase, max_epochs):
    """An engine.fit per-epoch callback that tells ``say(text)`` the epoch and how many networks still train, at most
    every EPOCH_PROGRESS_S seconds (None when there is no ``say``)."""
    if say is None:
        return None
    last = time.perf_counter()

    def report(epoch, n_active, n_networks):
        nonlocal last
        now = time.perf_counter()
        if n_active and now - last >= EPOCH_PROGRESS_S:
            last = now
            say(f"{phase}: epoch {epoch} of at most {max_epochs}, {n_active} of {n_networks} networks still training")
    return report


class Trainer:
    """Trains lists of networks on the run's training set: all of them in one engine call (``per_call=None``),
    or ``per_call`` at a time (``per_call=1`` is the network-by-network baseline of the benchmark).

    Counts what it trained, so that a record can report throughput.  ``progress(text)``, if given, hears from a
    long engine call at most every EPOCH_PROGRESS_S seconds: its epoch and how many networks still train.
    """

    def __init__(self, engine_class, x, y, H, L, B, max_epochs, seed_base=0, per_call=None, progress=None,
                 **engine_kw):
        self.engine_class, self.x, self.y, self.seed_base = engine_class, x, y, seed_base
        self.H, self.L, self.B, self.max_epochs = H, L, B, max_epochs
        self.per_call, self.progress, self.engine_kw = per_call, progress, engine_kw
        self.engine_calls = 0
        self.network_samples = 0
        self.train_s = 0.0

    def compile(self):
        """Compile the kernels once, on a one-network engine; returns seconds."""
        return self.engine_class(self.x, self.y, self.H, self.L, self.B, [1.0], [0], **self.engine_kw).compile()

    def _epoch_progress(self, phase):
        """engine.fit's per-epoch callback for phase (None without a progress receiver), throttled."""
        return epoch_reporter(self.progress, phase, self.max_epochs)

    def fit(self, lrs, seeds, subsets=None, phase="training"):
        """Train networks (lrs[i], seeds[i]) on training subsets (all samples when None) to their stop; returns
        the engines, each with the slice of networks it trained: [(engine, start)].  ``phase`` names the work in
        progress lines."""
        M = len(lrs)
        step = M if self.per_call is None else self.per_call
        out = []
        for start in range(0, M, step):
            sl = slice(start, start + step)
            engine = self.engine_class(self.x, self.y, self.H, self.L, self.B, lrs[sl], seeds[sl],
                                       subsets=None if subsets is None else subsets[sl], **self.engine_kw)
            t0 = time.perf_counter()
            engine.fit(self.max_epochs, progress=self._epoch_progress(phase))
            self.train_s += time.perf_counter() - t0
            self.engine_calls += 1
            self.network_samples += int(np.sum(engine.epochs * engine.n_train))
            out.append((engine, start))
        return out


def _take(a, idx):
    """Rows idx (host NumPy indices) of a on its own device."""
    if isinstance(a, np.ndarray):
        return a[idx]
    import cupy
    return a[cupy.asarray(idx)]


def validation_errors(trainer, lrs, fold_idx, phase="search"):
    """Train len(lrs) x K fold networks and score each candidate lr.

    Returns per-candidate lists of per-fold (validation error, epochs, status); a diverged fold network counts as
    DIVERGED_ERROR, a non-converged one with its measured validation error."""
    K, n = len(fold_idx), len(trainer.y)
    train_idx = [np.setdiff1d(np.arange(n), v) for v in fold_idx]
    cand_lrs = np.repeat(np.asarray(lrs, np.float64), K)                            # (q K,) candidate-major
    seeds = np.tile(np.arange(K) + FOLD_SEED_OFFSET, len(lrs)) + trainer.seed_base  # (q K,)
    subsets = train_idx * len(lrs)
    folds_of = np.tile(np.arange(K), len(lrs))
    val_err = np.empty(len(cand_lrs))
    epochs = np.empty(len(cand_lrs), np.int64)
    status = [None] * len(cand_lrs)
    for engine, start in trainer.fit(cand_lrs, seeds, subsets, phase):
        for k in np.unique(folds_of[start:start + engine.M]):     # the folds this engine's networks left out
            err, _ = engine.evaluate(_take(trainer.x, fold_idx[k]), _take(trainer.y, fold_idx[k]))
            for i in range(engine.M):
                j = start + i
                if folds_of[j] == k:
                    val_err[j] = err[i] / len(fold_idx[k])
        for i in range(engine.M):
            j = start + i
            epochs[j] = engine.epochs[i]
            status[j] = _status(engine, i)
            if engine.diverged[i]:
                val_err[j] = DIVERGED_ERROR
    return [(val_err[c * K:(c + 1) * K], epochs[c * K:(c + 1) * K], status[c * K:(c + 1) * K])
            for c in range(len(lrs))]


def _status(engine, i):
    return "converged" if engine.converged[i] else "diverged" if engine.diverged[i] else "not_converged"


# -------------------------------------------------------------------------------------------- the search
def widened_end(best, lo, hi, limits=LR_LIMITS):
    """Which end of the search range [lo, hi] (log10 lr) to widen with the best point at log10 lr ``best``: "low",
    "high" or None (the best lies inside, or at an end already at its limit)."""
    if best - lo <= WIDEN_EDGE + 1e-9 and lo > math.log10(limits[0]) + 1e-9:
        return "low"
    if hi - best <= WIDEN_EDGE + 1e-9 and hi < math.log10(limits[1]) - 1e-9:
        return "high"
    return None


def search_lr(trainer, fold_idx, lr_min, lr_max, bo_calls, bo_batch, seed, lr_widen="on", say=None):
    """Cross-validated Bayesian optimization of log10(lr) over [lr_min, lr_max]: ``bo_calls`` candidates in batches
    of ``bo_batch``; then, with ``lr_widen="on"``, while the best lies within WIDEN_EDGE decades of an end, that end
    moves out by a decade (within LR_LIMITS) and ``bo_batch`` more candidates, evenly spaced over the added interval
    and ending at the new end, are scored.  Returns the record's ``search``: {n_initial, history, best, lr_range,
    widened}."""
    say = say or (lambda text: None)
    lo, hi = math.log10(lr_min), math.log10(lr_max)
    lr_range = [lr_min, lr_max]
    n_init = n_initial_points(bo_calls, bo_batch)
    opt = GaussianProcessSearch(lo, hi, n_init, seed)
    history, widened = [], []

    def score(points, batch):
        lrs = [10.0 ** p for p in points]
        scores = validation_errors(trainer, lrs, fold_idx, f"search batch {batch + 1}")
        for p, cand_lr, (err, ep, st) in zip(points, lrs, scores):
            history.append({"eval": len(history), "batch": batch, "lr": cand_lr, "log10_lr": p,
                            "fold_errors": [float(e) for e in err], "mean_error": float(np.mean(err)),
                            "fold_epochs": [int(e) for e in ep], "fold_status": st})
        best = min(history, key=lambda h: h["mean_error"])
        say(f"search: {len(history)}/{bo_calls + bo_batch * len(widened)} learning rates scored, best lr "
            f"{best['lr']:.4g} (validation error {best['mean_error']:.4f})")
        return best

    batch = 0
    for start in range(0, bo_calls, bo_batch):
        points = opt.ask(min(bo_batch, bo_calls - start))
        best = score(points, batch)
        opt.tell(points, [h["mean_error"] for h in history[-len(points):]])
        batch += 1
    while lr_widen == "on" and (end := widened_end(best["log10_lr"], lo, hi)) is not None:
        if end == "low":
            new = max(lo - 1.0, math.log10(LR_LIMITS[0]))
            points = [lo + (new - lo) * (i + 1) / bo_batch for i in range(bo_batch)]
            lo, lr_range[0] = new, 10.0 ** new
        else:
            new = min(hi + 1.0, math.log10(LR_LIMITS[1]))
            points = [hi + (new - hi) * (i + 1) / bo_batch for i in range(bo_batch)]
            hi, lr_range[1] = new, 10.0 ** new
        widened.append({"end": end, "batch": batch, "lr_min": lr_range[0], "lr_max": lr_range[1]})
        say(f"search: the best lr {best['lr']:.4g} lies at the {end} end of the range: widened to "
            f"[{lr_range[0]:.4g}, {lr_range[1]:.4g}]")
        best = score(points, batch)
        batch += 1
    return {"n_initial": n_init, "history": history, "best": best, "lr_range": lr_range, "widened": widened}


# ---------------------------------------------------------------------------------------------- the run
# The keys of a record, as `run` documents them: None marks a leaf, a dict the keys of a sub-record, a list the keys
# of each element of a list.  `check_record` holds a record to it.
RECORD_KEYS = {
    "command": None, "task": None, "selected_lr": None,
    "config": dict.fromkeys(["N", "L", "H", "B", "folds", "bo_calls", "bo_batch", "lr_min", "lr_max", "repeats",
                             "n_test", "seed", "backend", "param", "sigma_w2", "sigma_b2", "init", "init_scale",
                             "loss", "stop", "f0", "target_loss", "max_epochs", "dtype", "lr", "lr_widen"]),
    "search": {"n_initial": None, "lr_range": None, "widened": [dict.fromkeys(["end", "batch", "lr_min", "lr_max"])],
               "history": [dict.fromkeys(["eval", "batch", "lr", "log10_lr", "fold_errors", "mean_error",
                                          "fold_epochs", "fold_status"])],
               "best": dict.fromkeys(["eval", "batch", "lr", "log10_lr", "fold_errors", "mean_error",
                                      "fold_epochs", "fold_status"])},
    "final": {"lr": None, "converged": None, "diverged": None, "not_converged": None,
              "test_error": dict.fromkeys(["mean", "std", "values"]),
              "repeats": [dict.fromkeys(["index", "lr", "seed", "n_train", "epochs", "converged", "diverged",
                                         "stopped_by", "status", "train_loss", "train_error", "test_error",
                                         "test_loss"])]},
    "timing": dict.fromkeys(["data_s", "compile_s", "search_s", "final_s", "test_s", "wall_s"]),
    "throughput": dict.fromkeys(["engine_calls", "train_network_samples", "network_samples_per_s", "gflops"]),
    "provenance": None,
}


def check_record(rec, keys=RECORD_KEYS, where="record"):
    """Raise ValueError naming the first place where rec's keys differ from RECORD_KEYS (search may be None)."""
    if not isinstance(rec, dict) or set(rec) != set(keys):
        got = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
        raise ValueError(f"{where}: keys {got}, documented {sorted(keys)}")
    for k, sub in keys.items():
        if isinstance(sub, dict) and rec[k] is not None:
            check_record(rec[k], sub, f"{where}.{k}")
        elif isinstance(sub, list):
            for i, item in enumerate(rec[k]):
                check_record(item, sub[0], f"{where}.{k}[{i}]")


def check_config(N, folds, bo_calls, bo_batch, lr_min, lr_max, repeats, n_test, lr=None, H=1, L=1, B=1,
                 max_epochs=1, seed=0, init=DEFAULT_INIT, init_scale=1.0, dtype="float32", param="standard",
                 sigma_w2=2.0, sigma_b2=0.0, loss="xent", stop="zero-error", target_loss=None, lr_widen="on",
                 f0="keep"):
    """UsageError (one line, what to change) for settings the protocol cannot run."""
    if lr_widen not in WIDENS:
        raise UsageError(f"--lr-widen must be one of {', '.join(WIDENS)} (got {lr_widen!r})")
    check_init(init, init_scale)
    check_training(loss, stop, target_loss, f0)
    for name, value in (("--N", N), ("--H", H), ("--L", L), ("--B", B), ("--max-epochs", max_epochs)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1 (got {value})")
    check_sample_counts(N, n_test)
    check_dtype_values(dtype, param, [lr] if lr is not None else [("--lr-min", lr_min), ("--lr-max", lr_max)],
                       init_scale, sigma_w2, sigma_b2)
    if not 0 <= seed < 2**32 // SEEDS_PER_RUN:
        raise UsageError(f"--seed must lie in [0, {2**32 // SEEDS_PER_RUN}) (got {seed})")
    if lr is None:
        if not 2 <= folds <= N:
            raise UsageError(f"--folds must lie in [2, N] = [2, {N}] (got {folds})")
        if folds > REPEAT_SEED_OFFSET:
            raise UsageError(f"--folds must be at most {REPEAT_SEED_OFFSET} (got {folds})")
        if bo_calls < 1:
            raise UsageError(f"--bo-calls must be at least 1 (got {bo_calls})")
        if bo_batch < 1:
            raise UsageError(f"--bo-batch must be at least 1 (got {bo_batch})")
        if not (0 < lr_min < lr_max and math.isfinite(lr_max)):
            raise UsageError(f"need 0 < --lr-min < --lr-max (got {lr_min:g} and {lr_max:g})")
    elif not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr must be positive and finite (got {lr:g})")
    if not 1 <= repeats <= SEEDS_PER_RUN - REPEAT_SEED_OFFSET:
        raise UsageError(f"--repeats must lie in [1, {SEEDS_PER_RUN - REPEAT_SEED_OFFSET}] (got {repeats})")
    if n_test < 1:
        raise UsageError(f"--n-test must be at least 1 (got {n_test})")


def memory_bytes(D, N, H, L, folds, bo_batch, repeats, lr=None, dtype="float32"):
    """Bytes the largest engine call of a run allocates (fastmlp.preflight.engine_bytes): the bo_batch x folds
    networks of a search batch (each on all folds but one) or the final repeats, whichever is larger."""
    M = repeats if lr is not None else max(repeats, bo_batch * folds)
    return engine_bytes(M, N, D, H, L, np.dtype(dtype).itemsize)


def check_size(D, N, H, L, folds, bo_batch, repeats, lr=None, dtype="float32", xp=np):
    """UsageError (the estimate-and-refuse rule of fastmlp.preflight) unless a run's largest engine call fits."""
    check_memory(memory_bytes(D, N, H, L, folds, bo_batch, repeats, lr, dtype),
                 f"the networks of one engine call (D = {D}, H = {H}, L = {L}, N = {N})", xp,
                 fix="lower --N, --H or --L, or --bo-batch, --folds or --repeats")


def n_initial_points(bo_calls, bo_batch):
    """Random points before the surrogate takes over: half the budget (scikit-optimize's gp_minimize uses 10 of
    its default 100), at least one batch."""
    return min(bo_calls, max(bo_batch, bo_calls // 2))


def run(spec, N, L, H=100, B=50, folds=10, bo_calls=20, bo_batch=4, lr_min=1e-4, lr_max=10.0, repeats=10,
        n_test=10000, seed=0, backend="cpu", param="standard", sigma_w2=2.0, sigma_b2=0.0, init=DEFAULT_INIT,
        init_scale=1.0, loss="xent", stop="zero-error", target_loss=None, max_epochs=2000, dtype="float32", lr=None,
        lr_widen="on", f0="keep", per_call=None, progress=None):
    """The whole protocol for one (task, N, L); returns the record (a JSON-ready dict).

    ``lr`` given: no search, only the final repeats at that rate.  ``lr_widen``: "on" widens the search range a decade
    at a time while the best rate lies at an end of it (`search_lr`), "off" keeps it (the first releases' search).
    ``f0``: "keep" or "subtract" (fastmlp.engine.F0S: every network trains and is scored as f - f0).
    ``per_call``: networks per engine call (None: all of a batch at once; 1: network by network, for the benchmark).
    ``progress(text)`` receives one line per phase and per optimizer batch.

    Record keys:
      command "run"; task (the task spec and its name); config (every setting above that changes results)
      selected_lr                   the learning rate of the final repeats
      search                        null with --lr, else: {n_initial, history, best, lr_range, widened}; history has
                                    one entry per evaluated lr, in evaluation order: {eval, batch, lr, log10_lr,
                                    fold_errors, mean_error, fold_epochs, fold_status}; best is the entry with the
                                    lowest mean_error (the first such, if tied); lr_range is the range the search
                                    ended with; widened one entry per widening: {end ("low" or "high"), batch (the
                                    batch that scored the added interval), lr_min, lr_max (the range after it)}
      final                         {lr, repeats: [network record + test_error, test_loss], test_error: {mean, std,
                                    values}, converged, diverged, not_converged}; a diverged repeat's test error
                                    is DIVERGED_ERROR, like a diverged fold
      timing                        {data_s, compile_s, search_s, final_s, test_s, wall_s}
      throughput                    {engine_calls, train_network_samples, network_samples_per_s, gflops}
      provenance                    versions, git commit, backend, device, threads, argv
    """
    from .backend import array_module, engine_class, generate_on
    from .reference import useful_flops_per_sample
    from .provenance import record

    check_config(N, folds, bo_calls, bo_batch, lr_min, lr_max, repeats, n_test, lr, H, L, B, max_epochs, seed,
                 init, init_scale, dtype, param, sigma_w2, sigma_b2, loss, stop, target_loss, lr_widen, f0)
    say = progress or (lambda text: None)
    t0 = time.perf_counter()
    cls = engine_class(backend)
    check_size(spec.D, N, H, L, folds, bo_batch, repeats, lr, dtype, array_module(backend))
    x, y = generate_on(backend, spec, seed, "train", 0, N)
    trainer = Trainer(cls, x, y, H, L, B, max_epochs, seed_base=(SEEDS_PER_RUN * int(seed)) % 2**32,
                      per_call=per_call, progress=progress, param=param, dtype=np.dtype(dtype), sigma_w2=sigma_w2,
                      sigma_b2=sigma_b2, init=init, init_scale=init_scale, loss=loss, stop=stop,
                      target_loss=target_loss, f0=f0)
    t_data = time.perf_counter()
    say("compiling kernels (cached on disk after the first run)")
    compile_s = trainer.compile()
    t_ready = time.perf_counter()

    search = None
    if lr is None:
        search = search_lr(trainer, fold_indices(N, folds, seed), lr_min, lr_max, bo_calls, bo_batch, seed, lr_widen,
                           say)
        lr = search["best"]["lr"]
    t_search = time.perf_counter()

    say(f"final: {repeats} repeats at lr {lr:.4g}")
    seeds = trainer.seed_base + REPEAT_SEED_OFFSET + np.arange(repeats)
    finals = trainer.fit(np.full(repeats, lr), seeds, phase="final")
    t_final = time.perf_counter()
    nets = []
    for engine, start in finals:
        err, test_loss = engine.task_metrics(spec, seed, "test", n_test)
        for i, r in enumerate(engine.results()):
            d = r.to_dict() | {"index": start + i, "status": _status(engine, i)}
            d["test_error"] = DIVERGED_ERROR if r.diverged else float(err[i])
            d["test_loss"] = None if r.diverged else float(test_loss[i])
            nets.append(d)
    t_test = time.perf_counter()

    test_err = np.array([n["test_error"] for n in nets])
    counts = {s: sum(n["status"] == s for n in nets) for s in ("converged", "diverged", "not_converged")}
    train_s = trainer.train_s
    flops = trainer.network_samples * useful_flops_per_sample(spec.D, H, L)
    return {
        "command": "run",
        "task": spec.to_dict() | {"name": spec.name},
        "config": {"N": N, "L": L, "H": H, "B": B, "folds": folds, "bo_calls": bo_calls, "bo_batch": bo_batch,
                   "lr_min": lr_min, "lr_max": lr_max, "repeats": repeats, "n_test": n_test, "seed": seed,
                   "backend": backend, "param": param, "sigma_w2": sigma_w2, "sigma_b2": sigma_b2, "init": init,
                   "init_scale": init_scale, "loss": loss, "stop": stop, "target_loss": target_loss, "f0": f0,
                   "max_epochs": max_epochs, "dtype": dtype, "lr": None if search else lr,
                   "lr_widen": lr_widen if search else None},
        "selected_lr": lr,
        "search": search,
        "final": {"lr": lr, "repeats": nets,
                  "test_error": {"mean": float(test_err.mean()),
                                 "std": float(test_err.std(ddof=1)) if repeats > 1 else None,
                                 "values": test_err.tolist()},
                  **counts},
        "timing": {"data_s": t_data - t0, "compile_s": compile_s, "search_s": t_search - t_ready,
                   "final_s": t_final - t_search, "test_s": t_test - t_final, "wall_s": t_test - t0},
        "throughput": {"engine_calls": trainer.engine_calls, "train_network_samples": trainer.network_samples,
                       "network_samples_per_s": trainer.network_samples / train_s if train_s > 0 else None,
                       "gflops": flops / train_s / 1e9 if train_s > 0 else None},
        "provenance": record(backend) | {"threads": int(getattr(finals[0][0], "threads", 1))},
    }
