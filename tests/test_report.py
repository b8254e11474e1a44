"""fastmlp.report: every generated number in the documents is what the committed data gives, and a changed value
in the data or in a document is caught.  No training: it reads docs/results/."""
import json
import math
import shutil
import statistics

import pytest

from fastmlp import plot, report
from fastmlp import store as store_mod

ROOT = report.ROOT


def copy_of_repo(tmp_path):
    """The documents, docs/results/ and docs/bench/ of the repository, in tmp_path."""
    for doc in report.DOCUMENTS:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / doc, tmp_path / doc)
    shutil.copytree(ROOT / report.RESULTS, tmp_path / report.RESULTS)
    shutil.copytree(ROOT / report.BENCH, tmp_path / report.BENCH)
    return tmp_path


def test_a_changed_benchmark_rate_is_reported(tmp_path):
    """The benchmark tables and the README's ratios come from the committed JSON lines of the runs too."""
    root = copy_of_repo(tmp_path)
    run = root / report.BENCH / "avx2-zen4-24acde3.jsonl"          # the AVX2 run the README cites
    assert "bench('avx2-zen4-24acde3'" in (root / "README.md").read_text()
    lines = [json.loads(line) for line in run.read_text().splitlines()]
    (w1,) = [r for r in lines if r.get("workload") == "W1" and "ratios" in r]
    assert w1["vs_best_peer"] > 1.2                                 # W1's median ratio to the best peer, lowered
    w1["vs_best_peer"] = 1.2
    run.write_text("".join(json.dumps(r) + "\n" for r in lines))
    found = dict(report.differences(root))
    assert set(found) == {"README.md", "docs/benchmarks.md"} and "1.20x" in found["docs/benchmarks.md"]


def test_the_benchmark_table_with_peers_bolds_the_fastest_rate_of_each_row(tmp_path):
    """table_bench(peers=True): a column per peer the run has, the fastest rate of a row in bold, whoever it is."""
    root = copy_of_repo(tmp_path)
    run = root / report.BENCH / "avx512-zen4.jsonl"
    lines = [json.loads(line) for line in run.read_text().splitlines()]
    (torch_w1,) = [r for r in lines if r.get("workload") == "W1" and r.get("impl") == "torch" and "gflops" in r]
    torch_w1["gflops"] = 1000.0
    run.write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = report.table_bench(report.Data(root), "avx512-zen4", peers=True).splitlines()
    assert table[0].split(" | ")[2:5] == ["NumPy, 2 processes", "NumPy batched", "PyTorch `bmm`"]
    w1 = next(row for row in table if row.startswith("| W1 ("))
    assert "**1000.0**" in w1 and w1.count("**") == 2


def test_every_generated_number_and_table_matches_the_committed_data():
    found = report.differences(ROOT)
    assert not found, "generated text differs (run `python -m fastmlp.report`):\n" + "".join(d for _, d in found)


def test_a_changed_value_in_a_job_table_is_reported(tmp_path):
    root = copy_of_repo(tmp_path)
    table = root / report.RESULTS / "repro-k1-jobs.csv"
    lines = table.read_text().splitlines(True)
    header = lines[0].rstrip("\n").split(",")
    col = {k: i for i, k in enumerate(header)}
    for i, line in enumerate(lines[1:], 1):     # 1-global, N = 8000, L = 3: the value the review found typed wrong
        cells = line.rstrip("\n").split(",")
        if cells[col["command"]] == "run" and cells[col["task"]] == "1-global" and cells[col["N"]] == "8000" \
                and cells[col["L"]] == "3":
            cells[col["test_error_mean"]] = "0.1180"
            lines[i] = ",".join(cells) + "\n"
            break
    else:
        pytest.fail("no such job in repro-k1-jobs.csv")
    table.write_text("".join(lines))
    found = dict(report.differences(root))
    assert set(found) == {"docs/results.md", f"{report.RESULTS}/repro-k1.csv"}
    assert "| 8000 | 0.094 ± 0.002 | 0.118 ± 0.001 |" in found["docs/results.md"]
    assert report.main(["--check", "--root", str(root)]) == 1
    assert report.main(["--root", str(root)]) == 0               # regenerate, and then it holds
    assert report.main(["--check", "--root", str(root)]) == 0
    assert "| 8000 | 0.094 ± 0.002 | 0.118 ± 0.001 |" in (root / "docs/results.md").read_text()


def test_a_hand_edited_number_in_a_document_is_reported(tmp_path):
    root = copy_of_repo(tmp_path)
    readme = root / "README.md"
    text = readme.read_text()
    marked = report.MARK.search(text)
    assert marked, "README.md quotes no generated number"
    value = marked.group(2)
    typed = "0.999" if value != "0.999" else "0.998"
    readme.write_text(text[:marked.start(2)] + typed + text[marked.end(2):])
    (path, diff), = report.differences(root)
    assert path == "README.md" and f">{typed}<" in diff and f">{value}<" in diff
    assert report.main(["--check", "--root", str(root)]) == 1


