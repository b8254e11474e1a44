"""The engines: batching is invisible, training follows the reference, the stop rule, subsets, bad input,
learning.  Tests taking `engine_cls` run on every backend (the GPU's marked gpu, skipped without one)."""
import json

import numpy as np
import pytest

from fastmlp import backend, codegen, reference, tasks
from fastmlp.cpu_engine import Engine
from fastmlp.errors import UsageError
from conftest import (DTYPES, SIGMA_B2, assert_close, assert_params_equal as _assert_params_equal, check_fit_stop_rule,
                      make_data, network as _network, scales as _scales, subsets as _subsets, tol)


ENGINES = [pytest.param("cpu", id="cpu"), pytest.param("gpu", id="gpu", marks=pytest.mark.gpu)]


@pytest.fixture(params=ENGINES)
def engine_cls(request):
    """The engine class of each backend."""
    return backend.engine_class(request.param)


def test_networks_trained_together_equal_each_trained_alone(data_medium):
    x, y = data_medium
    H, L, B = 21, 2, 17
    lrs, seeds = [0.02, 0.05, 0.1, 0.2, 0.5], [7, 1, 7, 2**32 - 1, 0]
    subsets = _subsets(len(x), [300, 250, 200, 290, 123], seed=5)
    together = Engine(x, y, H, L, B, lrs, seeds, subsets=subsets)
    together.train_epochs(3)
    for m in range(5):
        alone = Engine(x, y, H, L, B, [lrs[m]], [seeds[m]], subsets=[subsets[m]], threads=1)
        alone.train_epochs(3)
        _assert_params_equal(_network(together.params(), m), alone.params())     # bit for bit (float32)
        assert together.train_loss[m] == alone.train_loss[0]
    p = together.params()[0][0]
    assert not np.array_equal(p[0], p[2])                                         # same seed, other lr


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param, init, loss", [("standard", "he", "xent"), ("standard", "torch", "xent"),
                                               ("ntk", "he", "xent"), ("standard", "torch", "mse"),
                                               ("ntk", "he", "mse"), ("standard", "he", "hinge2"),
                                               ("ntk", "he", "hinge2")])
def test_first_20_steps_follow_the_reference(engine_cls, param, init, loss, dtype):
    N, D, H, L, B = 75, 11, 21, 3, 17                # 5 minibatches per epoch (the last one of 7): 4 epochs
    x, y = make_data(N, D, seed=3)
    lrs, seeds = [0.05, 0.3], [11, 12]
    e = engine_cls(x, y, H, L, B, lrs, seeds, param=param, dtype=dtype, sigma_b2=SIGMA_B2[param], init=init,
                   loss=loss)
    start = e.params()
    expected = reference.init_params(D, H, L, seeds, param, dtype=dtype, init=init)
    if engine_cls is Engine:
        _assert_params_equal(start, expected)
    else:   # drawn on the device, whose log and sincos may round a Gaussian one ulp apart (test_gpu.py)
        for (W, b), (W_r, b_r) in zip(start, expected):
            np.testing.assert_allclose(W, W_r, rtol=4 * np.finfo(dtype).eps, atol=0)
            np.testing.assert_allclose(b, b_r, rtol=4 * np.finfo(dtype).eps, atol=0)
    e.train_epochs(4)
    for m in range(2):
        ref, losses = reference.train_steps(_network(start, m), _scales(e), x, y, lrs[m], seeds[m], np.arange(N),
                                            B, 20, loss)
        moved = 0.0
        for (W, b), (W_ref, b_ref), (W0, _) in zip(_network(e.params(), m), ref, _network(start, m)):
            assert_close(W, W_ref, "step", dtype)        # float64: atol 1e-12, well inside 1e-9
            assert_close(b, b_ref, "step", dtype)
            moved = max(moved, np.abs(W_ref - W0).max())
        assert moved > 100 * tol("step", dtype)[0]
        assert_close(e.train_loss[m], losses[15:].mean(), "loss", dtype)   # the last epoch's mean minibatch loss


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("param, loss", [("ntk", "mse"), ("standard", "xent")])
def test_subtracting_the_initial_function_starts_at_zero_and_follows_the_reference(engine_cls, param, loss, dtype):
    """f0 = "subtract": every logit is exactly 0 before training, on the training set and on other inputs, and the
    steps follow the reference's training of f - f0."""
    N, D, H, L, B = 75, 11, 21, 3, 17
    x, y = make_data(N, D, seed=3)
    x_other, y_other = make_data(40, D, seed=4)
    lrs, seeds = [0.05, 0.3], [11, 12]
    e = engine_cls(x, y, H, L, B, lrs, seeds, param=param, dtype=dtype, sigma_b2=SIGMA_B2[param], loss=loss,
                   f0="subtract")
    assert not np.any(e.logits(x)) and not np.any(e.logits(x_other))
    kept = engine_cls(x, y, H, L, B, lrs, seeds, param=param, dtype=dtype, sigma_b2=SIGMA_B2[param], loss=loss)
    assert np.abs(kept.logits(x_other)).max() > 0.1                   # what is subtracted is not small
    start = e.params()
    e.train_epochs(4)
    for m in range(2):
        ref, losses = reference.train_steps(_network(start, m), _scales(e), x, y, lrs[m], seeds[m], np.arange(N),
                                            B, 20, loss, f0="subtract")
        for (W, b), (W_ref, b_ref) in zip(_network(e.params(), m), ref):
            assert_close(W, W_ref, "step", dtype)
            assert_close(b, b_ref, "step", dtype)
        assert_close(e.train_loss[m], losses[15:].mean(), "loss", dtype)
    err, summed = e.evaluate(x_other, y_other)
    ref_err, ref_loss = reference.evaluate(e.params(), _scales(e), x_other, y_other, loss, initial=start)
    assert np.abs(err - ref_err * len(y_other)).max() <= 1 and np.any(ref_err > 0)
    assert_close(summed / len(y_other), ref_loss, "evaluate", np.float32)
    logits = e.logits(x_other)
    ref_logits = reference.forward(e.params(), _scales(e), x_other)[0] - reference.forward(start, _scales(e),
                                                                                         x_other)[0]
    assert_close(logits, ref_logits, "evaluate", np.float32)


