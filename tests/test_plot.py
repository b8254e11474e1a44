"""`fastmlp plot`: figures from real stores of tiny sweeps, checked on the matplotlib objects, the PNG and the CSV."""
import csv
import statistics
import textwrap

import pytest
from click.testing import CliRunner
from conftest import NETWORKS_AND_NTK

from fastmlp import sweep
from fastmlp.cli import main
from fastmlp.plot import plot_store, plot_table
from fastmlp.store import Store
from fastmlp.errors import UsageError

FIGURE_N = NETWORKS_AND_NTK   # two tasks x two N x two depths of networks and the NTK of the same points

# One task at one N, three learning rates x two depths, and the NTK of both depths.
FIGURE_LR = """\
task = "1-local"
D = 10
N = 40
L = [1, 2]
repeats = 2
n-test = 200

[[grid]]
H = 8
lr = [0.03, 0.1, 0.3]
max-epochs = 30

[[grid]]
command = "ntk"
"""


def make_store(tmp_path, text, name="store", *overrides):
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    args = [a for o in overrides for a in ("--set", o)]
    result = CliRunner().invoke(main, ["sweep", str(path), "--store", str(tmp_path / name), *args])
    assert result.exit_code == 0, result.output
    return tmp_path / name


def errorbars(ax):
    from matplotlib.container import ErrorbarContainer   # here: `pytest -m gpu` collects this file without it
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def labels(ax):
    return sorted(c.get_label() for c in errorbars(ax))


def read_csv(path):
    return list(csv.DictReader(path.open()))


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_against_n_a_panel_per_task_a_curve_per_depth_and_the_ntk(tmp_path):
    store = make_store(tmp_path, FIGURE_N)
    fig, points = plot_store(store, tmp_path / "fig.png")
    assert [ax.get_title() for ax in fig.axes] == ["1-global (D = 10)", "1-local (D = 10)"]
    for ax in fig.axes:
        assert labels(ax) == ["L = 1", "L = 2", "NTK L = 1", "NTK L = 2"]
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "training samples N"
        for container in errorbars(ax):
            line = container.lines[0]
            assert list(line.get_xdata()) == [40, 80]
            assert line.get_linestyle() == ("--" if container.get_label().startswith("NTK") else "-")
    assert_png(tmp_path / "fig.png")
    rows = read_csv(tmp_path / "fig.csv")
    assert len(rows) == len(points) == 2 * 4 * 2
    # every point is the mean and std of the repeats of its job
    by_config = {(r["config"]["task"], r["config"]["N"], r["config"]["L"], r["command"]): r
                 for r in Store(store, create=False).records()}
    for row in rows:
        rec = by_config[(row["panel"].split()[0], int(row["x"]), int(row["L"]), row["command"])]
        te = (rec["record"]["final"] if rec["command"] == "run" else rec["record"])["test_error"]
        assert float(row["mean"]) == pytest.approx(te["mean"]) and float(row["std"]) == pytest.approx(te["std"])
        assert row["n_values"] == "2" and row["n_jobs"] == "1"
        assert row["not_converged"] == ("" if rec["command"] == "ntk" else str(rec["record"]["final"]["not_converged"]))
    # a point whose repeats did not all reach zero training error is drawn hollow, once
    hollow = [(line.get_xdata()[i], line.get_ydata()[i]) for ax in fig.axes for line in ax.get_lines()
              if line.get_markerfacecolor() == "white" for i in range(len(line.get_xdata()))]
    expected = [(p["x"], p["mean"]) for p in points if p["not_converged"]]
    assert sorted(hollow) == sorted(expected) and expected             # 30 epochs: some repeats stop at the cap
    assert fig._suptitle.get_text() == "hollow markers: some repeats hit the epoch cap"


