"""The readable specification: float64 NumPy forward, backward and SGD for M stacked ReLU MLPs.

Shape legend: M networks, B minibatch, N samples, D input dim, H hidden width, L hidden layers, C = 2 classes.
Parameters are a list of L + 1 layers ``(W (M, fan_in, fan_out), b (M, fan_out))``, the last one the output layer.
Each layer computes ``z = c * (a @ W) + s * b`` with per-layer scales ``(c, s)``:
standard parameterization ``c = s = 1``; NTK parameterization ``c = sigma_w / sqrt(fan_in)``, ``s = sigma_b``.
Every fast backend is tested against this module.
"""
import numpy as np

from .constants import LOSSES, N_CLASSES, STREAM_INIT
from .errors import UsageError
from . import rng

PARAMS = ("standard", "ntk")
INITS = ("he", "lecun", "torch")   # initialization schemes of the standard parameterization (see init_params)
# The default: the paper does not state its initialization; under the protocol, PyTorch's default (torch) gives the
# paper's depth order on 2-local and 2-global where He does not (docs/science.md, "Which default, and the evidence").
DEFAULT_INIT = "torch"


def layer_sizes(D, H, L):
    """[(fan_in, fan_out)] for the L hidden layers and the output layer."""
    return [(D if l == 0 else H, H) for l in range(L)] + [(H, N_CLASSES)]


def useful_flops_per_sample(D, H, L):
    """Useful FLOP per network-sample of the layers above: the forward pass 2DH + 2(L-1)H^2 + 2HC, the weight
    gradients as much again, and the input gradients of every layer but the first 2(L-1)H^2 + 2HC (C = 2):
    4DH + 6(L-1)H^2 + 12H.  Biases, ReLU and the loss are not counted."""
    return 4 * D * H + 6 * (L - 1) * H * H + 12 * H


def layer_scales(D, H, L, param="standard", sigma_w2=2.0, sigma_b2=0.0):
    """Per-layer (c, s) multipliers of ``a @ W`` and ``b``: arrays of shape (L + 1,)."""
    sizes = layer_sizes(D, H, L)
    if param == "standard":
        return np.ones(L + 1), np.ones(L + 1)
    if param == "ntk":
        c = np.array([np.sqrt(sigma_w2 / fan_in) for fan_in, _ in sizes])
        return c, np.full(L + 1, np.sqrt(sigma_b2))
    raise ValueError(f"unknown parameterization {param!r}; use one of {PARAMS}")


def check_init(init, init_scale):
    """UsageError naming the option for an unknown scheme or a scale that is not positive and finite."""
    if init not in INITS:
        raise UsageError(f"--init must be one of {', '.join(INITS)} (got {init!r})")
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float, np.integer, np.floating)) \
            or not (np.isfinite(init_scale) and init_scale > 0):
        raise UsageError(f"--init-scale must be positive and finite (got {init_scale!r})")


def init_draws(D, H, L, param="standard", init=DEFAULT_INIT):
    """What init_params draws for each layer l, as [(W, b)]: each (counter b, uniform, factor), or None for a zero
    bias. A part's values are factor x, x the vector (seed, STREAM_INIT, l, counter b) of standard Gaussians or,
    when uniform, of 2 u - 1 (u uniform in (0, 1)), then times init_scale. The GPU draws the same on the device."""
    draws = []
    for l, (fan_in, fan_out) in enumerate(layer_sizes(D, H, L)):
        if param == "standard" and init == "torch":
            bound = 1.0 / np.sqrt(fan_in)
            draws.append(((2, True, bound), (3, True, bound)))
        elif param == "standard":
            gain = 2.0 if init == "he" and l < L else 1.0   # He's ReLU gain; LeCun and every output layer 1
            draws.append(((0, False, np.sqrt(gain / fan_in)), None))
        else:
            draws.append(((0, False, 1.0), (1, False, 1.0)))
    return draws


