"""The benchmark baselines train for real, agree with each other, and bench_impl reports consistent rates."""

import json
import os
import platform
import statistics
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_close
from fastmlp import bench
from fastmlp.bench import WORKLOADS, bench_impl, run_bench, train_numpy, train_torch
from fastmlp.reference import useful_flops_per_sample


def _trainer(name):
    if name == "torch":
        pytest.importorskip("torch")
        return train_torch
    return train_numpy


def _preacts(params, x):
    """float64 forward of all M networks on the same inputs x (N, D): every layer's z, the last the logits."""
    a, zs = x.astype(np.float64), []
    for W, b in params:
        zs.append(a @ W.astype(np.float64) + b.astype(np.float64)[:, None, :])  # (M, N, F)
        a = np.maximum(zs[-1], 0)
    return zs


def _logits(params, x):
    return _preacts(params, x)[-1]  # (M, N, C)


def _mean_loss(params, x, y):
    """Softmax cross-entropy, mean over samples, per network: (M,)."""
    z = _logits(params, x)
    z = z - z.max(axis=2, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
    return -logp[:, np.arange(len(y)), y].mean(axis=1)


@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_baseline_learns_one_feature_task(impl):
    fn = _trainer(impl)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, 10), dtype=np.float32)  # (N, D)
    y = (x[:, 0] > 0).astype(np.int8)
    args = (x, y, 4, 16, 2, 20, 0.1)                       # M, H, L, B, lr

    init = fn(*args, epochs=0, seed=3, return_params=True)
    trained = fn(*args, epochs=30, seed=3, return_params=True)

    assert np.all(_mean_loss(trained, x, y) < 0.5 * _mean_loss(init, x, y))
    accuracy = (_logits(trained, x).argmax(axis=2) == y).mean(axis=1)  # (M,)
    assert np.all(accuracy > 0.9), accuracy


def test_numpy_step_is_sgd_on_the_mean_loss():
    """One full-batch epoch equals W - lr * grad, grad by central differences of the float64 loss."""
    rng = np.random.default_rng(11)
    M, D, H, L, N, lr = 2, 3, 4, 2, 6, 0.5
    x = rng.standard_normal((N, D), dtype=np.float32)
    y = np.array([0, 1, 1, 0, 1, 0], np.int8)
    init = train_numpy(x, y, M, H, L, N, lr, epochs=0, seed=8, return_params=True)
    step = train_numpy(x, y, M, H, L, N, lr, epochs=1, seed=8, return_params=True)
    # central differences are meaningless across a ReLU kink: this seed keeps every hidden z away from 0
    assert min(np.abs(z).min() for z in _preacts(init, x)[:-1]) > 1e-3

    eps = 1e-6
    for l in range(L + 1):
        for j in (0, 1):  # W, then b
            grad = np.zeros(init[l][j].shape)
            for i in np.ndindex(init[l][j].shape):
                loss = []
                for sign in (1, -1):
                    p = [[W.astype(np.float64), b.astype(np.float64)] for W, b in init]
                    p[l][j][i] += sign * eps
                    loss.append(_mean_loss(p, x, y)[i[0]])
                grad[i] = (loss[0] - loss[1]) / (2 * eps)
            assert_close(step[l][j], init[l][j] - lr * grad, "step", np.float32)


def test_init_is_he_and_output_layer_is_lecun():
    rng = np.random.default_rng(0)
    params = bench._init_params(rng, M=8, D=400, H=300, L=2)
    assert [W.shape for W, _ in params] == [(8, 400, 300), (8, 300, 300), (8, 300, 2)]
    for (W, b), var in zip(params, (2 / 400, 2 / 300, 1 / 300)):
        assert W.dtype == np.float32 and not b.any()
        assert abs(W.var() / var - 1) < 0.1


def test_torch_matches_numpy():
    pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((53, 7), dtype=np.float32)  # N % B != 0: a smaller last minibatch
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int8)
    lrs = np.array([0.05, 0.1, 0.2], np.float32)        # per-network learning rates
    args = (x, y, 3, 9, 2, 10, lrs)                     # M, H, L, B, lr

    init = train_numpy(*args, epochs=0, seed=4, return_params=True)
    ref = train_numpy(*args, epochs=1, seed=4, return_params=True)
    out = train_torch(*args, epochs=1, seed=4, return_params=True)
    assert max(np.abs(W1 - W0).max() for (W1, _), (W0, _) in zip(ref, init)) > 1e-3  # it moved
    for (W, b), (W_ref, b_ref) in zip(out, ref):
        assert_close(W, W_ref, "step", np.float32)
        assert_close(b, b_ref, "step", np.float32)


