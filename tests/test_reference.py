"""The float64 reference against first principles: central differences, the SGD rule, the initializations."""
import hashlib

import numpy as np
import pytest

from fastmlp import reference
from fastmlp.constants import LOSSES
from fastmlp.errors import UsageError
from conftest import assert_close, make_data

H_FD = 1e-6   # central-difference step


def _random_biases(params, seed):
    """Copy of params with N(0, 0.3) biases, so that bias gradients and the bias paths are exercised."""
    g = np.random.default_rng(seed)
    return [(W.copy(), 0.3 * g.standard_normal(b.shape)) for W, b in params]


def _masks(params, scales, x):
    """ReLU on/off pattern of every hidden unit (M, B, H) per layer."""
    _, acts = reference.forward(params, scales, x)
    return [a > 0 for a in acts]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("param", ["standard", "ntk"])
def test_loss_and_grads_against_central_differences(param, L, loss):
    M, B, D, H = 2, 7, 5, 6
    x, y = make_data(B, D, seed=10 + L)
    scales = reference.layer_scales(D, H, L, param, sigma_w2=2.0, sigma_b2=0.5)   # sigma_b > 0: biases matter
    params = _random_biases(reference.init_params(D, H, L, [11, 12], param), seed=L)
    _, grads = reference.loss_and_grads(params, scales, x, y, loss)
    base = _masks(params, scales, x)

    n_checked = n_total = 0
    for l in range(L + 1):
        for t in range(2):                                        # W, then b
            tensor, dtensor = params[l][t], grads[l][t]
            for idx in np.ndindex(tensor.shape[1:]):
                value = {}
                ok = np.ones(M, bool)
                for sign in (1, -1):
                    # perturb the same coordinate of every network: network m's loss depends on its own only
                    pert = [(W.copy(), b.copy()) for W, b in params]
                    pert[l][t][(slice(None),) + idx] += sign * H_FD
                    value[sign], _ = reference.loss_and_grads(pert, scales, x, y, loss)
                    # a ReLU that switches inside [w - h, w + h] makes the difference quotient meaningless
                    for a, a0 in zip(_masks(pert, scales, x), base):
                        ok &= (a == a0).all(axis=(1, 2))
                fd = (value[1] - value[-1]) / (2 * H_FD)                # (M,)
                n_total += M
                n_checked += ok.sum()
                assert_close(fd[ok], dtensor[(slice(None),) + idx][ok], "fd", np.float64)
    assert n_checked > 0.9 * n_total   # the kink mask must not hollow the test out


def _central_differences(loss_of, logits):
    """d loss_of(logits)[m] / d logits[m, b, c] (M, B, C) by central differences; loss_of -> (M,)."""
    fd = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        z_plus, z_minus = logits.copy(), logits.copy()
        z_plus[idx] += H_FD
        z_minus[idx] -= H_FD
        fd[idx] = (loss_of(z_plus)[idx[0]] - loss_of(z_minus)[idx[0]]) / (2 * H_FD)
    return fd


def test_softmax_xent_against_central_differences():
    g = np.random.default_rng(3)
    M, B = 3, 9
    logits = 2.0 * g.standard_normal((M, B, 2))
    y = g.integers(0, 2, B)
    loss, dlogits = reference.softmax_xent(logits, y)
    # the loss itself: mean of log(1 + exp(z_other - z_y))
    margin = logits[:, np.arange(B), 1 - y] - logits[:, np.arange(B), y]
    assert_close(loss, np.log1p(np.exp(margin)).mean(axis=1), "loss", np.float64)
    assert_close(_central_differences(lambda z: reference.softmax_xent(z, y)[0], logits), dlogits, "fd", np.float64)


@pytest.mark.parametrize("loss", ["mse", "hinge2"])
def test_squared_losses_against_their_formulas_and_central_differences(loss):
    g = np.random.default_rng(5)
    M, B = 3, 11
    logits = 1.5 * g.standard_normal((M, B, 2))
    y = g.integers(0, 2, B)
    value, dlogits = reference.output_loss(logits, y, loss)
    f, t = logits[..., 1] - logits[..., 0], 2.0 * y - 1.0
    per = (f - t) ** 2 / 2 if loss == "mse" else np.maximum(0.0, 1.0 - t * f) ** 2 / 2
    assert_close(value, per.mean(axis=1), "loss", np.float64)
    if loss == "hinge2":
        assert (t * f > 1).any() and (per == 0).any()             # some samples beyond the margin: no loss
    fd = _central_differences(lambda z: reference.output_loss(z, y, loss)[0], logits)
    assert_close(fd, dlogits, "fd", np.float64)
    np.testing.assert_array_equal(dlogits[..., 0], -dlogits[..., 1])   # a function of f = z_1 - z_0 alone