def init_params(D, H, L, seeds, param="standard", dtype=np.float64, init=DEFAULT_INIT, init_scale=1.0):
    """Initial weights of len(seeds) networks, a pure function of each seed (stream STREAM_INIT, a = layer).

    Standard parameterization, by ``init`` (every value then multiplied by ``init_scale``):
      he      W ~ N(0, 2 / fan_in) in the ReLU layers, N(0, 1 / fan_in) in the output layer; biases zero
      lecun   W ~ N(0, 1 / fan_in) in every layer; biases zero
      torch   W and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in every layer (PyTorch's nn.Linear default)
    NTK parameterization: W and b ~ N(0, 1) times ``init_scale``; ``init`` is not used.
    Gaussian draws: counter b = 0 for W, b = 1 for the NTK biases; uniform draws (torch): b = 2 for W, 3 for b.
    """
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)

    def draw(n, seed, l, part):
        counter, uniform, factor = part
        if uniform:
            return factor * (2.0 * rng.uniform_np(n, seed, STREAM_INIT, l, counter) - 1.0)
        return rng.gaussian_np(n, seed, STREAM_INIT, l, counter) * factor

    params = []
    for l, ((fan_in, fan_out), (w_part, b_part)) in enumerate(zip(layer_sizes(D, H, L), init_draws(D, H, L, param,
                                                                                                    init))):
        W = np.empty((len(seeds), fan_in, fan_out))   # (M, fan_in, fan_out)
        b = np.zeros((len(seeds), fan_out))           # (M, fan_out)
        for m, seed in enumerate(seeds):
            W[m] = draw(fan_in * fan_out, int(seed), l, w_part).reshape(fan_in, fan_out)
            if b_part is not None:
                b[m] = draw(fan_out, int(seed), l, b_part)
        W *= init_scale   # exact for a scale of 1: he at scale 1 is bit for bit the first release's
        b *= init_scale
        params.append((W.astype(dtype), b.astype(dtype)))
    return params


def forward(params, scales, x):
    """Logits (M, B, C) and the hidden activations [(M, B, H)] * L of inputs x (B, D) or (M, B, D)."""
    c, s = scales
    a = np.asarray(x, dtype=np.float64)
    acts = []
    for l, (W, b) in enumerate(params):
        z = c[l] * (a @ W) + s[l] * b[:, None, :]     # (M, B, fan_out)
        if l == len(params) - 1:
            return z, acts
        a = np.maximum(z, 0.0)
        acts.append(a)


def softmax_xent(logits, y):
    """Mean cross-entropy loss (M,) and its gradient w.r.t. the logits (M, B, C); y (B,) in {0, 1}."""
    B = logits.shape[1]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))     # (M, B, C)
    onehot = np.eye(N_CLASSES)[np.asarray(y, dtype=np.int64)]                  # (B, C)
    loss = -(onehot * logp).sum(axis=-1).mean(axis=-1)                       # (M,)
    dlogits = (np.exp(logp) - onehot) / B                                    # (M, B, C)
    return loss, dlogits


def margin(logits):
    """The network's scalar output f = z_1 - z_0 (M, B) of logits (M, B, C): class 1 exactly when f > 0, the rule
    of every loss, and the function the squared losses fit to y = +-1 (the NTK's predictor is compared with it)."""
    return logits[..., 1] - logits[..., 0]


def squared_loss(logits, y, loss):
    """Mean loss (M,) and its gradient w.r.t. the logits (M, B, C) of a squared loss on f = z_1 - z_0 against the
    target t = 2y - 1 in {-1, +1}:
      mse      l = (f - t)^2 / 2                  dl/df = f - t
      hinge2   l = max(0, 1 - t f)^2 / 2          dl/df = -t max(0, 1 - t f)
    and dl/dz_1 = dl/df, dl/dz_0 = -dl/df."""
    B = logits.shape[1]
    f = margin(logits)                                                       # (M, B)
    t = 2.0 * np.asarray(y, dtype=np.float64) - 1.0                          # (B,)
    if loss == "mse":
        per, df = 0.5 * (f - t) ** 2, f - t
    elif loss == "hinge2":
        gap = np.maximum(0.0, 1.0 - t * f)
        per, df = 0.5 * gap ** 2, -t * gap
    else:
        raise ValueError(f"not a squared loss: {loss!r}")
    dlogits = np.stack([-df, df], axis=-1) / B                               # (M, B, C)
    return per.mean(axis=-1), dlogits