def test_useful_flops_per_sample():
    assert useful_flops_per_sample(500, 100, 1) == 4 * 500 * 100 + 12 * 100
    assert useful_flops_per_sample(1000, 500, 3) == 2_000_000 + 6 * 2 * 250_000 + 6_000
    assert WORKLOADS["W4"] == dict(M=10, D=1000, H=500, L=3, B=50, N=5000)


DOCUMENTED_KEYS = {"workload", "impl", "M", "D", "H", "L", "B", "N", "epochs", "repeats", "seconds_median",
                   "network_samples_per_s", "gflops", "threads", "dtype"}


def test_bench_impl_json_line():
    calls = []

    def fake(x, y, M, H, L, B, lr, seed):
        calls.append(("prepare", x.shape, y.dtype, M, H, L, B))
        return lambda epochs: calls.append(("run", epochs))

    rec = json.loads(json.dumps(bench_impl("fake", fake, "W2", epochs=3, repeats=2, threads=1)))
    assert DOCUMENTED_KEYS <= rec.keys()
    w = WORKLOADS["W2"]
    assert {k: rec[k] for k in w} == w
    assert (rec["workload"], rec["impl"], rec["epochs"], rec["repeats"], rec["threads"], rec["dtype"]) == (
        "W2", "fake", 3, 2, 1, "float32")
    # set up once, one warm-up epoch, then the timed runs
    assert calls == [("prepare", (1000, 500), np.int8, 40, 100, 5, 50), ("run", 1), ("run", 3), ("run", 3)]
    rate = 40 * 1000 * 3 / rec["seconds_median"]
    assert rec["network_samples_per_s"] == pytest.approx(rate)
    assert rec["gflops"] == pytest.approx(rate * useful_flops_per_sample(500, 100, 5) / 1e9)


def test_run_bench_emits_one_line_per_pair(monkeypatch):
    monkeypatch.setattr(bench, "PAUSE", 0)
    lines = []
    noop = lambda *args, **kwargs: (lambda epochs: None)  # noqa: E731
    run_bench(workloads=("W1", "W3"), impls={"a": noop, "b": noop}, epochs=1, repeats=1, threads=1,
              emit=lines.append)
    recs = [json.loads(line) for line in lines]
    assert [(r["workload"], r["impl"]) for r in recs] == [("sgemm 4096", "sgemm"), ("W1", "a"), ("W1", "b"),
                                                          ("W3", "a"), ("W3", "b")]
    assert recs[0]["gflops"] > 1 and recs[0]["threads"] == 1     # the ceiling, measured in the same run
    with pytest.raises(ValueError, match="unknown workload"):
        run_bench(workloads=("W9",), impls=("numpy",), emit=lines.append)


def test_bench_impls_time_every_impl_once_a_round_in_a_rotating_order(monkeypatch):
    """Set up and warmed up first, then per round one call of each impl and one sgemm product, each round starting
    one further along, so that a slow spell of the machine falls on all of them alike."""
    monkeypatch.setattr(bench, "SGEMM_N", 64)
    monkeypatch.setattr(bench, "PAUSE", 0)
    calls = []

    def fake(tag):
        def prepare(*args):
            calls.append(("prepare", tag))
            return lambda epochs: calls.append((tag, epochs))
        return prepare

    records, rounds = bench.bench_impls({"a": fake("a"), "b": fake("b")}, "W1", epochs=2, repeats=3, threads=1,
                                        sgemm=True)
    assert calls == [("prepare", "a"), ("a", 1), ("prepare", "b"), ("b", 1),   # warm-up epochs, untimed
                     ("a", 2), ("b", 2), ("b", 2), ("a", 2), ("a", 2), ("b", 2)]
    assert [list(r) for r in rounds] == [["a", "b", "sgemm"], ["b", "sgemm", "a"], ["sgemm", "a", "b"]]
    assert [r["impl"] for r in records] == ["a", "b"]
    assert records[0]["seconds_median"] == statistics.median(r["a"] for r in rounds)