def test_f0_takes_keep_or_subtract_only(data_small):
    x, y = data_small
    with pytest.raises(UsageError, match="--f0"):
        Engine(x, y, 5, 1, 5, [0.1], [1], f0="center")


def test_subset_network_never_sees_other_samples(engine_cls, data_medium):
    """Samples outside a network's subset are poisoned (NaN inputs, flipped labels) and change nothing.

    One network per engine, so that both engines make the same batched calls and results are bit-identical."""
    x, y = data_medium
    for lr, seed, S in zip([0.1, 0.05], [3, 4], _subsets(len(x), [120, 97], seed=8)):
        outside = np.setdiff1d(np.arange(len(x)), S)
        x_bad, y_bad = x.copy(), y.copy()
        x_bad[outside] = np.nan
        y_bad[outside] = 1 - y_bad[outside]
        clean = engine_cls(x, y, 13, 2, 7, [lr], [seed], subsets=[S])
        bad = engine_cls(x_bad, y_bad, 13, 2, 7, [lr], [seed], subsets=[S])
        for e in (clean, bad):
            e.fit(max_epochs=15)
        _assert_params_equal(bad.params(), clean.params())
        assert bad.epochs[0] == clean.epochs[0] and bad.train_loss[0] == clean.train_loss[0]
        np.testing.assert_array_equal(bad.train_error, clean.train_error)
        assert np.isfinite(bad.train_loss[0]) and bad.n_train[0] == len(S)


def test_a_subset_network_equals_one_trained_on_the_subset_alone(data_medium):
    x, y = data_medium
    subsets = _subsets(len(x), [120, 97], seed=8)
    for S in subsets:
        e = Engine(x, y, 13, 2, 7, [0.1, 0.05], [3, 4], subsets=[S, S])
        e.fit(max_epochs=4)
        alone = Engine(x[S], y[S], 13, 2, 7, [0.1, 0.05], [3, 4])         # subset row i is row i of x[S]
        alone.fit(max_epochs=4)
        _assert_params_equal(e.params(), alone.params())
        assert np.array_equal(e.epochs, alone.epochs)


def test_a_training_network_reports_no_check_values_whatever_the_check_scanned(engine_cls, data_medium):
    """While it trains under the zero-error rule, a network reports NaN training error and its epoch's minibatch
    loss, on every backend: the CPU's check, which may stop early, once reported exact values when it happened to
    reach the end (here always: 7 samples are one chunk), the GPU's, which scans everything, never."""
    x, y = data_medium
    e = engine_cls(x, y, 9, 1, 7, [1e-4, 1e-4], [1, 2], subsets=[np.arange(7), np.arange(7, 14)])
    seen = []
    e.fit(max_epochs=3, progress=lambda epoch, n_active, n: seen.append((e.train_error.copy(), e.stopped.copy())))
    for train_error, stopped in seen[:-1]:
        assert not stopped.any() and np.isnan(train_error).all()
    assert np.isfinite(e.train_error).all() and e.stopped.all()          # the last epoch: exact values


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_stop_rule(engine_cls, data_medium, dtype):
    check_fit_stop_rule(engine_cls, data_medium, dtype)


