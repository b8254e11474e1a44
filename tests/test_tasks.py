"""Label rules and fused data generation against per-sample pure-Python loops."""

import numpy as np
import pytest

from fastmlp import rng, tasks
from fastmlp.constants import STREAM_TEST_X, STREAM_TRAIN_X
from fastmlp.errors import UsageError
from fastmlp.tasks import TaskSpec, generate, iter_chunks, parse_task


def _label_loop(spec, row):
    """The paper's rule for one sample, in plain Python floats, j then t ascending."""
    xs = [float(v) for v in row]
    D = spec.D
    if spec.rule == "local":
        m = 1.0
        for i in spec.indices:
            m *= xs[i]
    else:
        m = 0.0
        for j in range(D):
            p = 1.0
            for i in spec.indices:
                p *= xs[(j + i) % D]
            m += p
    return 1 if m > 0 else 0


RULES = [
    ("1-local", 7, None), ("2-local", 9, None), ("2-local", 10, (7, 3)), ("3-local", 12, None),
    ("3-local", 8, (7, 0, 4)), ("1-global", 7, None), ("1-global", 9, (5,)), ("2-global", 8, None),
    ("2-global", 11, (0, 3)), ("3-global", 12, None), ("3-global", 10, (0, 4, 9)), ("4-global", 9, (1, 2, 6, 8)),
]


@pytest.mark.parametrize("name, D, indices", RULES)
def test_rules_against_loop(name, D, indices):
    spec = parse_task(name, D=D, indices=indices)
    start, n = 37, 400
    x, y = generate(spec, 5, "train", start, n)
    assert x.shape == (n, D) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int8
    assert set(np.unique(y)) == {0, 1}
    for i in range(n):
        # the row is sample start+i's Gaussian vector rounded to float32 (NumPy twin: ulps apart in float64)
        z = rng.gaussian_np(D, 5, STREAM_TRAIN_X, start + i, 0)
        np.testing.assert_allclose(x[i], z.astype(np.float32), rtol=1e-6, atol=1e-7)
        assert y[i] == _label_loop(spec, x[i])


def test_labels_are_balanced_for_k_local():
    """sign(x_0 x_1) is a fair coin: the labels are not stuck at one class."""
    _, y = generate(parse_task("2-local", D=10), 1, "train", 0, 20_000)
    assert abs(y.mean() - 0.5) < 5 * 0.5 / np.sqrt(len(y))


@pytest.mark.parametrize("name, D", [("3-global", 10), ("temperature", 12)])
def test_chunking_and_regeneration(name, D):
    spec = parse_task(name, D=D)
    n = 1000
    x, y = generate(spec, 3, "test", 0, n)
    for i in [0, 1, 2, 513, n - 1]:  # any sample regenerated alone, odd and even indices
        xi, yi = generate(spec, 3, "test", i, 1)
        np.testing.assert_array_equal(xi[0], x[i])
        assert yi[0] == y[i]
    parts = list(iter_chunks(spec, 3, "test", n, chunk=300))  # chunks cross odd boundaries
    assert [s for s, _, _ in parts] == [0, 300, 600, 900]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), x)
    np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), y)
    x2, y2 = generate(spec, 3, "test", 250, 500)
    np.testing.assert_array_equal(x2, x[250:750])
    np.testing.assert_array_equal(y2, y[250:750])


@pytest.mark.parametrize("name", ["2-local", "temperature"])
def test_splits_and_seeds_differ(name):
    spec = parse_task(name, D=10)
    train, _ = generate(spec, 3, "train", 0, 50)
    test, _ = generate(spec, 3, "test", 0, 50)
    other, _ = generate(spec, 4, "train", 0, 50)
    assert not np.any(train == test)
    assert not np.any(train == other)
    assert tasks.SPLIT_STREAMS == {"train": STREAM_TRAIN_X, "test": STREAM_TEST_X}