def test_against_lr_a_curve_per_depth_and_the_ntk_as_lines(tmp_path):
    store = make_store(tmp_path, FIGURE_LR)
    fig, points = plot_store(store, tmp_path / "lr.png")            # auto: the sweep varies lr
    (ax,) = fig.axes
    assert ax.get_title() == "1-local (D = 10), N = 40" and ax.get_xlabel() == "learning rate"
    assert labels(ax) == ["L = 1", "L = 2"]
    assert all(list(c.lines[0].get_xdata()) == [0.03, 0.1, 0.3] for c in errorbars(ax))
    ntk_lines = [line for line in ax.get_lines() if line.get_label().startswith("NTK")]
    assert sorted(line.get_label() for line in ntk_lines) == ["NTK L = 1", "NTK L = 2"]
    assert all(len(set(line.get_ydata())) == 1 for line in ntk_lines)   # horizontal
    assert_png(tmp_path / "lr.png")
    assert len(read_csv(tmp_path / "lr.csv")) == len(points) == 2 * 3 + 2
    # against N, a fixed lr splits the curves, and so does a searched lr (runs without --lr) beside them
    make_store(tmp_path, FIGURE_LR.replace("lr = [0.03, 0.1, 0.3]", "folds = 2\nbo-calls = 2"), "store")
    fig, points = plot_store(store, tmp_path / "n.png", x="N")
    assert labels(fig.axes[0]) == [f"L = {L}, lr = {lr}" for L in (1, 2) for lr in (0.03, 0.1, 0.3, "searched")] \
        + ["NTK L = 1", "NTK L = 2"]
    assert {p["n_values"] for p in points} == {2}


def test_a_varying_setting_splits_curves_and_seeds_pool(tmp_path):
    store = make_store(tmp_path, FIGURE_N, "store", "task=1-local", "H=8,16", "seed=0,1")
    fig, points = plot_store(store, tmp_path / "fig.png")
    (ax,) = fig.axes
    assert labels(ax) == ["L = 1, H = 16", "L = 1, H = 8", "L = 2, H = 16", "L = 2, H = 8", "NTK L = 1",
                          "NTK L = 2"]
    assert [c.get_label() for c in errorbars(ax)][:2] == ["L = 1, H = 8", "L = 1, H = 16"]   # numeric order
    assert {(p["n_values"], p["n_jobs"]) for p in points} == {(4, 2)}   # two seeds x two repeats per point


def test_an_old_he_store_and_new_torch_jobs_are_two_curves(tmp_path):
    store = make_store(tmp_path, FIGURE_N, "store", "task=1-local", "L=1", "init=he")   # stored as before init
    make_store(tmp_path, FIGURE_N, "store", "task=1-local", "L=1", "init=torch")
    fig, points = plot_store(store, tmp_path / "fig.png")
    assert labels(fig.axes[0]) == ["L = 1, init = he", "L = 1, init = torch", "NTK L = 1"]


def test_a_setting_that_changes_only_with_x_does_not_split_curves(tmp_path):
    # an epoch cap grown as lr shrinks: one [[grid]] per lr, so max-epochs differs only from one lr to another
    grids = "".join(f"\n[[grid]]\nH = 8\nlr = {lr}\nmax-epochs = {cap}\n" for lr, cap in ((0.03, 60), (0.1, 30)))
    store = make_store(tmp_path, FIGURE_LR.split("[[grid]]")[0] + grids)
    fig, points = plot_store(store, tmp_path / "lr.png")
    assert labels(fig.axes[0]) == ["L = 1, max-epochs set per lr", "L = 2, max-epochs set per lr"]
    assert all(list(c.lines[0].get_xdata()) == [0.03, 0.1] for c in errorbars(fig.axes[0]))
    # the same cap at both lr as well as the grown one: now two values meet at one lr, and they split the curves
    make_store(tmp_path, FIGURE_LR.split("[[grid]]")[0] + grids.replace("= 60", "= [30, 60]"))
    fig, points = plot_store(store, tmp_path / "lr.png")
    assert labels(fig.axes[0]) == [f"L = {L}, max-epochs = {cap}" for L in (1, 2) for cap in (30, 60)]