def test_an_expression_that_selects_nothing_or_too_much_is_an_error():
    ns = report.namespace(report.Data(ROOT))
    with pytest.raises(report.ReportError, match="no job"):
        report.evaluate("m('repro-k1', '1-local', 123, 1)", ns)
    with pytest.raises(report.ReportError, match="differ in H"):
        report.evaluate("m('expressivity-quick', '2-local', 16000, 1)", ns)   # two widths at one point
    with pytest.raises(report.ReportError, match="NameError"):
        report.evaluate("open('x')", ns)                                     # nothing but the namespace
    assert report.evaluate("m('expressivity-quick', '2-local', 16000, 1, H=5)", ns) == "0.088"


def test_two_repeats_are_the_values_of_a_jobs_mean_and_std_and_durations_read_as_typed():
    ns = report.namespace(report.Data(ROOT))
    point = ("pilot-local", "3-local", 32000, 5)                  # one repeat converged, one hit the cap
    lo, hi = ns["two_repeats"](*point)
    r = ns["job"](*point)
    assert lo < hi and statistics.mean([lo, hi]) == pytest.approx(r["test_error_mean"])
    assert statistics.stdev([lo, hi]) == pytest.approx(r["test_error_std"])
    with pytest.raises(report.ReportError, match="not two"):
        ns["two_repeats"]("repro-k1", "1-local", 1000, 1)           # five repeats
    assert [report.duration(s) for s in (32.4, 59.6, 280.8, 3599.6, 5820)] == \
        ["32 s", "1 min 0 s", "4 min 41 s", "1 h 0 min", "1 h 37 min"]


def test_without_diverged_is_the_statistics_of_the_other_repeats():
    values = [0.11, 0.5, 0.12, 0.5, 0.10]                       # two repeats diverged (0.5 by the protocol's rule)
    mean, std = statistics.mean(values), statistics.stdev(values)
    m, s, n = plot.without_diverged(mean, std, 5, 2)
    assert n == 3 and m == pytest.approx(0.11) and s == pytest.approx(statistics.stdev([0.11, 0.12, 0.10]))
    assert plot.without_diverged(0.5, 0.0, 5, 5) == (None, None, 0)
    m, s, n = plot.combined([(statistics.mean(values[:2]), statistics.stdev(values[:2]), 2),
                             (statistics.mean(values[2:]), statistics.stdev(values[2:]), 3)])
    assert (m, s, n) == (pytest.approx(mean), pytest.approx(std), 5)


def row(seed, mean, std, n=5, L=1, diverged=0):
    return {"seed": seed, "test_error_mean": mean, "test_error_std": std, "test_error_n": n, "L": L,
            "diverged": diverged, "not_converged": 0, "command": "run"}


def test_a_points_error_bar_is_over_data_seeds_where_it_has_several():
    p = plot.point([row(0, 0.30, 0.01), row(1, 0.32, 0.02), row(2, 0.31, 0.05)])
    assert p["mean"] == pytest.approx(0.31) and p["std"] == pytest.approx(0.01) and p["n_seeds"] == 3
    p = plot.point([row(0, 0.30, 0.01)])
    assert p["std"] == 0.01 and p["n_seeds"] == 1                # one seed: the repeats' spread


def test_a_depth_difference_is_paired_over_seeds_or_welch_over_repeats():
    a = [row(s, m, 0.01) for s, m in enumerate((0.30, 0.32, 0.31))]
    b = [row(s, m, 0.01, L=3) for s, m in enumerate((0.25, 0.26, 0.27))]
    d, lo, hi, how = report.difference(a, b)
    diffs = [-0.05, -0.06, -0.04]
    half = 4.302652729911275 * statistics.stdev(diffs) / math.sqrt(3)      # t(0.975, 2)
    assert how == "3 seeds" and d == pytest.approx(-0.05) and (lo, hi) == (pytest.approx(-0.05 - half),
                                                                          pytest.approx(-0.05 + half))
    d, lo, hi, how = report.difference([row(0, 0.30, 0.01)], [row(0, 0.28, 0.01, L=3)])
    assert how == "repeats" and d == pytest.approx(-0.02) and lo < -0.02 < hi and hi < 0   # Welch, df = 8
    assert hi - d == pytest.approx(2.306004135 * math.sqrt(2 * 0.01 ** 2 / 5))