def test_temperature_covariance():
    """Each class's empirical covariance matches inv(I - beta (S + S^T)) within 5 sigma per entry."""
    D, n_per_class = 8, 40_000
    spec = parse_task("temperature", D=D, beta1=0.3, beta2=-0.2)
    x, y = generate(spec, 11, "train", 0, 2 * n_per_class)
    S = np.roll(np.eye(D), 1, axis=1)  # cyclic shift
    for cls, beta in [(0, 0.3), (1, -0.2)]:
        xs = x[y == cls].astype(np.float64)  # (n, D)
        assert len(xs) == n_per_class
        cov = np.linalg.inv(np.eye(D) - beta * (S + S.T))
        emp = xs.T @ xs / len(xs)  # known mean 0
        sigma = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / len(xs))  # std of each entry
        assert np.all(np.abs(emp - cov) < 5 * sigma), np.abs(emp - cov) / sigma
        assert np.all(np.abs(xs.mean(axis=0)) < 5 * np.sqrt(np.diag(cov) / len(xs)))


def test_temperature_classes_balanced():
    spec = parse_task("temperature", D=6)
    _, y = generate(spec, 0, "train", 5, 10)
    np.testing.assert_array_equal(y, [1, 0, 1, 0, 1, 0, 1, 0, 1, 0])  # class of sample i is i % 2
    _, y = generate(spec, 0, "train", 0, 1000)
    assert y.dtype == np.int8 and y.sum() == 500


def test_parse_defaults_and_spec():
    for name, D in [("1-local", 1000), ("1-global", 1000), ("2-local", 500), ("2-global", 100),
                    ("3-local", 100), ("3-global", 40), ("temperature", 100)]:
        spec = parse_task(name)
        assert spec.D == D and spec.name == name
    spec = parse_task("3-global")
    assert spec.indices == (0, 1, 2) and spec.k == 3 and spec.beta1 is None
    assert parse_task("2-local", D=9, indices="4,7").indices == (4, 7)
    t = parse_task("temperature")
    assert (t.k, t.indices, t.beta1, t.beta2) == (0, (), 0.1, 0.2)
    for s in (spec, t):
        assert TaskSpec.from_dict(s.to_dict()) == s
    assert spec.to_dict() == {"rule": "global", "k": 3, "D": 40, "indices": [0, 1, 2], "beta1": None, "beta2": None}


BAD = [
    (dict(name="5-locl"), "TASK"),
    (dict(name="foo"), "TASK"),
    (dict(name="0-local"), "TASK"),
    (dict(name="4-local"), "--D"),  # no default D for k = 4
    (dict(name="2-local", D=0), "--D"),
    (dict(name="2-local", D=2.5), "--D"),
    (dict(name="3-global", D=2), "--D"),  # k > D
    (dict(name="2-local", D=10, indices=(1,)), "--indices"),  # wrong count
    (dict(name="2-local", D=10, indices=(3, 3)), "--indices"),  # not distinct
    (dict(name="2-local", D=10, indices=(3, 10)), "--indices"),  # out of range
    (dict(name="2-global", D=10, indices=(-1, 2)), "--indices"),
    (dict(name="2-global", D=10, indices="0,x"), "--indices"),
    (dict(name="temperature", beta1=0.6), "--beta1"),
    (dict(name="temperature", beta2=-0.5), "--beta2"),
    (dict(name="temperature", beta1=float("nan")), "--beta1"),
    (dict(name="temperature", beta1=0.2, beta2=0.2), "--beta1"),
    (dict(name="temperature", D=0), "--D"),
    (dict(name="temperature", indices=(0,)), "--indices"),
]


@pytest.mark.parametrize("kwargs, option", BAD)
def test_usage_errors(kwargs, option):
    with pytest.raises(UsageError) as err:
        parse_task(**kwargs)
    msg = str(err.value)
    assert option in msg and "\n" not in msg
    assert isinstance(err.value, ValueError)


def test_beta_message_names_the_value():
    with pytest.raises(UsageError, match=r"temperature needs \|beta\| < 1/2; got --beta1 0.6"):
        parse_task("temperature", beta1=0.6)


@pytest.mark.parametrize("seed, split, start, n, option", [
    (-1, "train", 0, 1, "--seed"), (2**32, "train", 0, 1, "--seed"), (0, "valid", 0, 1, "split"),
    (0, "train", -1, 1, "sample"), (0, "train", 2**32 - 1, 2, "sample"),
])
def test_generate_usage_errors(seed, split, start, n, option):
    with pytest.raises(UsageError, match=option):
        generate(parse_task("1-local", D=3), seed, split, start, n)