def test_every_loss_predicts_by_the_sign_of_f():
    logits = np.array([[[0.3, -0.2], [-1.0, 2.0], [0.5, 0.5]]])
    y = np.array([0, 1, 1])
    errors = {loss: reference.evaluate([(np.eye(2)[None], np.zeros((1, 2)))], (np.ones(1), np.ones(1)),
                                       logits[0], y, loss)[0] for loss in LOSSES}
    assert errors == {loss: np.array([1 / 3]) for loss in LOSSES}       # a tie (f = 0) is class 0


def test_sgd_step_uses_each_networks_learning_rate():
    g = np.random.default_rng(4)
    params = reference.init_params(5, 7, 2, [1, 2, 3])
    grads = [(g.standard_normal(W.shape), g.standard_normal(b.shape)) for W, b in params]
    lrs = [0.1, 0.5, 2.0]
    new = reference.sgd_step(params, grads, lrs)
    for (W, b), (dW, db), (W1, b1) in zip(params, grads, new):
        for m, lr in enumerate(lrs):
            np.testing.assert_array_equal(W1[m], W[m] - lr * dW[m])
            np.testing.assert_array_equal(b1[m], b[m] - lr * db[m])
    assert params[0][0] is not new[0][0] and not np.array_equal(params[0][0], new[0][0])   # a new list, inputs kept


def test_init_ntk_is_unit_gaussian_with_biases():
    params = reference.init_params(300, 400, 2, [7], param="ntk")
    for l, (W, b) in enumerate(params):
        assert abs(W.std() - 1) < 0.1           # at least 800 draws
        assert np.all(b != 0)
        if l < 2:
            assert abs(b.std() - 1) < 0.15      # 400 draws
    assert not np.allclose(params[0][1], params[1][1][:, :400])   # biases of different layers differ


# Per layer (ReLU layers, output layer): the distribution of W and b each scheme promises.
INIT_LAWS = {
    "he": {"hidden": ("normal", 2.0), "output": ("normal", 1.0), "bias": None},
    "lecun": {"hidden": ("normal", 1.0), "output": ("normal", 1.0), "bias": None},
    "torch": {"hidden": ("uniform", 1.0), "output": ("uniform", 1.0), "bias": ("uniform", 1.0)},
}


def _check_law(values, law, fan_in, scale):
    """values follow law = (kind, gain): N(0, gain / fan_in), or U(-1, 1) sqrt(gain / fan_in), times scale.
    Mean within 4 standard errors, std within 8%, and a uniform law's bound never crossed."""
    kind, gain = law
    width = scale * np.sqrt(gain / fan_in)
    std = width if kind == "normal" else width / np.sqrt(3.0)
    assert abs(values.mean()) < 4 * std / np.sqrt(values.size)
    assert abs(values.std() / std - 1) < 0.08    # >= 1000 draws: ~2.2% noise; he vs lecun differ by 41%
    if kind == "uniform":
        assert np.abs(values).max() < width and np.abs(values).max() > 0.95 * width   # fills (-bound, bound)
    else:
        assert np.abs(values).max() > 3 * std    # a Gaussian's tail, not a uniform's edge at 1.73 std


@pytest.mark.parametrize("scale", [1.0, 0.1])
@pytest.mark.parametrize("init", reference.INITS)
def test_init_follows_its_law_layer_by_layer(init, scale):
    D, H, L = 400, 500, 2
    params = reference.init_params(D, H, L, [7, 8], init=init, init_scale=scale)
    laws = INIT_LAWS[init]
    for l, ((W, b), (fan_in, fan_out)) in enumerate(zip(params, reference.layer_sizes(D, H, L))):
        assert W.shape == (2, fan_in, fan_out) and b.shape == (2, fan_out)
        _check_law(W, laws["hidden" if l < L else "output"], fan_in, scale)
        if laws["bias"] is None:
            assert np.all(b == 0)
        elif b.size >= 1000:
            _check_law(b, laws["bias"], fan_in, scale)
        else:   # the output layer's 4 biases: only the bound can be checked
            assert 0 < np.abs(b).max() < scale / np.sqrt(fan_in)


