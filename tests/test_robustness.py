"""Nothing lost, nothing silently wrong: every output checked before the work, every size before its allocation, one
rule for a diverged network, one definition of a job record, and a store written safely (see also test_ntk.py for
finite kernels and test_sweep.py for a store shared by several sweeps)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import NETWORKS_AND_NTK

from fastmlp import protocol, sweep
from fastmlp.cli import main, ntk as ntk_command, run as run_command, sweep_keys
from fastmlp.errors import UsageError
from fastmlp.store import Store

SCHEMAS = {"run": sweep_keys(run_command), "ntk": sweep_keys(ntk_command)}
TINY = 'task = "1-local"\nD = 10\nH = 8\nlr = 0.1\nrepeats = 2\nn-test = 200\nmax-epochs = 30\nN = [40, 60]\nL = 1\n'
TRAIN = ("train", "1-local", "--D", 10, "--N", 60, "--H", 8, "--n-test", 100, "--max-epochs", 20)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *words):
    """The result is exit status 2 with exactly one line on stderr, naming every word."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastmlp: error:"), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _writable(directory):
    try:
        (directory / "probe").write_text("x")
    except OSError:
        return False
    (directory / "probe").unlink()
    return True


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot create files in: mode 0555, and for root (whom modes do not stop) the
    immutable attribute; skipped where neither works."""
    d = tmp_path / "ro"
    d.mkdir()
    os.chmod(d, 0o555)
    immutable = False
    if _writable(d) and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
        immutable = True
    try:
        if _writable(d):
            pytest.skip("cannot make a directory read-only here")
        yield d
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(d)], check=True)
        os.chmod(d, 0o755)


@pytest.fixture
def tiny_store(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(NETWORKS_AND_NTK)
    assert cli("sweep", path, "--store", tmp_path / "store", "--set", "task=1-local", "--set", "N=40").exit_code == 0
    return tmp_path / "store"


# --------------------------------------------------------------------------------- outputs, before the work
@pytest.mark.parametrize("args, words", [
    (["run", "1-local", "--D", 10, "--N", 40, "--H", 8, "--lr", 0.1, "--repeats", 2, "--n-test", 100, "--json",
      "--out", "{tmp}/nodir/x.json"], ["--out", "nodir", "does not exist"]),
    (["run", "1-local", "--D", 10, "--N", 40, "--H", 8, "--lr", 0.1, "--repeats", 2, "--n-test", 100,
      "--out", "{tmp}"], ["--out", "is a directory"]),
    ([*TRAIN, "--lr", 0.1, "--save-params", "{tmp}/nodir/p.npz"], ["--save-params", "does not exist"]),
    ([*TRAIN, "--lr", 0.1, "--save-params", "{tmp}/p.txt"], ["--save-params", ".npz"]),
    (["data", "1-local", "--N", 10, "--out", "{tmp}/nodir/d.npz"], ["--out", "does not exist"]),
    (["data", "1-local", "--N", 10, "--out", "{tmp}/d"], ["--out", ".npz"]),
])
def test_an_output_that_cannot_be_written_is_refused_before_any_network_trains(tmp_path, engine_calls, args, words):
    result = cli(*[str(a).format(tmp=tmp_path) for a in args])
    one_line_error(result, *words)
    assert result.stdout == "" and engine_calls == []
    assert not (tmp_path / "nodir").exists() and not list(tmp_path.glob("*.npz"))


def test_outputs_of_collect_and_plot_are_checked_first(tmp_path, tiny_store):
    for args, words in (
            (["collect", tiny_store, "--csv", tmp_path / "nodir" / "t.csv"], ["--csv", "does not exist"]),
            (["collect", tiny_store, "--jsonl", tmp_path / "nodir" / "t.jsonl"], ["--jsonl", "does not exist"]),
            (["collect", tiny_store, "--csv", tmp_path / "t", "--jsonl", tmp_path / "t"], ["--csv", "--jsonl",
                                                                                         "same file"]),
            (["plot", tiny_store, "--out", tmp_path / "nodir" / "f.png"], ["--out", "does not exist"]),
            (["plot", tiny_store, "--out", tmp_path / "f.xyz"], ["--out", "'.xyz'", ".png"]),
            (["plot", tiny_store, "--out", tmp_path / "f"], ["--out", "(none)"]),
            (["plot", tiny_store, "--out", tmp_path / "f.csv"], ["--out", "'.csv'"])):
        one_line_error(cli(*args), *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "t.toml"]   # nothing written
    assert cli("collect", tiny_store, "--csv", "-", "--jsonl", tmp_path / "t.jsonl").exit_code == 0


def test_an_unwritable_directory_is_refused_for_every_output(tmp_path, read_only_dir, engine_calls):
    one_line_error(cli("run", "1-local", "--D", 10, "--N", 40, "--lr", 0.1, "--out", read_only_dir / "x.json"),
                   "--out", "cannot write in")
    one_line_error(cli(*TRAIN, "--lr", 0.1, "--save-params", read_only_dir / "p.npz"), "--save-params")
    one_line_error(cli("data", "1-local", "--N", 10, "--out", read_only_dir / "d.npz"), "--out")
    assert engine_calls == []


def test_a_read_only_store_is_refused_before_the_first_job(tmp_path, read_only_dir, engine_calls):
    (tmp_path / "s.toml").write_text(TINY)
    line = one_line_error(cli("sweep", tmp_path / "s.toml", "--store", read_only_dir), "the store", "not writable")
    assert str(read_only_dir) in line and engine_calls == []
    (tmp_path / "file").write_text("")
    one_line_error(cli("sweep", tmp_path / "s.toml", "--store", tmp_path / "file" / "store"), "cannot create")
    one_line_error(cli("sweep", tmp_path / "s.toml", "--store", read_only_dir / "new"), "cannot create")
    assert engine_calls == []


def test_a_missing_store_is_created_and_said_so(tmp_path):
    (tmp_path / "s.toml").write_text(TINY)
    result = cli("sweep", tmp_path / "s.toml", "--store", tmp_path / "a" / "b", "--set", "N=40")
    assert result.exit_code == 0 and f"store {tmp_path / 'a' / 'b'} (created)" in result.output
    again = cli("sweep", tmp_path / "s.toml", "--store", tmp_path / "a" / "b", "--set", "N=40")
    assert "(created)" not in again.output


def test_run_out_writes_the_record_it_prints(tmp_path):
    result = cli("run", "1-local", "--D", 10, "--N", 40, "--H", 8, "--lr", 0.1, "--repeats", 2, "--n-test", 100,
                 "--json", "--out", tmp_path / "x.json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((tmp_path / "x.json").read_text())


def test_check_outputs_unit():
    from fastmlp import preflight
    with pytest.raises(ValueError):
        preflight.check_output("x", "--out", "yaml")
    assert preflight.check_outputs(("--csv", "-", "csv"), ("--jsonl", None, "jsonl")) == ["-", None]
    with pytest.raises(UsageError, match="--out -: .*must end in .npz"):
        preflight.check_outputs(("--out", "-", "npz"))


# ----------------------------------------------------------------------------------------- sizes, up front
@pytest.mark.parametrize("args, words", [
    ([*TRAIN[:4], "--N", 2_000_000_000, "--lr", 0.1], ["GB", "lower --N"]),
    (["run", "1-local", "--N", 2_000_000_000, "--lr", 0.1], ["GB", "lower --N"]),
    (["run", "1-local", "--N", 2_000_000_000], ["GB"]),
    (["data", "1-local", "--N", 2_000_000_000, "--out", "{tmp}/d.npz"], ["GB", "lower --N"]),
    ([*TRAIN, "--H", 10**9, "--lr", 0.1], ["GB", "--H"]),
    (["train", "1-local", "--D", 10**9, "--N", 100, "--lr", 0.1], ["GB"]),
    ([*TRAIN, "--lr", 0.1, "--seeds", "0-99999999"], ["100000000 networks", "GB", "--seeds"]),
    ([*TRAIN, "--lr", "0.1,0.2", "--seeds", "0-4000000000"], ["8000000002 networks", "GB"]),
    ([*TRAIN, "--lr", 0.1, "--seeds", "99999999999999999999"], ["--seeds", "2**32"]),
    ([*TRAIN, "--lr", 0.1, "--seeds", "4294967296"], ["--seeds", "2**32"]),
    ([*TRAIN, "--lr", 0.1, "--N", 99999999999999999999], ["--N", "2**32"]),
    ([*TRAIN, "--lr", 0.1, "--n-test", 5_000_000_000], ["--n-test", "2**32"]),
    (["run", "1-local", "--lr", 0.1, "--n-test", 5_000_000_000], ["--n-test", "2**32"]),
    (["ntk", "1-local", "--n-test", 5_000_000_000], ["--n-test", "2**32"]),
    ([*TRAIN, "--lr", 1e300], ["--lr", "float32", "--dtype float64"]),
    ([*TRAIN, "--lr", 1e-50], ["--lr", "float32"]),
    (["run", "1-local", "--lr-max", 1e39], ["--lr-max", "float32"]),
    ([*TRAIN, "--lr", 0.1, "--param", "ntk", "--sigma-w2", 1e300], ["--sigma-w2", "float32"]),
    ([*TRAIN, "--lr", 0.1, "--init-scale", 1e39], ["--init-scale", "float32"]),
])
def test_a_size_or_value_that_cannot_work_is_refused_before_allocation(tmp_path, engine_calls, args, words):
    t0 = time.perf_counter()
    result = cli(*[str(a).format(tmp=tmp_path) for a in args])
    one_line_error(result, *words)
    assert engine_calls == [] and not list(tmp_path.iterdir())
    assert time.perf_counter() - t0 < 30                       # refused, not attempted


def test_a_large_lr_in_float64_diverges_quietly_and_counts_as_diverged():
    result = cli(*TRAIN, "--lr", "0.1,1e300", "--dtype", "float64", "--json")
    assert result.exit_code == 0, result.output
    assert "RuntimeWarning" not in result.stderr
    nets = json.loads(result.stdout)["networks"]
    assert nets[1]["diverged"] and nets[1]["test_error"] == protocol.DIVERGED_ERROR


@pytest.mark.parametrize("text, words", [
    ("N = 99999999999999999999\n", ["N = 99999999999999999999", "--N must be at most 2**32"]),
    ("n-test = 99999999999999999999\n", ["n-test", "--n-test"]),
    ("H = 1000000000\n", ["the largest job", "GB"]),
    ("seed = [" + ", ".join(map(str, range(10000))) + "]\nN = [" + ", ".join(map(str, range(1, 10001))) + "]\n"
     "B = [" + ", ".join(map(str, range(1, 10001))) + "]\n", ["a grid of 1000000000000 jobs", "GB"]),
], ids=["N", "n-test", "H", "grid"])
def test_a_sweep_that_cannot_run_exits_2_before_anything_runs(tmp_path, engine_calls, text, words):
    keys = {line.split(" = ")[0] for line in text.splitlines()}
    base = "".join(line + "\n" for line in TINY.splitlines() if line.split(" = ")[0] not in keys)
    (tmp_path / "s.toml").write_text(base + text)
    t0 = time.perf_counter()
    one_line_error(cli("sweep", tmp_path / "s.toml", "--store", tmp_path / "store"), *words)
    assert engine_calls == [] and not (tmp_path / "store").exists() and time.perf_counter() - t0 < 30
    if "H =" not in text:             # the memory of the machine that runs the jobs is asked only when they run
        one_line_error(cli("sweep", tmp_path / "s.toml", "--store", tmp_path / "store", "--dry-run"), *words)


# ------------------------------------------------------------------------------------ one rule: diverged
def test_train_counts_a_diverged_network_as_run_does():
    result = cli(*TRAIN, "--lr", "0.1,1000", "--seeds", "0,1", "--json")
    assert result.exit_code == 0, result.output
    nets = json.loads(result.stdout)["networks"]
    assert [n["diverged"] for n in nets] == [False, False, True, True]
    for n in nets[2:]:
        assert n["test_error"] == protocol.DIVERGED_ERROR == 0.5 and n["test_loss"] is None
    assert all(0 <= n["test_error"] <= 1 and n["test_loss"] > 0 for n in nets[:2])
    text = cli(*TRAIN, "--lr", "0.1,1000", "--seeds", "0,1").output.splitlines()
    assert [line.split()[-1] for line in text if "DIVERGED" in line] == ["0.5000", "0.5000"]   # as in the record
    ran = json.loads(cli("run", "1-local", "--D", 10, "--N", 60, "--H", 8, "--n-test", 100, "--max-epochs", 20,
                         "--lr", 1000, "--repeats", 2, "--json").stdout)["final"]
    assert ran["diverged"] == 2 and ran["test_error"]["values"] == [protocol.DIVERGED_ERROR] * 2
    no_test = json.loads(cli(*TRAIN, "--lr", "1000", "--n-test", 0, "--json").stdout)["networks"]
    assert no_test[0]["diverged"] and no_test[0]["test_error"] is None      # nothing measured, nothing made up


# ---------------------------------------------------------------------------- one definition of a record
def check_job_record(rec):
    from fastmlp.store import check_job_record
    return check_job_record(rec)


def _incomplete(rec):
    """Variants of a valid done record, each missing something a reader needs."""
    r = rec["record"]
    final = {k: v for k, v in r["final"].items() if k != "test_error"}
    yield {"id": rec["id"], "status": "done"}, "no command, config"
    yield {**rec, "record": None}, "a done job without its record"
    yield {**rec, "record": {**r, "final": final}}, "record.final.test_error"
    yield {**rec, "record": {k: v for k, v in r.items() if k != "timing"}}, "record.timing"
    yield {**rec, "config": {k: v for k, v in rec["config"].items() if k != "N"}}, "no config N"
    yield {**rec, "status": "failed", "error": None}, "a failed job without error type, message"
    yield {**rec, "command": "bench"}, "command 'bench'"
    yield {**rec, "command": "train"}, "record.summary"      # a run's record is not a train job's
    yield {**rec, "protocol": "1"}, "protocol '1'"


def test_sweep_collect_and_plot_agree_on_what_a_record_is(tmp_path, tiny_store, engine_calls):
    (tmp_path / "t.toml").write_text(NETWORKS_AND_NTK)
    sweep_args = ("sweep", tmp_path / "t.toml", "--store", tiny_store, "--set", "task=1-local", "--set", "N=40")
    recs = {r["id"]: r for r in Store(tiny_store, create=False).records()}
    run_rec = next(r for r in recs.values() if r["command"] == "run")
    file = tiny_store / f"{run_rec['id']}.json"
    original = file.read_text()
    for bad, problem in _incomplete(json.loads(original)):
        assert check_job_record(bad) is not None and problem in check_job_record(bad), (problem, bad)
        file.write_text(json.dumps(bad))
        lines = {one_line_error(cli(*args), str(file), "not a valid job record", problem) for args in
                 (("collect", tiny_store), ("plot", tiny_store, "--out", tmp_path / "f.png"), sweep_args,
                  (*sweep_args, "--dry-run"))}
        assert len(lines) == 1                              # the very same message from every command
    assert engine_calls == []
    file.write_text(original)
    assert cli("collect", tiny_store).exit_code == 0 and cli(*sweep_args).exit_code == 0 and engine_calls == []
    assert all(check_job_record(r) is None for r in recs.values())
    with pytest.raises(ValueError, match="not a job record"):
        Store(tiny_store).write({"id": run_rec["id"], "status": "done"})


# --------------------------------------------------------------------------------- dry run, linear
def test_dry_run_is_linear_in_the_number_of_jobs(tmp_path, monkeypatch):
    n = 3000
    (tmp_path / "s.toml").write_text(TINY.replace("N = [40, 60]", f"N = {list(range(40, 40 + n))}"))
    assert cli("sweep", tmp_path / "s.toml", "--store", tmp_path / "store", "--set", "N=40").exit_code == 0
    compared = []
    eq = sweep.Job.__eq__
    monkeypatch.setattr(sweep.Job, "__eq__", lambda a, b: compared.append(1) or eq(a, b))
    t0 = time.perf_counter()
    result = cli("sweep", tmp_path / "s.toml", "--store", tmp_path / "store", "--dry-run")
    assert result.exit_code == 0 and f"{n} jobs: 1 done, 0 failed (skipped), {n - 1} to run" in result.output
    assert len(compared) <= n                                # no job compared with every other (n^2 / 2 before)
    assert time.perf_counter() - t0 < 30


# ---------------------------------------------------------------------- the store's files: modes, leftovers
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_records_and_claims_are_readable_by_the_group(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        (tmp_path / "s.toml").write_text(TINY)
        assert cli("sweep", tmp_path / "s.toml", "--store", tmp_path / "store", "--set", "N=40").exit_code == 0
        store = Store(tmp_path / "store")
        claim = store.claim("0123456789abcdef")
        assert cli("run", "1-local", "--D", 10, "--N", 40, "--H", 8, "--lr", 0.1, "--repeats", 2, "--n-test", 50,
                   "--out", tmp_path / "x.json").exit_code == 0
    finally:
        os.umask(old)
    files = [*Path(tmp_path / "store").glob("*.json"), claim.file, tmp_path / "x.json"]
    assert len(files) == 3 and {f.stat().st_mode & 0o777 for f in files} == {mode}


def test_what_a_killed_writer_left_is_cleaned_by_the_next_writer(tmp_path):
    (tmp_path / "s.toml").write_text(TINY)
    assert cli("sweep", tmp_path / "s.toml", "--store", tmp_path / "store", "--set", "N=40").exit_code == 0
    store = tmp_path / "store"
    (done_id,) = [f.stem for f in store.glob("*.json")]
    old_tmp, fresh_tmp = store / ".tmp-abc123.json", store / ".tmp-def456.json"   # killed mid-write; writing now
    old_tmp.write_text('{"id": "x", "sta')
    fresh_tmp.write_text('{"id": "y", "sta')
    an_hour_ago = time.time() - 2 * 3600
    os.utime(old_tmp, (an_hour_ago, an_hour_ago))
    (store / f"{done_id}.claim").write_text(json.dumps({"id": done_id, "host": "gone", "pid": 1, "token": "t"}))
    os.utime(store / f"{done_id}.claim", (an_hour_ago, an_hour_ago))   # killed after its record, before release
    Store(store, create=False).records()                   # a reader removes nothing
    assert old_tmp.exists()
    assert cli("sweep", tmp_path / "s.toml", "--store", store, "--set", "N=40").exit_code == 0
    assert not old_tmp.exists() and fresh_tmp.exists() and not (store / f"{done_id}.claim").exists()
    assert len(Store(store, create=False).records()) == 1


def test_a_library_caller_gets_the_same_checks(tmp_path):
    from fastmlp import train
    from fastmlp.tasks import parse_task
    with pytest.raises(UsageError, match="--save-params"):
        train.run(parse_task("1-local", D=10), [0.1], [0], N=40, H=8, n_test=10, save_params=tmp_path / "x" / "p.npz")
    with pytest.raises(UsageError, match="GB"):
        protocol.run(parse_task("1-local", D=10), N=40, L=1, H=10**9, lr=0.1, repeats=2)
    jobs, _ = sweep.read_sweep(_write(tmp_path / "s.toml", TINY.replace("H = 8", "H = 1000000000")), SCHEMAS)
    with pytest.raises(UsageError, match="the largest job"):
        sweep.check_sizes(jobs)


def _write(path, text):
    path.write_text(text)
    return path


def test_a_store_written_by_the_first_release_still_reads(tmp_path):
    """A record as the first release wrote it (no init or init-scale in its configuration, mode 0600)."""
    (tmp_path / "s.toml").write_text('init = "he"\n' + TINY)
    assert cli("sweep", tmp_path / "s.toml", "--store", tmp_path / "store", "--set", "N=40").exit_code == 0
    (file,) = (tmp_path / "store").glob("*.json")
    os.chmod(file, 0o600)
    (rec,) = Store(tmp_path / "store", create=False).records()
    assert rec["config"]["init"] == "he" and check_job_record(rec) is None
    again = subprocess.run([sys.executable, "-m", "fastmlp.cli", "sweep", str(tmp_path / "s.toml"), "--store",
                            str(tmp_path / "store"), "--set", "N=40", "--dry-run"], capture_output=True, text=True)
    assert again.returncode == 0 and " done " in again.stdout