def test_round_ratios_compare_within_each_round():
    """The ratio is taken round by round (against that round's best peer and sgemm), then the median: a machine
    twice as slow in one round moves no ratio."""
    from fastmlp.bench import SGEMM_N, round_ratios
    sgemm_gflop = 2 * SGEMM_N ** 3 / 1e9
    rounds = [{"fastmlp-cpu": 1.0, "numpy": 3.0, "torch": 2.0, "sgemm": sgemm_gflop / 100},
              {"fastmlp-cpu": 2.0, "numpy": 4.0, "torch": 6.0, "sgemm": sgemm_gflop / 50},   # everything slower
              {"fastmlp-cpu": 1.0, "numpy": 2.5, "torch": 2.0, "sgemm": sgemm_gflop / 100}]
    records = [{"workload": "W4", "impl": name, "gflops": 80.0 / statistics.median(r[name] for r in rounds),
                "seconds_median": statistics.median(r[name] for r in rounds)}
               for name in ("fastmlp-cpu", "numpy", "torch")]                # 80 GFLOP per call, every impl
    [line] = round_ratios(records, rounds)
    assert line["impl"] == "fastmlp-cpu" and line["rounds"] == 3 and line["best_peer"] == "torch"
    assert line["vs_best_peer"] == pytest.approx(2.0)                     # rounds: 2, 2 (numpy), 2
    assert line["of_sgemm"] == pytest.approx(0.8)                         # rounds: 80/100, 40/50, 80/100
    assert line["vs_best_peer_q1"] <= line["vs_best_peer"] <= line["vs_best_peer_q3"]
    assert round_ratios(records[1:], rounds) == []                        # no fastmlp impl, no line


@pytest.mark.parametrize("loss", ["mse", "hinge2"])
def test_the_loss_impls_train_the_cpu_engine_with_that_loss(monkeypatch, loss):
    monkeypatch.setattr(bench, "PAUSE", 0)
    from fastmlp import cpu_engine
    seen = []
    init = cpu_engine.Engine.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self.loss)
    monkeypatch.setattr(cpu_engine.Engine, "__init__", spy)
    lines = []
    run_bench(workloads=("W1",), impls=[f"fastmlp-cpu-{loss}"], epochs=1, repeats=1, threads=1, emit=lines.append,
              networks=2, sgemm=False)
    assert seen == [loss] and json.loads(lines[0])["impl"] == f"fastmlp-cpu-{loss}"


def test_numpy_split_over_processes_trains_the_numpy_baselines_networks():
    """numpy-procs deals the networks out to single-threaded processes: process i trains the NumPy baseline's
    networks of its share with seed + i, so its parameters are prepare_numpy's for that share, epoch for epoch."""
    from fastmlp.bench import prepare_numpy, prepare_numpy_procs
    g = np.random.default_rng(1)
    x = g.standard_normal((40, 6), dtype=np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int8)
    run = prepare_numpy_procs(x, y, 3, 8, 2, 10, 0.05, 7, processes=2)
    try:
        assert run(1) > 0 and run(2) > 0 and run.info() == {"processes": 2}
        got = run.params()
    finally:
        run.close()
    for (m, seed), params in zip([(2, 7), (1, 8)], got):
        expected = prepare_numpy(x, y, m, 8, 2, 10, 0.05, seed)(3)
        assert len(params) == len(expected) == 3
        for (W, b), (W_ref, b_ref) in zip(params, expected):
            assert np.array_equal(W, W_ref) and np.array_equal(b, b_ref)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="AVX2 is an x86 instruction set")
def test_bench_isa_avx2_restricts_the_engine_the_peers_and_sgemm():
    """`fastmlp bench --isa avx2` runs in a process of its own whose first line says what each library runs: the
    engine's AVX2 family compiled for Haswell, OpenBLAS's Haswell kernels (NumPy and the sgemm ceiling), NumPy's
    AVX-512 loops off; and its records name the target."""
    r = subprocess.run([sys.executable, "-m", "fastmlp.cli", "bench", "--isa", "avx2", "--workload", "W1", "--impl",
                        "numpy", "--repeats", "1", "--epochs", "1", "--networks", "2", "--no-sgemm"],
                       env={k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CPU", "OPENBLAS_CORE"))},
                       capture_output=True, text=True, check=True)
    first, *records = [json.loads(line) for line in r.stdout.splitlines()]
    assert first["isa"] == "avx2" and first["env"] == bench.isa_env("avx2")
    assert first["fastmlp-cpu"] == {"kernels": "avx2", "llvm_target": "haswell", "llvm_features": "the CPU name's"}
    assert [lib["architecture"] for lib in first["blas"] if lib["internal_api"] == "openblas"] in ([], ["Haswell"])
    assert "X86_V4" not in first.get("numpy_dispatch", []) and not any("AVX512" in f for f in first.get(
        "numpy_dispatch", []))
    assert [(rec["impl"], rec["device"].endswith("(llvm target haswell)")) for rec in records] == [("numpy", True)]