def test_a_point_with_diverged_repeats_is_drawn_and_tabled_without_them_too():
    deep = [0.15] * 4 + [0.5]                                     # one of five repeats diverged
    rows = [{"id": str(L), "status": "done", "command": "run", "task": "2-local", "D": 500, "seed": 0, "N": 8000,
             "L": L, "lr": None, "test_error_mean": mean, "test_error_std": std, "test_error_n": 5,
             "diverged": div, "not_converged": 0}
            for L, mean, std, div in ((1, 0.20, 0.01, 0),
                                      (3, statistics.mean(deep), statistics.stdev(deep), 1))]
    fig, points = plot.figure(rows, "N")
    deep = next(p for p in points if p["L"] == 3)
    assert deep["diverged"] == 1 and deep["mean_without_diverged"] == pytest.approx(0.15)
    crosses = [line for line in fig.axes[0].get_lines() if line.get_marker() == "x"]
    assert [list(line.get_ydata()) for line in crosses] == [[pytest.approx(0.15)]]
    assert report.cell(deep) == "0.220 ± 0.157 (1 of 5 diverged; 0.150 ± 0.000 without them)"


def test_tables_of_a_sweep_still_running_say_what_is_missing_and_cells_of_jobs_say_how_long(tmp_path):
    """table_depth of a partial store marks a point with fewer data seeds and one not run; table_diff leaves out an
    N with one depth; table_jobs writes one job per cell with its epochs and notes."""
    def job(i, L, N, seed, mean, lr=None, stop="zero-error", capped=0):
        return {"id": str(i), "status": "done", "command": "run", "task": "2-local", "D": 500, "seed": seed, "N": N,
                "L": L, "H": 100, "lr": lr, "stop": stop, "test_error_mean": mean, "test_error_std": 0.01,
                "test_error_n": 5, "converged": 5 - capped, "diverged": 0, "not_converged": capped, "epochs_min": 12,
                "epochs_max": 40, "wall_s": 1.0}
    rows = [job(i, 1, 100, s, 0.30 + 0.01 * s) for i, s in enumerate((0, 1, 2))]
    rows += [job(3, 3, 100, 0, 0.25), job(4, 1, 200, 0, 0.20), job(5, 3, 200, 0, 0.22, lr=0.5, stop="loss", capped=1)]
    (tmp_path / report.RESULTS).mkdir(parents=True)
    with open(tmp_path / report.RESULTS / "x-jobs.csv", "w") as f:
        store_mod.write_csv(f, list(rows[-1]), rows)
    data = report.Data(tmp_path)
    text = report.table_depth(data, "x", "2-local", Ls=(1, 3), bold=True, seeds=(0, 1, 2), H=100)
    assert "| 100 | 0.310 ± 0.010 | **0.250 ± 0.010** [seed 0 only] |" in text, text
    assert "| 200 | **0.200 ± 0.010** [seed 0 only] | 0.220 ± 0.010 (1 capped) [seed 0 only] |" in text, text
    text = report.table_depth(data, "x", "2-local", Ls=(1, 3), bold=True, seeds=(0, 1, 2), stop="zero-error")
    assert "| 200 | 0.200 ± 0.010 [seed 0 only] | not run yet |" in text, text   # L = 3 at N = 200 stopped by loss
    diffs = report.table_diff(data, "x", ["2-local"], pairs=((1, 3),), stop="zero-error")
    assert "| 2-local | 100 |" in diffs and "| 2-local | 200 |" not in diffs
    cells = report.table_jobs(data, "x", [("L = 3", {"L": 3})], [("zero", {"stop": "zero-error"}),
                                                                 ("loss", {"stop": "loss", "lr": 0.5})])
    assert cells.splitlines()[-1] == ("| L = 3 | 0.250 ± 0.010, 12 to 40 epochs | 0.220 ± 0.010, 12 to 40 epochs "
                                      "(1 capped) |")
    assert report.namespace(data)["wall_all"]("x") == 6.0


def test_capped_best_lists_the_points_whose_lowest_depth_hit_the_epoch_cap(tmp_path):
    def job(i, L, N, mean, capped):
        return {"id": str(i), "status": "done", "command": "run", "task": "3-global", "D": 40, "seed": 0, "N": N,
                "L": L, "H": 100, "lr": None, "test_error_mean": mean, "test_error_std": 0.01, "test_error_n": 5,
                "converged": 5 - capped, "diverged": 0, "not_converged": capped, "wall_s": 1.0}
    rows = [job(0, 1, 100, 0.30, 5), job(1, 3, 100, 0.40, 0),     # the best, L = 1, capped: listed
            job(2, 1, 200, 0.30, 0), job(3, 3, 200, 0.25, 2),     # the best, L = 3, capped: listed
            job(4, 1, 300, 0.20, 0), job(5, 3, 300, 0.30, 5),     # a capped depth that is not the best: not
            job(6, 1, 400, 0.49, 5), job(7, 3, 400, 0.50, 0)]     # at chance: not
    (tmp_path / report.RESULTS).mkdir(parents=True)
    with open(tmp_path / report.RESULTS / "x-jobs.csv", "w") as f:
        store_mod.write_csv(f, list(rows[0]), rows)
    found = report.namespace(report.Data(tmp_path))["capped_best"](["x"])
    assert [(r["N"], r["L"], r["not_converged"], r["n"]) for r in found] == [(100, 1, 5, 5), (200, 3, 2, 5)]