def output_loss(logits, y, loss="xent"):
    """Mean loss (M,) and its gradient w.r.t. the logits (M, B, C) of one of LOSSES (see softmax_xent and
    squared_loss)."""
    if loss == "xent":
        return softmax_xent(logits, y)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES} (got {loss!r})")
    return squared_loss(logits, y, loss)


def loss_and_grads(params, scales, x, y, loss="xent", initial=None):
    """Loss (M,) and gradients [(dW (M, fan_in, fan_out), db (M, fan_out))] of the mean training loss; with
    ``initial`` parameters, of the loss of the logits less the initial ones (the engines' f0 = "subtract")."""
    logits, acts = forward(params, scales, x)
    if initial is not None:
        logits = logits - forward(initial, scales, x)[0]
    value, dlogits = output_loss(logits, y, loss)
    return value, backward(params, scales, x, acts, dlogits)


def backward(params, scales, x, acts, dlogits):
    """Gradients [(dW (M, fan_in, fan_out), db (M, fan_out))] of sum(dlogits * logits), the chain rule from a
    given gradient dlogits (M, B, C) of the logits; acts are `forward`'s hidden activations of the same x."""
    c, s = scales
    dz = dlogits
    x = np.asarray(x, dtype=np.float64)
    inputs = [np.broadcast_to(x, (dz.shape[0],) + x.shape[-2:])] + acts
    grads = [None] * len(params)
    for l in range(len(params) - 1, -1, -1):
        W, _ = params[l]
        a = inputs[l]                                               # (M, B, fan_in)
        grads[l] = (c[l] * a.transpose(0, 2, 1) @ dz, s[l] * dz.sum(axis=1))
        if l > 0:
            da = c[l] * dz @ W.transpose(0, 2, 1)                   # (M, B, fan_in)
            dz = da * (a > 0)
    return grads


def sgd_step(params, grads, lrs):
    """Plain SGD with one learning rate per network: returns the new parameters."""
    lrs = np.asarray(lrs, dtype=np.float64)
    return [(W - lrs[:, None, None] * dW, b - lrs[:, None] * db) for (W, b), (dW, db) in zip(params, grads)]


def evaluate(params, scales, x, y, loss="xent", initial=None):
    """Error rate (M,) and mean loss (M,) on a dataset x (N, D), y (N,) (of the logits less those of ``initial``
    parameters, if given)."""
    logits, _ = forward(params, scales, x)
    if initial is not None:
        logits = logits - forward(initial, scales, x)[0]
    loss, _ = output_loss(logits, y, loss)
    wrong = (logits[..., 1] > logits[..., 0]).astype(np.int64) != np.asarray(y)[None, :]
    return wrong.mean(axis=1), loss


def minibatches(subset, seed, epoch, batch_size):
    """The minibatches (index arrays into the dataset) of one network in one epoch."""
    order = np.asarray(subset)[rng.permutation_np(len(subset), int(seed), int(epoch))]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def train_steps(params, scales, x, y, lr, seed, subset, batch_size, n_steps, loss="xent", f0="keep"):
    """The reference training loop of one network (params with M = 1): the losses of its first n_steps steps.
    f0 = "subtract" trains the network's logits less its initial ones (those of ``params``)."""
    initial = params if f0 == "subtract" else None
    losses = []
    epoch = 0
    while len(losses) < n_steps:
        for rows in minibatches(subset, seed, epoch, batch_size):
            value, grads = loss_and_grads(params, scales, x[rows], y[rows], loss, initial)
            params = sgd_step(params, grads, [lr])
            losses.append(float(value[0]))
            if len(losses) == n_steps:
                break
        epoch += 1
    return params, np.array(losses)
