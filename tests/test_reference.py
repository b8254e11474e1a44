"""The float64 reference against first principles: central differences, the SGD rule, He initialization."""
import numpy as np
import pytest

from fastmlp import reference
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


@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("param", ["standard", "ntk"])
def test_loss_and_grads_against_central_differences(param, L):
    M, B, D, H = 2, 7, 5, 6
    x, y = make_data(B, D, seed=10 + L)
    scales = reference.layer_scales(D, H, L, param, sigma_w2=2.0, sigma_b2=0.5)   # sigma_b > 0: biases matter
    params = _random_biases(reference.init_params(D, H, L, [11, 12], param), seed=L)
    _, grads = reference.loss_and_grads(params, scales, x, y)
    base = _masks(params, scales, x)

    n_checked = n_total = 0
    for l in range(L + 1):
        for t in range(2):                                        # W, then b
            tensor, dtensor = params[l][t], grads[l][t]
            for idx in np.ndindex(tensor.shape[1:]):
                loss = {}
                ok = np.ones(M, bool)
                for sign in (1, -1):
                    # perturb the same coordinate of every network: network m's loss depends on its own only
                    pert = [(W.copy(), b.copy()) for W, b in params]
                    pert[l][t][(slice(None),) + idx] += sign * H_FD
                    loss[sign], _ = reference.loss_and_grads(pert, scales, x, y)
                    # a ReLU that switches inside [w - h, w + h] makes the difference quotient meaningless
                    for a, a0 in zip(_masks(pert, scales, x), base):
                        ok &= (a == a0).all(axis=(1, 2))
                fd = (loss[1] - loss[-1]) / (2 * H_FD)                  # (M,)
                n_total += M
                n_checked += ok.sum()
                assert_close(fd[ok], dtensor[(slice(None),) + idx][ok], "fd", np.float64)
    assert n_checked > 0.9 * n_total   # the kink mask must not hollow the test out


def test_softmax_xent_against_central_differences():
    g = np.random.default_rng(3)
    M, B = 3, 9
    logits = 2.0 * g.standard_normal((M, B, 2))
    y = g.integers(0, 2, B)
    loss, dlogits = reference.softmax_xent(logits, y)
    # the loss itself: mean of log(1 + exp(z_other - z_y))
    margin = logits[:, np.arange(B), 1 - y] - logits[:, np.arange(B), y]
    assert_close(loss, np.log1p(np.exp(margin)).mean(axis=1), "loss", np.float64)
    fd = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        z_plus, z_minus = logits.copy(), logits.copy()
        z_plus[idx] += H_FD
        z_minus[idx] -= H_FD
        m = idx[0]
        fd[idx] = (reference.softmax_xent(z_plus, y)[0][m] - reference.softmax_xent(z_minus, y)[0][m]) / (2 * H_FD)
    assert_close(fd, dlogits, "fd", np.float64)


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


def test_init_standard_is_he():
    D, H, L = 400, 500, 2
    params = reference.init_params(D, H, L, [7])
    expected_std = [np.sqrt(2 / D), np.sqrt(2 / H), np.sqrt(1 / H)]   # He for ReLU layers, 1/fan_in for the output
    for (W, b), std, (fan_in, fan_out) in zip(params, expected_std, reference.layer_sizes(D, H, L)):
        assert W.shape == (1, fan_in, fan_out) and b.shape == (1, fan_out)
        # 1000 draws (output layer) give the std to ~2.2%; He vs LeCun differ by 41%
        assert abs(W.std() / std - 1) < 0.08
        assert abs(W.mean()) < 4 * std / np.sqrt(W.size)
        assert np.all(b == 0)


def test_init_ntk_is_unit_gaussian_with_biases():
    params = reference.init_params(300, 400, 2, [7], param="ntk")
    for l, (W, b) in enumerate(params):
        assert abs(W.std() - 1) < 0.1           # at least 800 draws
        assert np.all(b != 0)
        if l < 2:
            assert abs(b.std() - 1) < 0.15      # 400 draws
    assert not np.allclose(params[0][1], params[1][1][:, :400])   # biases of different layers differ


@pytest.mark.parametrize("param", ["standard", "ntk"])
def test_init_is_a_function_of_the_seed(param):
    D, H, L = 9, 13, 3
    seeds = [0, 5, 2**32 - 1]
    batched = reference.init_params(D, H, L, seeds, param)
    again = reference.init_params(D, H, L, seeds, param)
    for m, seed in enumerate(seeds):
        alone = reference.init_params(D, H, L, [seed], param)
        for l in range(L + 1):
            for t in range(2):
                np.testing.assert_array_equal(batched[l][t], again[l][t])            # deterministic
                np.testing.assert_array_equal(batched[l][t][m], alone[l][t][0])      # network m alone
    for l in range(L + 1):
        W = batched[l][0]
        assert not np.array_equal(W[0], W[1]) and not np.array_equal(W[1], W[2])    # seeds differ


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