def test_tasks_that_differ_in_indices_are_not_pooled(tmp_path):
    store = make_store(tmp_path, 'command = "ntk"\ntask = "1-local"\nD = 10\nN = [40, 80]\nL = [1, 2]\n'
                               'repeats = 2\nn-test = 200\n')
    for rec in Store(store).records():      # the same jobs again, relabelled as another index set of the task
        Store(store).write({**rec, "id": "0" + rec["id"][1:], "config": {**rec["config"], "indices": "3"}})
    fig, points = plot_store(store, tmp_path / "fig.png")
    assert labels(fig.axes[0]) == ["NTK L = 1, indices = 0", "NTK L = 1, indices = 3", "NTK L = 2, indices = 0",
                                   "NTK L = 2, indices = 3"]
    assert {p["n_jobs"] for p in points} == {1}


def test_failed_jobs_are_left_out_and_counted(tmp_path):
    store = make_store(tmp_path, FIGURE_N, "store", "task=1-local")
    job = sweep.Job("f" * 16, "run", {**Store(store, create=False).records()[0]["config"], "N": 60})
    Store(store).write(sweep.job_record(job, "failed", None, {"type": "MemoryError", "message": "m",
                                                              "traceback": ""}, None, "t", 1.0))
    fig, points = plot_store(store, tmp_path / "fig.png")
    assert all(p["x"] != 60 for p in points) and len(points) == 8
    assert fig._suptitle.get_text().startswith("1 failed jobs left out")


def test_nothing_to_plot_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no done jobs"):
        plot_store(tmp_path / "empty", tmp_path / "x.png")
    store = make_store(tmp_path, 'command = "ntk"\ntask = "1-local"\nD = 10\nN = [40, 80]\nn-test = 200\n')
    with pytest.raises(UsageError, match="fixed lr"):
        plot_store(store, tmp_path / "x.png", x="lr")
    with pytest.raises(UsageError, match="x must be one of auto, N, lr"):
        plot_store(store, tmp_path / "x.png", x="n")
    result = CliRunner().invoke(main, ["plot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "no result store" in result.output


def test_plot_command_writes_the_picture_and_the_numbers(tmp_path):
    store = make_store(tmp_path, FIGURE_N)
    result = CliRunner().invoke(main, ["plot", str(store), "--out", str(tmp_path / "fig.png")])
    assert result.exit_code == 0, result.output
    assert "2 panels, 8 curves, 16 points" in result.output
    assert_png(tmp_path / "fig.png")
    assert len(read_csv(tmp_path / "fig.csv")) == 16


def test_against_init_scale_a_panel_per_task_and_n_a_curve_per_depth(tmp_path):
    store = make_store(tmp_path, FIGURE_N, "store", "task=1-local", "N=40", "init=torch", "init-scale=0.5,1,2")
    fig, points = plot_store(store, tmp_path / "scale.png", x="init-scale")
    (ax,) = fig.axes
    assert labels(ax) == ["L = 1", "L = 2"]                      # the NTK does not depend on the initialization
    assert all(list(c.lines[0].get_xdata()) == [0.5, 1.0, 2.0] for c in errorbars(ax))
    assert {p["x_name"] for p in points} == {"init-scale"} and len(points) == 6
    assert ax.get_xlabel().startswith("initial scale")


def test_error_bars_are_over_data_seeds_and_a_job_table_redraws_the_figure(tmp_path):
    store = make_store(tmp_path, FIGURE_N, "store", "task=1-local", "seed=0,1")
    fig, points = plot_store(store, tmp_path / "store.png")
    recs = [r for r in Store(store, create=False).records() if r["command"] == "run"]
    for p in (p for p in points if p["command"] == "run"):
        seed_means = [(r["record"]["final"]["test_error"]["mean"]) for r in recs
                      if r["config"]["N"] == p["x"] and r["config"]["L"] == p["L"]]
        assert p["n_seeds"] == 2 and p["std"] == pytest.approx(statistics.stdev(seed_means))   # not all 4 networks
        assert p["mean"] == pytest.approx(statistics.mean(seed_means))
    result = CliRunner().invoke(main, ["collect", str(store), "--csv", str(tmp_path / "jobs.csv")])
    assert result.exit_code == 0, result.output
    plot_table(tmp_path / "jobs.csv", tmp_path / "table.png")
    assert read_csv(tmp_path / "table.csv") == read_csv(tmp_path / "store.csv")
    assert_png(tmp_path / "table.png")
