"""The engine contract: what every backend's engine is and shares, below the engines themselves.

An engine trains M networks of one architecture at once on one dataset, each with its own learning rate, seed
(initialization and minibatch order), training subset, epoch count and stop state, and reports one
`NetworkResult` per network.  The CPU engine (`fastmlp.cpu_engine.Engine`) and the GPU engine
(`fastmlp.gpu.GpuEngine`) both build on this module and on nothing of each other; `fastmlp.backend` names them.

Stop rule (docs/science.md): at the end of every epoch each network is evaluated on its whole training subset;
training error exactly zero stops it as converged (or, with stop = "loss", a mean training loss at most the target
loss), a non-finite loss stops it as diverged, the epoch cap stops it as not converged.  Stopped networks leave
the active set and cost nothing more.  The loss is one of constants.LOSSES (reference.output_loss).

Every engine has: ``fit(max_epochs, progress)``, ``train_epochs(n)``, ``compile()``, ``params()``,
``set_params(params)``, ``evaluate(x, y)``, ``logits(x)``, ``test_metrics(chunks)``, ``task_metrics(spec, seed,
split, n)``, and the host arrays ``epochs``, ``converged``, ``diverged``, ``stopped``, ``train_loss``,
``train_error``, ``n_train``, ``lrs``, ``seeds``.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

from . import reference
from .constants import LOSSES
from .errors import UsageError

# Stop rules: "zero-error" stops a network at the first epoch whose check finds no training error (the paper's);
# "loss" at the first whose mean training loss over the whole subset is at most the target loss.
STOPS = ("zero-error", "loss")
# What a network's function is: "keep", its output f(x) (the paper's); "subtract", its output less its initial output,
# f(x) - f0(x), which is exactly 0 at the start, so that training fits the change of the function alone (the lazy
# limit's setting: gradient flow on f - f0 with the squared loss tends to the NTK predictor as the width grows).  The
# loss, the stop rule, the errors and the logits all see f - f0.
F0S = ("keep", "subtract")


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
    stopped_by: str = None   # "zero-error", "target-loss", "diverged", "max-epochs", or None while training

    def to_dict(self):
        d = asdict(self)
        for key in ("train_loss", "train_error"):   # JSON has no NaN; a diverged network's loss is null
            if not np.isfinite(d[key]):
                d[key] = None
        return d


def check_positive(name, value):
    """UsageError unless value >= 1."""
    if value < 1:
        raise UsageError(f"{name} must be at least 1 (got {value})")


def check_training(loss="xent", stop="zero-error", target_loss=None, f0="keep"):
    """UsageError naming the option for an unknown loss, stop rule or f0, or a target loss that is missing, not
    positive and finite, or given to the zero-error rule."""
    if f0 not in F0S:
        raise UsageError(f"--f0 must be one of {', '.join(F0S)} (got {f0!r})")
    if loss not in LOSSES:
        raise UsageError(f"--loss must be one of {', '.join(LOSSES)} (got {loss!r})")
    if stop not in STOPS:
        raise UsageError(f"--stop must be one of {', '.join(STOPS)} (got {stop!r})")
    if stop == "loss":
        if target_loss is None:
            raise UsageError("--stop loss needs --target-loss T (train until the mean training loss is at most T)")
        if not (isinstance(target_loss, (int, float)) and math.isfinite(target_loss) and target_loss > 0):
            raise UsageError(f"--target-loss must be positive and finite (got {target_loss!r})")
    elif target_loss is not None:
        raise UsageError("--target-loss applies to --stop loss only (the zero-error rule stops at zero training "
                         "error)")


def check_engine_args(x_shape, y_shape, hidden_width, depth, batch_size, lrs, seeds, subsets, param, dtype,
                      sigma_w2, sigma_b2, init=reference.DEFAULT_INIT, init_scale=1.0, loss="xent",
                      stop="zero-error", target_loss=None, f0="keep"):
    """Validate an engine's arguments, the same for every backend -> (lrs (M,) float64, seeds (M,) int64,
    dtype, subsets: M int64 index arrays)."""
    if len(x_shape) != 2 or tuple(y_shape) != (x_shape[0],):
        raise ValueError(f"need x (N, D) and y (N,); got {tuple(x_shape)} and {tuple(y_shape)}")
    lrs = np.atleast_1d(np.asarray(lrs, dtype=np.float64))
    seeds = np.atleast_1d(np.asarray(seeds, dtype=np.int64))
    if lrs.shape != seeds.shape:
        raise ValueError(f"one learning rate per seed: {lrs.shape} vs {seeds.shape}")
    check_positive("--H (hidden width)", hidden_width)
    check_positive("--L (depth)", depth)
    check_positive("--B (batch size)", batch_size)
    check_positive("--N (training samples)", x_shape[0])
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
    check_training(loss, stop, target_loss, f0)
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


class EngineBase:
    """The state and methods every engine shares: the host copy of each network's stop state, its results, and
    rates derived from them.  A subclass calls `_init_training` once it knows M."""

    def _init_training(self, loss, stop, target_loss):
        """The loss, the stop rule and every network's stop state, on the host for every backend: epochs trained,
        converged, diverged, stopped, and its last training loss and error (NaN until known)."""
        self.loss, self.stop, self.target_loss = loss, stop, target_loss
        self.loss_kind = LOSSES.index(loss)   # the loss's code in the kernels
        M = self.M
        self.epochs = np.zeros(M, np.int64)
        self.converged = np.zeros(M, bool)
        self.diverged = np.zeros(M, bool)
        self.train_loss = np.full(M, np.nan)
        self.train_error = np.full(M, np.nan)
        self.stopped = np.zeros(M, bool)

    def stopped_by(self, m):
        """Which rule stopped network m: "zero-error" or "target-loss" (converged by the engine's stop rule),
        "diverged", "max-epochs", or None while it trains."""
        if self.diverged[m]:
            return "diverged"
        if self.converged[m]:
            return "zero-error" if self.stop == "zero-error" else "target-loss"
        return "max-epochs" if self.stopped[m] else None

    def results(self):
        """One NetworkResult per network, in input order."""
        return [NetworkResult(index=m, lr=float(self.lrs[m]), seed=int(self.seeds[m]),
                              n_train=int(self.n_train[m]), epochs=int(self.epochs[m]),
                              converged=bool(self.converged[m]), diverged=bool(self.diverged[m]),
                              train_loss=float(self.train_loss[m]), train_error=float(self.train_error[m]),
                              stopped_by=self.stopped_by(m))
                for m in range(self.M)]

    def test_error(self, chunks):
        """Error rate (M,) over an iterable of (x, y) chunks."""
        return self.test_metrics(chunks)[0]

    def task_outputs(self, spec, seed, split, n):
        """(f (M, n) float64, y (n,) int8): every network's scalar output f = z_1 - z_0 on n samples of a task's
        split (the points of task_metrics), and their labels; generated on the host, in chunks."""
        from .tasks import iter_chunks
        fs, ys = [np.zeros((self.M, 0))], [np.zeros(0, np.int8)]
        for _, x, y in iter_chunks(spec, seed, split, n):
            fs.append(reference.margin(np.asarray(self.logits(x), dtype=np.float64)))
            ys.append(y)
        return np.concatenate(fs, axis=1), np.concatenate(ys)

    def flops_per_epoch(self):
        """Useful FLOP of one epoch of every network (network-samples x reference.useful_flops_per_sample)."""
        return float(self.n_train.sum()) * reference.useful_flops_per_sample(self.D, self.H, self.L)