@pytest.mark.parametrize("loss", ["xent", "mse", "hinge2"])
def test_evaluate_reports_the_engines_loss(engine_cls, data_medium, loss):
    x, y = data_medium
    e = engine_cls(x, y, 13, 2, 7, [0.05, 0.2], [1, 2], loss=loss)
    e.train_epochs(2)
    err, summed = e.evaluate(x, y)
    ref_err, ref_loss = reference.evaluate(e.params(), _scales(e), x, y, loss)
    assert np.abs(err - ref_err * len(y)).max() <= 1                     # a near-tie may flip in float32
    assert_close(summed / len(y), ref_loss, "evaluate", np.float32)


@pytest.mark.parametrize("loss", ["mse", "hinge2", "xent"])
def test_the_loss_rule_stops_at_the_first_epoch_at_or_below_the_target(engine_cls, data_medium, loss):
    x, y = data_medium
    target = {"mse": 0.05, "hinge2": 0.02, "xent": 0.05}[loss]
    args = (x, y, 21, 2, 17, [0.05, 0.1, 0.2], [1, 2, 3])
    e = engine_cls(*args, loss=loss, stop="loss", target_loss=target)
    results = e.fit(max_epochs=400)
    assert all(r.converged and r.stopped_by == "target-loss" for r in results)
    assert np.all(e.train_loss <= target) and np.all(np.isfinite(e.train_error))
    for m, r in enumerate(results):                                     # one epoch earlier it was above
        before = engine_cls(x, y, 21, 2, 17, [args[5][m]], [args[6][m]], loss=loss, stop="loss",
                            target_loss=target)
        before.fit(max_epochs=r.epochs - 1)
        assert not before.converged[0] and before.train_loss[0] > target
        assert_close(before.evaluate(x, y)[1][0] / len(y), before.train_loss[0], "evaluate", np.float32)
    zero = engine_cls(*args, loss=loss)                                 # the paper's rule on the same networks
    assert all(r.stopped_by in ("zero-error", "max-epochs") for r in zero.fit(max_epochs=400))


@pytest.mark.parametrize("kwargs, option", [(dict(loss="l1"), "--loss"), (dict(stop="never"), "--stop"),
                                            (dict(stop="loss"), "--target-loss"),
                                            (dict(stop="loss", target_loss=0.0), "--target-loss"),
                                            (dict(stop="loss", target_loss=float("nan")), "--target-loss"),
                                            (dict(target_loss=0.1), "--target-loss")])
def test_bad_loss_or_stop_rule_raises_usage_error(data_small, kwargs, option):
    x, y = data_small
    with pytest.raises(UsageError, match=option):
        Engine(x, y, 5, 1, 5, [0.1], [1], **kwargs)


def test_huge_learning_rate_diverges_cleanly(engine_cls, data_medium):
    x, y = data_medium
    e = engine_cls(x, y, 21, 1, 17, [0.05, 1000.0, 0.1], [1, 2, 3])
    results = e.fit(max_epochs=20)
    assert [r.diverged for r in results] == [False, True, False]
    assert not results[1].converged and results[1].epochs < 20 and np.isnan(results[1].train_error)
    assert e.epochs[0] > results[1].epochs                        # the others went on training
    for r in results:
        json.dumps(r.to_dict(), allow_nan=False)
    assert results[1].to_dict()["train_loss"] is None and np.isfinite(results[0].to_dict()["train_loss"])
    cpu_e = Engine(x, y, 21, 1, 17, [0.05, 1000.0, 0.1], [1, 2, 3])
    cpu_e.fit(max_epochs=20)
    assert cpu_e.epochs[1] == e.epochs[1]                        # diverges in the same epoch on every backend


