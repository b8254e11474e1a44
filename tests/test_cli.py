"""The command line: one JSON object with --json, exit status 2 and one line on bad input, data = train's data."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastmlp import reference
from fastmlp.cli import main
from fastmlp.train import expand, int_ranges
from fastmlp.tasks import generate, parse_task

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_info_json_lists_cpu_backend():
    r = run("info", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["backends"]["cpu"]["threads"] >= 1
    assert "numba" in out["versions"]


def test_threads_sets_the_engines_threads_and_refuses_more_than_numba_started_with():
    import numba
    most = numba.config.NUMBA_NUM_THREADS
    try:
        r = run("--threads", 1, "train", "1-local", "--D", 10, "--N", 60, "--H", 8, "--lr", 0.1, "--seeds", "0-2",
                "--max-epochs", 5, "--n-test", 50, "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["provenance"]["threads"] == 1 and numba.get_num_threads() == 1
        r = run("--threads", most + 1, "info")
        assert r.exit_code == 2 and f"NUMBA_NUM_THREADS={most + 1}" in r.stderr and len(r.stderr.splitlines()) == 1
        assert run("--threads", 0, "info").exit_code == 2
    finally:
        from fastmlp.backend import set_cpu_threads
        set_cpu_threads(most)     # Numba's threads and the BLAS's, for the tests after this one


def test_data_writes_the_samples_train_uses(tmp_path):
    path = tmp_path / "d.npz"
    r = run("data", "2-global", "--D", 12, "--N", 37, "--seed", 5, "--split", "test", "--out", path)
    assert r.exit_code == 0, r.output
    saved = np.load(path)
    x, y = generate(parse_task("2-global", D=12), 5, "test", 0, 37)
    assert saved["x"].dtype == np.float32 and saved["y"].dtype == np.int8
    np.testing.assert_array_equal(saved["x"], x)
    np.testing.assert_array_equal(saved["y"], y)


def test_train_json_has_one_record_per_network():
    r = run("train", "2-local", "--D", 20, "--N", 200, "--L", 2, "--H", 16, "--lr", "0.05,0.2", "--seeds", "0-2",
            "--n-test", 500, "--max-epochs", 30, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)                      # exactly one JSON object on stdout
    nets = out["networks"]
    assert len(nets) == 6
    assert [n["lr"] for n in nets] == [0.05] * 3 + [0.2] * 3
    assert [n["seed"] for n in nets] == [0, 1, 2] * 2
    for n in nets:
        assert 1 <= n["epochs"] <= 30
        assert 0.0 <= n["test_error"] <= 1.0 and n["test_loss"] > 0
        assert n["converged"] == (n["train_error"] == 0.0)
    assert out["summary"]["n_networks"] == 6
    assert out["throughput"]["network_samples_per_s"] > 0
    assert out["provenance"]["threads"] >= 1


def test_train_records_the_initialization_and_uses_it():
    common = ("train", "1-local", "--D", 10, "--N", 100, "--L", 2, "--H", 12, "--lr", "0.1", "--seeds", "0,1",
              "--n-test", 500, "--max-epochs", 5, "--json")
    outs = {args: json.loads(run(*common, *args).stdout) for args in
            ((), ("--init", "he"), ("--init", "torch"), ("--init", "torch", "--init-scale", "0.5"))}
    for args, out in outs.items():
        init = args[1] if args else reference.DEFAULT_INIT
        scale = float(args[3]) if len(args) > 2 else 1.0
        assert (out["config"]["init"], out["config"]["init_scale"]) == (init, scale)
    losses = {args: [n["train_loss"] for n in out["networks"]] for args, out in outs.items()}
    assert len({tuple(v) for v in losses.values()}) == 3                      # the schemes train differently
    assert losses[()] == losses[("--init", reference.DEFAULT_INIT)]           # the default is the named scheme


def test_train_saves_parameters_that_reproduce_the_test_error(tmp_path):
    path = tmp_path / "p.npz"
    r = run("train", "1-local", "--D", 10, "--N", 100, "--L", 2, "--H", 12, "--lr", "0.1,0.3", "--n-test", 1000,
            "--save-params", path, "--json")
    assert r.exit_code == 0, r.output
    nets = json.loads(r.stdout)["networks"]
    saved = np.load(path)
    params = [(saved[f"W{l}"].astype(np.float64), saved[f"b{l}"].astype(np.float64)) for l in range(3)]
    assert params[0][0].shape == (2, 10, 12) and params[2][0].shape == (2, 12, 2)
    np.testing.assert_array_equal(saved["lr"], [0.1, 0.3])
    x, y = generate(parse_task("1-local", D=10), 0, "test", 0, 1000)
    err, loss = reference.evaluate(params, reference.layer_scales(10, 12, 2), x, y)
    np.testing.assert_allclose(err, [n["test_error"] for n in nets], atol=2e-3)   # float32 vs float64 ties
    np.testing.assert_allclose(loss, [n["test_loss"] for n in nets], rtol=1e-4)


def test_train_diverged_network_is_reported_not_crashed():
    r = run("train", "1-local", "--D", 10, "--N", 100, "--H", 8, "--lr", "0.1,1000", "--n-test", 100, "--json")
    assert r.exit_code == 0, r.output
    nets = json.loads(r.stdout)["networks"]
    assert nets[1]["diverged"] and not nets[1]["converged"]
    assert nets[1]["train_loss"] is None           # NaN is not JSON; null says "no finite loss"


@pytest.mark.parametrize("args, option", [
    (["train", "3-local", "--D", 2, "--lr", 0.1], "--D"),
    (["train", "temperature", "--beta1", 0.5, "--lr", 0.1], "--beta1"),
    (["train", "2-local", "--lr", 0], "--lr"),
    (["train", "2-local", "--lr", "-0.1"], "--lr"),
    (["train", "2-local", "--lr", 0.1, "--N", 0], "--N"),
    (["train", "2-local", "--lr", 0.1, "--H", 0], "--H"),
    (["train", "5-lokal", "--lr", 0.1], "TASK"),
    (["data", "2-local", "--N", 0, "--out", "x.npz"], "--N"),
    (["train", "2-local", "--lr", 0.1, "--param", "ntk", "--sigma-b2", -1], "--sigma-b2"),
    (["train", "2-local", "--lr", 0.1, "--init", "xavier"], "--init"),
    (["run", "2-local", "--lr", 0.1, "--init-scale", 0], "--init-scale"),
    (["train", "2-local", "--lr", 0.1, "--init-scale", "inf"], "--init-scale"),
    (["run", "2-local", "--lr", 0.1, "--init-scale", "-2"], "--init-scale"),
    (["train", "2-local", "--lr", 0.1, "--param", "ntk", "--init", "torch"], "--init"),
    (["run", "2-local", "--lr", 0.1, "--param", "ntk", "--init", "he"], "--init"),
    (["train", "2-local", "--lr", 0.1, "--loss", "l1"], "--loss"),
    (["train", "2-local", "--lr", 0.1, "--stop", "loss"], "--target-loss"),
    (["run", "2-local", "--lr", 0.1, "--stop", "loss", "--target-loss", 0], "--target-loss"),
    (["train", "2-local", "--lr", 0.1, "--stop", "loss", "--target-loss", "-1"], "--target-loss"),
    (["train", "2-local", "--lr", 0.1, "--target-loss", "0.1"], "--target-loss"),
    (["train", "2-local", "--lr", 0.1, "--stop", "never"], "--stop"),
])
def test_bad_input_exits_2_with_one_line(args, option):
    r = run(*args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastmlp: error:") and option in lines[0]


def test_int_list_parsing():
    assert expand(int_ranges("0-3,7", "--seeds")) == [0, 1, 2, 3, 7]
    assert expand(int_ranges("5", "--seeds")) == [5]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^(python -m pip install '\.\[test\]'.*)$", readme, flags=re.M)
    assert len(commands) == 1
    assert commands[0] in ci.splitlines()


def test_train_saves_the_function_on_the_test_points_and_ntk_its_predictor(tmp_path):
    common = ("1-local", "--D", 10, "--N", 120, "--n-test", 300)
    r = run("train", *common, "--L", 2, "--H", 16, "--lr", "0.2", "--seeds", "0,1", "--param", "ntk", "--loss", "mse",
            "--stop", "loss", "--target-loss", "0.01", "--max-epochs", 3000, "--save-outputs", tmp_path / "net.npz",
            "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["config"]["loss"], out["config"]["stop"], out["config"]["target_loss"]) == ("mse", "loss", 0.01)
    assert all(n["stopped_by"] == "target-loss" and n["train_loss"] <= 0.01 for n in out["networks"])
    saved = np.load(tmp_path / "net.npz")
    assert saved["f"].shape == (2, 300) and set(np.unique(saved["y"])) == {-1, 1}
    for f, n in zip(saved["f"], out["networks"]):                   # the sign of f is the prediction
        assert np.mean(np.sign(f) != saved["y"]) == pytest.approx(n["test_error"], abs=1e-9)
    r = run("ntk", *common, "--L", 2, "--repeats", 1, "--save-outputs", tmp_path / "ntk.npz", "--json")
    assert r.exit_code == 0, r.output
    kernel = np.load(tmp_path / "ntk.npz")
    np.testing.assert_array_equal(kernel["y"], saved["y"])          # the same test points
    assert kernel["f"].shape == (1, 300)
    assert np.mean(np.sign(kernel["f"][0]) != kernel["y"]) == pytest.approx(json.loads(r.stdout)["test_error"]["mean"])