def test_init_he_at_scale_1_is_the_first_releases_bit_for_bit():
    params = reference.init_params(7, 9, 2, [3, 4], init="he", init_scale=1.0)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for W, b in params for a in (W, b)))
    assert digest.hexdigest() == "6e5ca1f2d7ba49a245b3e345a2af4d2b8e04d00eecefc53074ac958d57810009"   # 0.1.0's


def test_init_scale_multiplies_every_parameter():
    for init, param in (("torch", "standard"), ("lecun", "standard"), ("he", "ntk")):
        one = reference.init_params(6, 8, 2, [5], param, init=init)
        half = reference.init_params(6, 8, 2, [5], param, init=init, init_scale=0.5)
        for (W1, b1), (W2, b2) in zip(one, half):
            np.testing.assert_array_equal(W2, 0.5 * W1)
            np.testing.assert_array_equal(b2, 0.5 * b1)


def test_schemes_differ_and_ntk_ignores_the_scheme():
    Ws = {init: reference.init_params(6, 8, 1, [5], init=init)[0][0] for init in reference.INITS}
    np.testing.assert_allclose(Ws["he"], np.sqrt(2) * Ws["lecun"])     # the same Gaussian draws, gain 2 vs 1
    assert not np.allclose(np.abs(Ws["torch"]), np.abs(Ws["lecun"]))
    for init in ("lecun", "torch"):
        for (W, b), (W_he, b_he) in zip(reference.init_params(6, 8, 2, [5], "ntk", init=init),
                                        reference.init_params(6, 8, 2, [5], "ntk", init="he")):
            np.testing.assert_array_equal(W, W_he)
            np.testing.assert_array_equal(b, b_he)


@pytest.mark.parametrize("init", reference.INITS)
@pytest.mark.parametrize("param", ["standard", "ntk"])
def test_init_is_a_function_of_the_seed(param, init):
    D, H, L = 9, 13, 3
    seeds = [0, 5, 2**32 - 1]
    batched = reference.init_params(D, H, L, seeds, param, init=init)
    again = reference.init_params(D, H, L, seeds, param, init=init)
    for m, seed in enumerate(seeds):
        alone = reference.init_params(D, H, L, [seed], param, init=init)
        for l in range(L + 1):
            for t in range(2):
                np.testing.assert_array_equal(batched[l][t], again[l][t])            # deterministic
                np.testing.assert_array_equal(batched[l][t][m], alone[l][t][0])      # network m alone
    for l in range(L + 1):
        W = batched[l][0]
        assert not np.array_equal(W[0], W[1]) and not np.array_equal(W[1], W[2])    # seeds differ


@pytest.mark.parametrize("init, scale", [("kaiming", 1.0), ("torch", 0.0), ("torch", -1.0), ("he", float("nan")),
                                         ("he", float("inf")), ("lecun", "2")])
def test_bad_init_is_refused_with_the_option_named(init, scale):
    with pytest.raises(UsageError, match="--init-scale" if init in reference.INITS else "--init "):
        reference.check_init(init, scale)


def test_forward_batched_equals_each_network_alone():
    D, H, L = 6, 9, 2
    x, _ = make_data(8, D)
    scales = reference.layer_scales(D, H, L, "ntk", sigma_b2=0.5)
    params = reference.init_params(D, H, L, [1, 2], "ntk")
    logits, _ = reference.forward(params, scales, x)
    for m in range(2):
        one = [(W[m:m + 1], b[m:m + 1]) for W, b in params]
        np.testing.assert_array_equal(logits[m:m + 1], reference.forward(one, scales, x)[0])
        a = x.astype(np.float64)                                   # the layer formula written out
        for l, (W, b) in enumerate(one):
            z = scales[0][l] * a @ W[0] + scales[1][l] * b[0]
            a = np.maximum(z, 0) if l < L else z
        assert_close(logits[m], a, "forward", np.float64)


def test_minibatches_partition_the_subset():
    subset = np.array([3, 17, 4, 40, 8, 9, 21, 30, 1, 2, 5])
    batches = reference.minibatches(subset, seed=3, epoch=2, batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.sort(subset))
    other = reference.minibatches(subset, seed=3, epoch=3, batch_size=4)
    assert not np.array_equal(np.concatenate(batches), np.concatenate(other))   # a new order every epoch