def test_learns_1_local():
    """1-local, D = 50, N = 500, L = 1, H = 50 reaches test error below 0.1 (an untrained network cannot).

    At this N the learning rate matters: lr 0.05 - 0.2 converges to 0.10 - 0.13, lr = 1 (feature learning)
    to 0.09 - 0.10 on these seeds; the protocol's cross-validation exists to find such an lr."""
    spec = tasks.parse_task("1-local", D=50)
    x, y = tasks.generate(spec, 0, "train", 0, 500)
    x_test, y_test = tasks.generate(spec, 0, "test", 0, 10000)
    e = Engine(x, y, 50, 1, 50, [1.0] * 6, np.arange(6))
    untrained = e.test_error([(x_test, y_test)])
    assert np.all(untrained > 0.3)
    e.fit(max_epochs=2000)
    assert e.converged.all()
    # two chunks give the same rate as one
    halves = [(x_test[:5000], y_test[:5000]), (x_test[5000:], y_test[5000:])]
    err = e.test_error(halves)
    np.testing.assert_array_equal(err, e.test_error([(x_test, y_test)]))
    assert err.mean() < 0.1 and err.min() < 0.095


@pytest.mark.parametrize("change, value", [
    ("lrs", [0.1, 0.0]), ("lrs", [-0.1, 0.1]), ("lrs", [np.nan, 0.1]), ("H", 0), ("B", 0), ("L", 0),
    ("N", 0), ("seeds", [1, -1]), ("seeds", [2**32, 1]),
])
def test_bad_input_raises_usage_error(data_small, change, value):
    x, y = data_small
    args = dict(x=x, y=y, H=5, L=1, B=5, lrs=[0.1, 0.1], seeds=[1, 2])
    args[change] = value
    if change == "N":
        args.update(x=x[:0], y=y[:0])
    with pytest.raises(UsageError):
        Engine(args["x"], args["y"], args["H"], args["L"], args["B"], args["lrs"], args["seeds"])


@pytest.mark.parametrize("param, init, scale", [("standard", "he", 1.0), ("standard", "lecun", 0.5),
                                                ("standard", "torch", 1.0), ("standard", "torch", 0.1),
                                                ("ntk", "he", 0.3)])
def test_initial_weights_are_the_references(data_small, param, init, scale):
    x, y = data_small
    seeds = [4, 9, 4]
    e = Engine(x, y, 13, 2, 5, [0.1] * 3, seeds, param=param, init=init, init_scale=scale)
    ref = reference.init_params(x.shape[1], 13, 2, seeds, param, dtype=np.float32, init=init, init_scale=scale)
    _assert_params_equal(e.params(), ref)
    alone = Engine(x, y, 13, 2, 5, [0.1], [9], param=param, init=init, init_scale=scale)
    _assert_params_equal(_network(e.params(), 1), alone.params())    # a network alone = the same among others


@pytest.mark.parametrize("init, scale", [("xavier", 1.0), ("torch", 0.0), ("torch", float("nan"))])
def test_bad_init_raises_usage_error(data_small, init, scale):
    x, y = data_small
    with pytest.raises(UsageError, match="--init"):
        Engine(x, y, 5, 1, 5, [0.1], [1], init=init, init_scale=scale)


def test_generated_microkernels_are_up_to_date():
    """Every family's module is what codegen writes (the AVX-512 family's is also the one before families)."""
    targets = codegen.targets()
    assert {p.name for p in targets} == {"_microkernels.py", "_microkernels_avx2.py"}
    for path, text in targets.items():
        assert path.read_text() == text, "run: python -m fastmlp.codegen"


def test_stop_epoch_is_the_first_epoch_with_zero_training_error(data_medium):
    """fit()'s check stops scanning at the first error; that must not change when a network stops.

    A second engine trains the same networks one epoch at a time (same minibatches) and evaluates the whole
    training set after every epoch: each network's first zero-error epoch is where fit() stopped it."""
    x, y = data_medium
    lrs, seeds = [0.3, 0.5, 1.0], [0, 1, 2]
    fitted = Engine(x, y, 32, 2, 25, lrs, seeds)
    fitted.fit(max_epochs=60)
    assert fitted.converged.all() and len(set(fitted.epochs)) == 3    # three different stop epochs (17, 13, 22)
    stepped = Engine(x, y, 32, 2, 25, lrs, seeds)
    first_zero = np.zeros(3, np.int64)
    for epoch in range(1, 61):
        stepped.train_epochs(1)
        err, loss = stepped.evaluate(x, y)
        for m in range(3):
            if first_zero[m] == 0 and err[m] == 0:
                first_zero[m] = epoch
                assert fitted.train_loss[m] == pytest.approx(loss[m] / len(x), rel=1e-6)
        if first_zero.all():
            break
    np.testing.assert_array_equal(fitted.epochs, first_zero)
    np.testing.assert_array_equal(fitted.train_error, 0.0)
