"""Sweeps: sweep files and job identity, the result store (resume, extend, retry, SIGKILL), shards, collect, and
the Dask executors on real clusters (a LocalCluster; `dask scheduler` + `dask worker` processes, one killed)."""
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import NETWORKS_AND_NTK

from fastmlp import ntk, sweep
from fastmlp.cli import main, ntk as ntk_command, run as run_command, sweep_keys, train as train_command
from fastmlp import store as store_mod
from fastmlp.store import Store
from fastmlp.errors import UsageError

SCHEMAS = {"run": sweep_keys(run_command), "ntk": sweep_keys(ntk_command), "train": sweep_keys(train_command)}

# Six tiny jobs: a fixed lr, two repeats, 30 epochs at most; well under a second each once compiled.
TINY = """\
task = "1-local"
D = 10
H = 8
lr = 0.1
repeats = 2
n-test = 200
max-epochs = 30
N = [40, 60, 80]
L = [1, 2]
"""

# Six jobs of about a second each (lr 1e-5 never reaches zero training error: every one runs to the cap).
SLOW = """\
task = "1-local"
D = 10
H = 32
lr = 1e-5
repeats = 2
n-test = 200
max-epochs = 6000
N = [1000, 1001, 1002]
L = [1, 2]
"""


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def jobs_of(text, tmp_path, overrides=()):
    return sweep.read_sweep(write(tmp_path / "s.toml", text), SCHEMAS, overrides)[0]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def fastmlp_command(*args):
    """The command line of a fastmlp process (this interpreter, this checkout's package)."""
    return [sys.executable, "-m", "fastmlp.cli", *map(str, args)]


def dask_command(*args):
    """`dask ...` from this interpreter's environment."""
    exe = Path(sys.executable).parent / "dask"
    return [str(exe) if exe.exists() else shutil.which("dask"), *map(str, args)]


def record_files(store_dir):
    """The record files of a store (not the temporary file a killed writer may leave)."""
    return [f for f in Path(store_dir).glob("*.json") if not f.name.startswith(".")]


def results_of(store_dir):
    """{id: (status, test errors of the repeats)} of a store."""
    return {r["id"]: (r["status"], r["record"]["final"]["test_error"]["values"] if r["record"] else None)
            for r in Store(store_dir, create=False).records()}


# ------------------------------------------------------------------------------------- files and identity
def test_the_grid_is_the_product_of_the_lists(tmp_path):
    jobs = jobs_of(TINY, tmp_path)
    assert len(jobs) == 6 and len({j.id for j in jobs}) == 6
    assert [(j.config["N"], j.config["L"]) for j in jobs] == [(40, 1), (40, 2), (60, 1), (60, 2), (80, 1), (80, 2)]
    c = jobs[0].config
    assert c["H"] == 8 and c["B"] == 50 and c["indices"] == "0" and c["lr"] == 0.1 and c["param"] == "standard"
    assert not {"beta1", "out", "json"} & set(c)                         # not options of this job
    assert not {"folds", "bo-calls", "lr-min", "sigma-w2"} & set(c)      # not used with a fixed lr, He init
    assert jobs[0].command_line().startswith("fastmlp run 1-local --D 10 --indices 0 --seed 0 --N 40 --L 1 --H 8")
    searched = jobs_of(TINY.replace("lr = 0.1", 'param = "ntk"'), tmp_path)[0].config
    assert searched["folds"] == 10 and searched["bo-calls"] == 20 and searched["sigma-w2"] == 2.0


def test_job_identity_is_the_resolved_configuration(tmp_path):
    base = {j.id for j in jobs_of(TINY, tmp_path)}
    # the same jobs spelled differently: keys reordered, defaults given, a float key as an int
    respelled = "B = 50\nseed = 0\nindices = \"0\"\nsigma-w2 = 2\n" + "\n".join(reversed(TINY.splitlines()))
    assert {j.id for j in jobs_of(respelled, tmp_path)} == base
    # the paper's D is the default D
    assert jobs_of('task = "2-local"', tmp_path)[0].id == jobs_of('task = "2-local"\nD = 500', tmp_path)[0].id
    # anything that changes results changes the id
    for old, new in (("H = 8", "H = 9"), ("lr = 0.1", "lr = 0.2"), ("H = 8", 'H = 8\nbackend = "gpu"'),
                     ("H = 8", 'H = 8\ndtype = "float64"'), ("H = 8", "H = 8\nseed = 1")):
        changed = jobs_of(TINY.replace(old, new), tmp_path)
        assert not {j.id for j in changed} & base, new
    # how the sweep runs is not part of it
    assert {j.id for j in jobs_of("workers = 3\n" + TINY, tmp_path)} == base


def test_initialization_is_part_of_identity_and_he_at_scale_1_keeps_the_first_releases_ids(tmp_path):
    base = {j.id for j in jobs_of('init = "he"\n' + TINY, tmp_path)}
    he = jobs_of('init = "he"\ninit-scale = 1.0\n' + TINY, tmp_path)
    assert {j.id for j in he} == base and "init" not in he[0].config
    assert jobs_of(TINY, tmp_path)[0].config["init"] == "torch"   # the default now, named in the identity
    assert "--init he --init-scale 1.0" in he[0].command_line()   # the command line says what ran
    ids = [base]
    for text in ('init = "torch"', 'init = "lecun"', 'init = "he"\ninit-scale = 0.5', "init-scale = 0.5"):
        ids.append({j.id for j in jobs_of(text + "\n" + TINY, tmp_path)})
    assert all(not a & b for i, a in enumerate(ids) for b in ids[:i])   # every setting its own jobs



@pytest.mark.parametrize("name", ["repro-k1", "repro-k2", "repro-k3", "repro-temperature", "repro-k2-wide",
                                  "pilot-local", "repro-lazy", "repro-lr"])
def test_every_job_of_the_first_reproduction_keeps_its_id(name):
    """The stores of the first release (their ids in docs/results/NAME-jobs.csv) are found by the files that made
    them, which name init = "he" since the default became torch."""
    root = Path(__file__).parent.parent
    jobs, _ = sweep.read_sweep(root / "examples" / f"{name}.toml", SCHEMAS)
    with open(root / "docs" / "results" / f"{name}-jobs.csv") as f:
        stored = {row["id"] for row in csv.DictReader(f)}
    assert {j.id for j in jobs} == stored and stored


def canonical_id(command, config, protocol=1):
    """A job's id as its definition states it: SHA-256 of the canonical JSON, written out here independently."""
    doc = {"command": command, "config": config} | ({"protocol": protocol} if protocol != 1 else {})
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()[:16]


MIXED = """\
seed = [0, 1, 2]
task = ["2-local", "1-global", "temperature"]
N = [100, 200]
L = [1, 2]
[[grid]]
lr = 0.1
param = ["standard", "ntk"]
init-scale = [1.0, -0.0, 0.5]
[[grid]]
lr-max = [1.0, 3.0]
loss = ["xent", "mse"]
sigma-b2 = [0.0, -0.0]
param = "ntk"
[[grid]]
command = "ntk"
sigma-b2 = [0.0, 0.1]
[[grid]]
command = "train"
lr = ["0.1,0.3", "1"]
seeds = "0-2"
param = ["standard", "ntk"]
"""


def test_the_ids_of_a_grid_are_the_canonical_hash_of_each_configuration(tmp_path):
    """The grid resolver puts ids together from templates and fragments; each must equal the plain definition, with
    the task, the parameterization, the keys left out and the implicit settings varying across one grid."""
    jobs = jobs_of(MIXED.replace("init-scale = [1.0, -0.0, 0.5]", "init-scale = [1.0, 0.5]"), tmp_path)
    # sigma-b2 = [0.0, -0.0] is one setting: its grid has 4 jobs per point, not 8
    assert len(jobs) == 3 * 3 * 2 * 2 * (2 * 2 + 2 * 2 + 2 + 2 * 2) and len({j.id for j in jobs}) == len(jobs)
    assert {j.command for j in jobs} == {"run", "ntk", "train"}
    assert {j.config["task"] for j in jobs} == {"2-local", "1-global", "temperature"}
    for key in ("sigma-w2", "folds", "loss", "init"):      # left out of some jobs' configurations, kept in others
        assert any(key in j.config for j in jobs) and any(key not in j.config for j in jobs), key
    for job in jobs:
        assert job.id == canonical_id(job.command, job.config) == sweep.job_id(job.command, job.config)
        # and the command line from the grid's template is the one spelled out from the configuration
        assert job.line is not None
        assert job.command_line() == sweep.Job(job.id, job.command, job.config).command_line()
    # -0.0 is the setting 0.0: one id, spelled 0.0
    zero = jobs_of("task = \"1-local\"\nlr = 0.1\nparam = \"ntk\"\nsigma-b2 = [0.0, -0.0]", tmp_path)
    assert len(zero) == 1 and json.dumps(zero[0].config["sigma-b2"]) == "0.0"


def test_a_protocol_version_above_1_enters_identity_and_records(tmp_path, monkeypatch):
    base = jobs_of(TINY, tmp_path)
    assert all(j.id == canonical_id("run", j.config) and j.protocol == 1 for j in base)
    monkeypatch.setitem(sweep.PROTOCOL, "run", 2)
    bumped = jobs_of(TINY, tmp_path)
    assert [j.config for j in bumped] == [j.config for j in base]
    assert all(j.id == canonical_id("run", j.config, protocol=2) and j.protocol == 2 for j in bumped)
    assert not {j.id for j in bumped} & {j.id for j in base}            # new ids: never mixed with old records
    rec = sweep.job_record(bumped[0], "failed", None, {"type": "E", "message": "m"}, None, "t", 0.0)
    assert rec["protocol"] == 2 and store_mod.check_job_record(rec) is None
    assert "protocol 0" in store_mod.check_job_record(rec | {"protocol": 0})


def test_a_record_written_before_protocol_versions_reads_as_version_1(tmp_path):
    store = tmp_path / "s"
    assert cli("sweep", write(tmp_path / "t.toml", TINY), "--store", store).exit_code == 0
    for f in record_files(store):               # as the release before versions wrote them
        rec = json.loads(f.read_text())
        assert rec.pop("protocol") == 1
        f.write_text(json.dumps(rec))
    assert {r["protocol"] for r in Store(store, create=False).records()} == {1}
    result = cli("sweep", tmp_path / "t.toml", "--store", store, "--dry-run")
    assert result.exit_code == 0 and "6 done" in result.stderr                   # nothing to recompute
    rows = list(csv.DictReader(io.StringIO(cli("collect", store).stdout)))
    assert len(rows) == 6 and {row["protocol"] for row in rows} == {"1"}


def test_checks_run_once_per_setting_and_once_per_seed_and_still_find_every_bad_job(tmp_path, monkeypatch):
    calls = []
    check = sweep.check_job
    monkeypatch.setattr(sweep, "check_job", lambda command, config: calls.append(config["seed"]) or check(command,
                                                                                                      config))
    text = "task = \"1-local\"\nlr = 0.1\nseed = [%s]\nN = [%s]\nL = [1, 2]\n"
    jobs = jobs_of(text % (", ".join(map(str, range(200))), "100, 200, 300"), tmp_path)
    assert len(jobs) == 1200 and len(calls) == 6 + 199          # every setting at seed 0, then each new seed once
    for seeds, Ns, message in (("0, 1, 99999999999", "100, 200", "--seed must lie"),   # a bad seed, last
                               ("0, 1, 2", "100, 0", "--N must be at least 1"),       # a bad setting, last
                               ("0, 1, 2", "100, 20000000000", "--N")):
        with pytest.raises(UsageError, match=message) as e:
            jobs_of(text % (seeds, Ns), tmp_path)
        assert "the job with" in str(e.value)


def test_the_loss_and_the_stop_rule_are_part_of_identity_and_their_defaults_are_not(tmp_path):
    base = {j.id for j in jobs_of(TINY, tmp_path)}
    defaults = 'loss = "xent"\nstop = "zero-error"\n'
    assert {j.id for j in jobs_of(defaults + TINY, tmp_path)} == base
    ids = [base]
    for text in ('loss = "mse"', 'loss = "hinge2"', 'stop = "loss"\ntarget-loss = 0.01',
                 'loss = "mse"\nstop = "loss"\ntarget-loss = 0.001'):
        ids.append({j.id for j in jobs_of(text + "\n" + TINY, tmp_path)})
    assert all(not a & b for i, a in enumerate(ids) for b in ids[:i])
    with pytest.raises(UsageError, match="--target-loss"):
        jobs_of('stop = "loss"\n' + TINY, tmp_path)


def test_init_with_the_ntk_parameterization_is_refused_and_scale_kept(tmp_path):
    with pytest.raises(UsageError, match="'init' applies to param"):
        jobs_of('init = "torch"\nparam = "ntk"\n' + TINY, tmp_path)
    (job,) = jobs_of('param = "ntk"\ninit-scale = 0.5\ntask = "1-local"\nlr = 0.1', tmp_path)
    assert job.config["init-scale"] == 0.5 and "init" not in job.config
    assert "--init " not in job.command_line()


def test_a_record_written_before_init_existed_reads_as_he_at_scale_1(tmp_path):
    result = CliRunner().invoke(main, ["sweep", str(write(tmp_path / "t.toml", 'init = "he"\n' + TINY)), "--store",
                                       str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    for rec in Store(tmp_path / "s").records():
        assert rec["config"]["init"] == "he" and rec["config"]["init-scale"] == 1.0
        on_disk = json.loads((tmp_path / "s" / f"{rec['id']}.json").read_text())
        assert "init" not in on_disk["config"]            # the file is as the first release wrote it
    columns, rows = store_mod.table(Store(tmp_path / "s").records())
    assert {"init", "init-scale"} <= set(columns) and {r["init"] for r in rows} == {"he"}


def test_grid_tables_are_a_union_and_overrides_apply_everywhere(tmp_path):
    text = TINY + '\n[[grid]]\n\n[[grid]]\ncommand = "ntk"\nlr = []\n'
    with pytest.raises(UsageError, match="'H' for command ntk"):   # top-level keys reach every table
        jobs_of(text, tmp_path)
    text = 'task = "1-local"\nD = 10\nN = [40, 60]\nrepeats = 2\nn-test = 200\n' \
           '[[grid]]\nH = 8\nlr = 0.1\nmax-epochs = 30\nL = [1, 2]\n[[grid]]\ncommand = "ntk"\nL = [1, 2, 3]\n'
    jobs = jobs_of(text, tmp_path)
    assert [j.command for j in jobs] == ["run"] * 4 + ["ntk"] * 6
    jobs = jobs_of(text, tmp_path, [sweep.parse_override("N=40", SCHEMAS), sweep.parse_override("L=1", SCHEMAS)])
    assert [(j.command, j.config["N"], j.config["L"]) for j in jobs] == [("run", 40, 1), ("ntk", 40, 1)]
    jobs = jobs_of(text, tmp_path, [sweep.parse_override("H=16", SCHEMAS)])   # only where the command takes it
    assert {j.config.get("H") for j in jobs} == {16, None} and len(jobs) == 10
    ntk_only = 'command = "ntk"\ntask = "1-local"\nD = 10\nN = 40\n'
    with pytest.raises(UsageError, match="--set H: no grid of .* runs a command that takes it"):
        jobs_of(ntk_only, tmp_path, [("H", 16)])


@pytest.mark.parametrize("text, expected", [
    ("N=250,500", ("N", [250, 500])),
    ("N=[250, 500]", ("N", [250, 500])),
    ("task=2-local", ("task", "2-local")),
    ("task=2-local,2-global", ("task", ["2-local", "2-global"])),
    ("indices=0,2", ("indices", "0,2")),
    ('indices=["0,1", "0,2"]', ("indices", ["0,1", "0,2"])),
    ("lr=1e-3", ("lr", 0.001)),
    ("backend=gpu", ("backend", "gpu")),
])
def test_overrides_parse_like_toml(text, expected):
    assert sweep.parse_override(text, SCHEMAS) == expected


@pytest.mark.parametrize("text, message", [
    (TINY + "Hx = 8\n", "unknown key 'Hx'"),
    (TINY.replace("N = [40, 60, 80]", 'N = "forty"'), "key 'N' must be an integer"),
    (TINY.replace("N = [40, 60, 80]", 'N = [40, 60.5]'), "key 'N' must be an integer"),
    (TINY.replace("L = [1, 2]", "L = []"), "key 'L' is an empty list"),
    (TINY + 'dtype = "float16"\n', "key 'dtype' must be one of float32, float64"),
    (TINY + 'command = "bench"\n', "key 'command' must be one of run, ntk, train"),
    (TINY.replace('task = "1-local"', ""), "key 'task' is missing"),
    (TINY.replace('task = "1-local"', 'task = "4-nonlocal"'), "unknown task"),
    (TINY.replace("lr = 0.1", "folds = 50"), "--folds must lie in [2, N]"),
    (TINY + "workers = 0\n", "key 'workers' must be a positive integer"),
    (TINY + "N = 3\n", "not valid TOML"),
])
def test_a_malformed_sweep_file_exits_2_naming_the_key(tmp_path, text, message):
    path = write(tmp_path / "bad.toml", text)
    result = cli("sweep", path, "--store", tmp_path / "store")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastmlp: error:") and message in lines[0], lines
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("args, message", [
    (["--set", "Hx=3"], "unknown key 'Hx'"),
    (["--set", "N"], "KEY=VALUE"),
    (["--only", "Hx=3"], "--only: unknown key 'Hx'"),
    (["--only", "N=12345"], "no job of"),
    (["--shard", "2/2"], "0 <= i < K"),
    (["--shard", "a/b"], "--shard takes i/K"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
])
def test_bad_sweep_options_exit_2(tmp_path, args, message):
    result = cli("sweep", write(tmp_path / "s.toml", TINY), "--store", tmp_path / "store", *args)
    assert result.exit_code == 2 and message in result.output, result.output


# ------------------------------------------------------------------------------------- store and resume
def test_sweep_stores_every_job_and_a_rerun_trains_nothing(tmp_path, engine_calls):
    path, store = write(tmp_path / "s.toml", TINY), tmp_path / "store"
    first = cli("sweep", path, "--store", store)
    assert first.exit_code == 0, first.output
    assert len(engine_calls) == 6                                  # one engine call per job (fixed lr)
    records = Store(store, create=False).records()
    assert len(records) == 6 and all(r["status"] == "done" for r in records)
    for r in records:                                                    # the record `fastmlp run` would give
        assert r["record"]["config"]["N"] == r["config"]["N"] and r["record"]["selected_lr"] == 0.1
        assert r["command_line"].startswith("fastmlp run 1-local") and r["worker"]["pid"] == os.getpid()
        assert r["provenance"]["backend"] == "cpu" and r["provenance"]["versions"]["fastmlp"]
    assert "6/6 jobs" in first.output
    before = {f.name: f.read_bytes() for f in store.iterdir()}
    again = cli("sweep", path, "--store", store)
    assert again.exit_code == 0 and "6 done already, 0 to run" in again.output
    assert len(engine_calls) == 6 and {f.name: f.read_bytes() for f in store.iterdir()} == before

    # one job's record equals `fastmlp run` of its command line
    job = next(r for r in records if r["config"]["N"] == 60 and r["config"]["L"] == 2)
    alone = cli(*job["command_line"].split()[1:], "--json")
    assert json.loads(alone.output)["final"]["test_error"] == job["record"]["final"]["test_error"]


def test_a_long_job_reports_its_own_progress_in_the_log(tmp_path, monkeypatch):
    from fastmlp.cli import SweepProgress
    path = write(tmp_path / "s.toml", NETWORKS_AND_NTK)
    quiet = cli("sweep", path, "--store", tmp_path / "a")        # jobs of a second: no lines from inside them
    assert quiet.exit_code == 0, quiet.output
    assert "final:" not in quiet.output and "repeat 1/2" not in quiet.output
    monkeypatch.setattr(SweepProgress, "HEARTBEAT_S", 0.0)       # every job "long": each of its lines is shown
    loud = cli("sweep", path, "--store", tmp_path / "b")
    assert loud.exit_code == 0, loud.output
    lines = loud.output.splitlines()
    assert any(line.startswith("sweep:   run 1-local N=40 L=1") and "final: 2 repeats at lr 0.1" in line
               for line in lines), loud.output
    assert any(line.startswith("sweep:   ntk 1-local N=40 L=2") and "repeat 2/2: test error" in line
               for line in lines), loud.output


def test_extending_the_grid_runs_only_the_new_jobs(tmp_path, engine_calls):
    store = tmp_path / "store"
    assert cli("sweep", write(tmp_path / "s.toml", TINY), "--store", store).exit_code == 0
    before = {f.name: f.read_bytes() for f in store.iterdir()}
    result = cli("sweep", tmp_path / "s.toml", "--store", store, "--set", "N=40,60,80,100", "--set", "L=1,2,3")
    assert result.exit_code == 0 and "6 done already, 6 to run" in result.output
    assert len(engine_calls) == 6 + 6
    after = {f.name: f.read_bytes() for f in store.iterdir()}
    assert len(after) == 12 and all(after[name] == data for name, data in before.items())


TRAIN = """\
command = "train"
task = "1-local"
D = 10
H = 8
N = [40, 60]
L = [1, 2]
lr = ["0.1,1", "0.3"]
seeds = "0-2"
n-test = 200
max-epochs = 30
"""


@pytest.mark.parametrize("text", [TINY.replace("lr = 0.1\n", ""), TRAIN])
def test_f0_keep_leaves_every_id_as_it_was_and_subtract_makes_new_jobs(tmp_path, text):
    """f0 came after both commands' first jobs: at "keep" it stays out of the identity (and a reader of the store
    puts it back), "subtract" is another experiment."""
    base = jobs_of(text, tmp_path)
    kept = jobs_of(text + 'f0 = "keep"\n', tmp_path)
    subtracted = jobs_of(text + 'f0 = "subtract"\n', tmp_path)
    assert [j.id for j in kept] == [j.id for j in base] and "f0" not in base[0].config
    assert not {j.id for j in subtracted} & {j.id for j in base} and subtracted[0].config["f0"] == "subtract"
    assert "--f0 subtract" in subtracted[0].command_line()
    assert sweep.with_implicit(base[0].command, base[0].config)["f0"] == "keep"


def test_train_jobs_run_in_sweeps_as_the_train_command_runs_them(tmp_path):
    jobs = jobs_of(TRAIN, tmp_path)
    assert len(jobs) == 8 and {j.config["lr"] for j in jobs} == {"0.1,1.0", "0.3"}
    # one setting, one id, however the lists are spelled; sigma-w2 is not a setting of a standard network
    respelled = TRAIN.replace('["0.1,1", "0.3"]', '["1e-1, 1.0", 0.3]').replace('"0-2"', '"0 - 1, 2"')
    assert [j.id for j in jobs_of(respelled, tmp_path)] == [j.id for j in jobs] and "sigma-w2" not in jobs[0].config
    store = tmp_path / "s"
    result = cli("sweep", write(tmp_path / "t.toml", TRAIN), "--store", store)
    assert result.exit_code == 0, result.output
    records = {r["id"]: r for r in Store(store, create=False).records()}
    assert set(records) == {j.id for j in jobs}
    job = next(j for j in jobs if j.config["lr"] == "0.1,1.0" and j.config["N"] == 60 and j.config["L"] == 2)
    stored = records[job.id]["record"]
    assert stored["summary"]["n_networks"] == 6 and len(stored["test_error"]["values"]) == 6
    # the job's own command line computes the same networks
    alone = cli(*job.command_line().split()[1:], "--json")
    assert alone.exit_code == 0, alone.output
    assert [n["test_error"] for n in json.loads(alone.stdout)["networks"]] == stored["test_error"]["values"]
    assert stored["test_error"]["mean"] == sum(stored["test_error"]["values"]) / 6
    rows = list(csv.DictReader(io.StringIO(cli("collect", store).stdout)))
    row = next(r for r in rows if r["id"] == job.id)
    assert row["command"] == "train" and int(row["converged"]) == stored["summary"]["converged"]
    assert float(row["test_error_mean"]) == stored["test_error"]["mean"]


@pytest.mark.parametrize("old, new, message", [
    ('lr = ["0.1,1", "0.3"]', 'lr = "0.1,-1"', "'lr': --lr values must be positive"),
    ('seeds = "0-2"', 'seeds = "2-0"', "'seeds': --seeds takes integers and ranges"),
    ('seeds = "0-2"', 'seeds = "0-99999999999"', "--seeds must lie in"),
    ("H = 8", "H = 0", "--H must be at least 1"),
    ("H = 8", 'H = 8\ninit = "he"\nparam = "ntk"', "'init' applies to param"),
])
def test_a_bad_train_job_is_refused_before_anything_runs(tmp_path, old, new, message):
    result = cli("sweep", write(tmp_path / "t.toml", TRAIN.replace(old, new)), "--store", tmp_path / "s")
    assert result.exit_code == 2 and message in result.stderr and not (tmp_path / "s").exists(), result.output


def test_failed_jobs_are_stored_skipped_and_retried_on_request(tmp_path, monkeypatch):
    text = 'command = "ntk"\ntask = "1-local"\nD = 10\nN = [40, 60]\nrepeats = 2\nn-test = 200\n'
    path, store = write(tmp_path / "s.toml", text), tmp_path / "store"
    real = ntk.run

    def flaky(spec, N, **kw):
        if N == 60:
            raise MemoryError("no memory for this one")
        return real(spec, N, **kw)
    monkeypatch.setattr(ntk, "run", flaky)
    first = cli("sweep", path, "--store", store)
    assert first.exit_code == 1 and "FAILED MemoryError: no memory for this one" in first.output
    assert "--retry-failed" in first.output
    by_n = {r["config"]["N"]: r for r in Store(store, create=False).records()}
    assert by_n[40]["status"] == "done" and by_n[60]["status"] == "failed" and by_n[60]["record"] is None
    assert by_n[60]["error"]["type"] == "MemoryError" and "flaky" in by_n[60]["error"]["traceback"]
    assert by_n[60]["provenance"]["backend"] == "cpu"

    monkeypatch.setattr(ntk, "run", real)                                # the cause is fixed
    skipped = cli("sweep", path, "--store", store)
    assert skipped.exit_code == 1 and "1 failed (skipped; --retry-failed to rerun), 0 to run" in skipped.output
    retried = cli("sweep", path, "--store", store, "--retry-failed")
    assert retried.exit_code == 0 and "1 done already, 1 to run" in retried.output, retried.output
    assert "warning" not in retried.output                # replacing the failed record it retries is no surprise
    assert all(r["status"] == "done" for r in Store(store, create=False).records())


def test_dry_run_lists_jobs_and_status_and_writes_nothing(tmp_path):
    path, store = write(tmp_path / "s.toml", TINY), tmp_path / "store"
    listed = cli("sweep", path, "--store", store, "--dry-run")
    assert listed.exit_code == 0 and not store.exists()
    lines = [line for line in listed.output.splitlines() if "pending" in line]
    assert len(lines) == 6 and all(" fastmlp run 1-local" in line for line in lines)
    assert cli("sweep", path, "--store", store, "--set", "N=40").exit_code == 0
    listed = cli("sweep", path, "--store", store, "--dry-run").output
    assert listed.count(" done ") == 2 and listed.count(" pending ") == 4


def test_only_runs_the_slice_of_a_sweep_with_those_settings_and_keeps_their_ids(tmp_path):
    text = 'task = "1-local"\nD = 10\nN = [40, 60]\nrepeats = 2\nn-test = 200\n' \
           '[[grid]]\nH = 8\nlr = 0.1\nmax-epochs = 30\nL = [1, 2]\n[[grid]]\ncommand = "ntk"\nL = [1, 2, 3]\n'
    jobs = jobs_of(text, tmp_path)
    store = tmp_path / "store"
    result = cli("sweep", write(tmp_path / "s.toml", text), "--store", store, "--only", "command=ntk",
                 "--only", "N=40,60", "--only", "L=2")
    assert result.exit_code == 0, result.output
    want = {j.id for j in jobs if j.command == "ntk" and j.config["L"] == 2}
    assert {rec["id"] for rec in Store(store, create=False).records()} == want and len(want) == 2
    assert sweep.select_only(jobs, [("lr", 0.1)]) == [j for j in jobs if j.command == "run"]   # ntk has no lr


def test_shards_split_the_jobs_and_cover_them(tmp_path):
    wide = TINY.replace("N = [40, 60, 80]", "N = [40, 50, 60, 70, 80, 90, 100]")   # 14 jobs
    jobs = jobs_of(wide, tmp_path)
    shards = [sweep.select_shard(jobs, f"{i}/3") for i in range(3)]
    ids = [j.id for shard in shards for j in shard]
    assert sorted(ids) == sorted(j.id for j in jobs)                     # disjoint, and together the whole sweep
    store = tmp_path / "store"
    result = cli("sweep", write(tmp_path / "s.toml", wide), "--store", store, "--shard", "1/2")
    assert result.exit_code == 0
    mine = {j.id for j in sweep.select_shard(jobs, "1/2")}
    assert set(results_of(store)) == mine and 0 < len(mine) < 14
    assert {j.id for j in sweep.select_shard(jobs_of(TINY, tmp_path), "1/2")} <= mine   # kept as the grid grew


def test_collect_flattens_the_store(tmp_path):
    store = tmp_path / "store"
    assert cli("sweep", write(tmp_path / "s.toml", TINY), "--store", store, "--set", "N=40,60", "--set", "L=1")\
        .exit_code == 0
    assert cli("sweep", write(tmp_path / "n.toml", 'command = "ntk"\ntask = "1-local"\nD = 10\nN = [40, 60]\n'
                              'repeats = 2\nn-test = 200\n'), "--store", store).exit_code == 0
    result = cli("collect", store, "--csv", tmp_path / "t.csv", "--jsonl", tmp_path / "t.jsonl")
    assert result.exit_code == 0 and "4 jobs (0 failed)" in result.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) == 4
    assert list(rows[0])[:12] == ["id", "status", "command", "protocol", "task", "D", "indices", "seed", "N", "L", "H",
                                  "B"]
    assert {row["protocol"] for row in rows} == {"1"}
    records = {r["id"]: r for r in Store(store, create=False).records()}
    for row, line in zip(rows, lines):
        rec = records[row["id"]]
        assert line["id"] == row["id"] and line["command"] == rec["command"] == row["command"]
        te = (rec["record"]["final"] if rec["command"] == "run" else rec["record"])["test_error"]
        assert line["test_error_mean"] == te["mean"] and float(row["test_error_mean"]) == te["mean"]
        assert line["N"] == rec["config"]["N"] and line["error"] is None
        assert (line["H"] == 8) if rec["command"] == "run" else (line["H"] is None and row["H"] == "")
        if rec["command"] == "run":                      # how long the final networks trained, fewest and most
            epochs = [n["epochs"] for n in rec["record"]["final"]["repeats"]]
            assert (line["epochs_min"], line["epochs_max"]) == (min(epochs), max(epochs)) and max(epochs) <= 30
        else:
            assert line["epochs_min"] is None and row["epochs_max"] == ""
    stdout = cli("collect", store, "--status", "failed")
    assert stdout.exit_code == 0 and stdout.stdout.splitlines() == [",".join(["id", "status", "command", "protocol"] +
                                                                             list(store_mod.RESULT_COLUMNS))]


def test_collect_writes_the_candidates_each_search_scored(tmp_path):
    store = tmp_path / "store"
    searched = TINY.replace("lr = 0.1\n", "folds = 2\nbo-calls = 3\nbo-batch = 3\nlr-widen = \"off\"\n")
    assert cli("sweep", write(tmp_path / "s.toml", searched), "--store", store, "--set", "N=40",
               "--set", "L=1").exit_code == 0
    result = cli("collect", store, "--candidates", tmp_path / "c.csv")
    assert result.exit_code == 0 and not result.stdout            # only the file asked for
    rows = list(csv.DictReader(io.StringIO((tmp_path / "c.csv").read_text())))
    (rec,) = Store(store, create=False).records()
    history = rec["record"]["search"]["history"]
    assert len(rows) == len(history) == 3 and {r["id"] for r in rows} == {rec["id"]}
    for row, h in zip(rows, history):
        assert float(row["lr"]) == h["lr"] and float(row["mean_error"]) == h["mean_error"] and row["N"] == "40"
        counts = [int(row[k]) for k in ("converged", "not_converged", "diverged")]
        assert sum(counts) == 2 and counts[0] == h["fold_status"].count("converged")
        assert (int(row["epochs_min"]), int(row["epochs_max"])) == (min(h["fold_epochs"]), max(h["fold_epochs"]))


def test_collect_replaces_the_rows_of_a_rerun_in_a_committed_table(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    assert cli("sweep", write(tmp_path / "s.toml", TINY), "--store", old, "--set", "N=40,60", "--set", "L=1") \
        .exit_code == 0
    assert cli("collect", old, "--csv", tmp_path / "t.csv").exit_code == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    rows[0]["test_error_mean"], rows[0]["device"] = "0.999", "gone"          # the row a rerun replaces
    with open(tmp_path / "t.csv", "w") as f:
        store_mod.write_csv(f, list(rows[0]), rows)
    n = rows[0]["N"]
    assert cli("sweep", write(tmp_path / "r.toml", TINY), "--store", new, "--set", f"N={n},80", "--set", "L=1") \
        .exit_code == 0
    result = cli("collect", new, "--replace-in", tmp_path / "t.csv")
    assert result.exit_code == 0 and "1 rows of" in result.output and "1 added" in result.output, result.output
    after = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert [r["id"] for r in after[:2]] == [r["id"] for r in rows] and len(after) == 3 and after[2]["N"] == "80"
    assert after[0]["test_error_mean"] != "0.999" and after[0]["device"] != "gone"
    assert after[1] == rows[1]                                                  # the other row kept as it was
    assert cli("collect", new, "--replace-in", tmp_path / "missing.csv").exit_code == 2


def test_collect_refuses_what_is_not_a_store(tmp_path):
    assert cli("collect", tmp_path / "nothing").exit_code == 2
    (tmp_path / "0123456789abcdef.json").write_text("{")
    result = cli("collect", tmp_path)
    assert result.exit_code == 2 and "not a job record" in result.output


# --------------------------------------------------------------------------------------- SIGKILL mid-sweep
COUNTING_FASTMLP = """
import os, sys
import fastmlp.cpu_engine as cpu_engine
fit = cpu_engine.Engine.fit
def counted(self, *args, **kwargs):
    with open(os.environ["CALL_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    return fit(self, *args, **kwargs)
cpu_engine.Engine.fit = counted
from fastmlp.cli import main
main()
"""


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_resumes_without_rerunning_or_losing_anything(tmp_path):
    """SIGKILL after two jobs are stored (the third is running), then the same command again: every job ends with
    exactly one done record, the two stored ones untouched, and the restarted process trains only the jobs it
    stores (its engine calls are those its records report)."""
    path, store, log = write(tmp_path / "s.toml", SLOW), tmp_path / "store", tmp_path / "calls.log"
    env = {**os.environ, "CALL_LOG": str(log), "NUMBA_NUM_THREADS": "1"}
    command = [sys.executable, "-c", COUNTING_FASTMLP, "sweep", str(path), "--store", str(store)]
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(record_files(store)) < 2:
        assert first.poll() is None and time.monotonic() < deadline, "the sweep ended before it was killed"
        time.sleep(0.02)
    time.sleep(0.3)
    first.send_signal(signal.SIGKILL)
    first.wait()
    kept = {f.name: f.read_bytes() for f in record_files(store)}
    assert 2 <= len(kept) < 6, "the kill must land mid-sweep"
    assert all(json.loads(data)["status"] == "done" for data in kept.values())

    second = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert f"{len(kept)} done already, {6 - len(kept)} to run" in stderr
    records = [json.loads(f.read_text()) for f in record_files(store)]   # every file parses: none truncated
    assert sorted(r["id"] for r in records) == sorted(j.id for j in jobs_of(SLOW, tmp_path))
    assert all(r["status"] == "done" for r in records)
    assert all((store / name).read_bytes() == data for name, data in kept.items())
    rerun = [r for r in records if f"{r['id']}.json" not in kept]
    assert {r["worker"]["pid"] for r in rerun} == {second.pid}
    calls = log.read_text().split()
    assert calls.count(str(second.pid)) == sum(r["record"]["throughput"]["engine_calls"] for r in rerun)
    assert len(kept) <= calls.count(str(first.pid)) <= len(kept) + 1     # + the job it was killed in


# ------------------------------------------------------------------------------- a store several sweeps share
# Twelve jobs of about a third of a second each (lr 1e-5 never reaches zero training error: each runs to the cap).
TWELVE = SLOW.replace("N = [1000, 1001, 1002]", "N = [1000, 1001, 1002, 1003, 1004, 1005]").replace(
    "max-epochs = 6000", "max-epochs = 2000")


def start_sweeps(n, path, store, log, *args):
    env = {**os.environ, "CALL_LOG": str(log), "NUMBA_NUM_THREADS": "1"}
    command = [sys.executable, "-c", COUNTING_FASTMLP, "sweep", str(path), "--store", str(store), *map(str, args)]
    return [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(n)]


def check_each_job_computed_once(tmp_path, store, log, procs, killed=None):
    """Every job of TWELVE has one done record, every engine call made is one a record reports (plus, for a killed
    sweep, the job it was killed in), and no claim or temporary file is left."""
    records = [json.loads(f.read_text()) for f in record_files(store)]
    assert sorted(r["id"] for r in records) == sorted(j.id for j in jobs_of(TWELVE, tmp_path))
    assert all(r["status"] == "done" and r["record"]["throughput"]["engine_calls"] == 1 for r in records)
    calls = log.read_text().split()
    for p in procs:
        mine = sum(r["worker"]["pid"] == p.pid for r in records)
        assert calls.count(str(p.pid)) == mine + (p is killed), (p.pid, calls)
    assert len(calls) == 12 + (killed is not None)
    assert not list(store.glob("*.claim")) and not list(store.glob(".tmp-*"))
    return records


@pytest.mark.slow
@pytest.mark.parametrize("n_sweeps", [2, 3])
def test_sweeps_started_at_once_on_one_store_divide_the_jobs(tmp_path, n_sweeps):
    path, store, log = write(tmp_path / "s.toml", TWELVE), tmp_path / "store", tmp_path / "calls.log"
    procs = start_sweeps(n_sweeps, path, store, log)
    outputs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n_sweeps, outputs
    records = check_each_job_computed_once(tmp_path, store, log, procs)
    assert {r["worker"]["pid"] for r in records} == {p.pid for p in procs}        # each did a share
    ran = [int(re.search(r"ran (\d+) in", out).group(1)) for out in outputs]
    assert sum(ran) == 12 and all("12/12 jobs done" in out for out in outputs)


@pytest.mark.slow
def test_a_sweep_killed_mid_job_has_its_claim_taken_over_and_the_job_finished(tmp_path):
    path, store, log = write(tmp_path / "s.toml", TWELVE), tmp_path / "store", tmp_path / "calls.log"
    procs = start_sweeps(3, path, store, log, "--claim-timeout", 20)
    by_pid = {p.pid: p for p in procs}
    deadline = time.monotonic() + 120
    victim = job_id = None
    while victim is None:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "no sweep got to a job"
        for claim in store.glob("*.claim") if store.exists() else ():
            holder = Store(store, create=False).claim_of(claim.stem) or {}
            if holder.get("pid") in by_pid and not (store / f"{claim.stem}.json").exists() and len(
                    record_files(store)) >= 2:
                victim, job_id = by_pid[holder["pid"]], claim.stem
                break
        time.sleep(0.02)
    time.sleep(0.2)                                                     # into its job
    while True:   # the job it holds at the kill: it may have finished the first one within the 0.2 s
        held = [c.stem for c in store.glob("*.claim") if not (store / f"{c.stem}.json").exists()
                and (Store(store, create=False).claim_of(c.stem) or {}).get("pid") == victim.pid]
        if held:
            break
        assert time.monotonic() < deadline, "the sweep to kill holds no job"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    job_id = held[0]
    rest = [p for p in procs if p is not victim]
    outputs = [p.communicate(timeout=600)[1] for p in rest]
    assert [p.returncode for p in rest] == [0, 0], outputs
    records = check_each_job_computed_once(tmp_path, store, log, procs, killed=victim)
    taken_over = next(r for r in records if r["id"] == job_id)
    assert taken_over["worker"]["pid"] in {p.pid for p in rest}


def test_a_claim_of_another_machine_is_respected_until_it_goes_stale(tmp_path, engine_calls):
    path, store = write(tmp_path / "s.toml", TINY), tmp_path / "store"
    jobs = jobs_of(TINY, tmp_path)
    store.mkdir()
    live, dead = jobs[0].id, jobs[1].id
    for job_id, age in ((live, 0), (dead, 3600)):                       # node7 is working / was lost an hour ago
        (store / f"{job_id}.claim").write_text(json.dumps({"id": job_id, "host": "node7", "pid": 4242,
                                                           "token": "t", "claimed": "2026-01-01T00:00:00+00:00"}))
        os.utime(store / f"{job_id}.claim", (time.time() - age,) * 2)
    listed = cli("sweep", path, "--store", store, "--dry-run", "--claim-timeout", 3).output
    assert f"{live}  claimed by node7:4242 " in listed and f"{dead}  claimed by node7:4242 (stale) " in listed
    assert "6 to run (2 of them claimed by running sweeps)" in listed
    t0 = time.monotonic()
    result = cli("sweep", path, "--store", store, "--claim-timeout", 3)
    assert result.exit_code == 0, result.output
    assert "1 job is claimed by other processes (node7:4242): waiting for it; a claim not renewed for 3s" \
        in result.output
    assert time.monotonic() - t0 > 2                                   # the live claim was waited for
    records = Store(store, create=False).records()
    assert len(records) == 6 and {r["worker"]["pid"] for r in records} == {os.getpid()}
    assert len(engine_calls) == 6 and not list(store.glob("*.claim"))


def test_claims_are_exclusive_and_a_stale_one_is_taken_over_once(tmp_path):
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    store = Store(tmp_path / "store")
    for stale in (False, True):
        if stale:                                  # a claim of a lost process, which all of them see stale at once
            (store.path / "job.claim").write_text(json.dumps({"host": "node7", "pid": 1, "token": "t"}))
            os.utime(store.path / "job.claim", (time.time() - 3600,) * 2)
        barrier, done, results = ctx.Barrier(8), ctx.Barrier(8), ctx.Queue()

        def contend():
            barrier.wait()
            claim = store.claim("job", timeout=60)
            done.wait()                            # alive until all have tried: a claim of a process gone is stale
            results.put(None if claim is None else claim.token)
        procs = [ctx.Process(target=contend) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        won = [t for t in (results.get(timeout=10) for _ in procs) if t is not None]
        assert len(won) == 1                                            # exactly one process holds the job
        assert json.loads((store.path / "job.claim").read_text())["token"] == won[0]
        assert not list(store.path.glob(".tmp-*"))
        (store.path / "job.claim").unlink()


def test_a_record_replaced_meanwhile_is_a_warning(tmp_path, monkeypatch):
    from fastmlp import protocol
    text = TINY.replace("N = [40, 60, 80]", "N = 40").replace("L = [1, 2]", "L = 1")
    path, store = write(tmp_path / "s.toml", text), tmp_path / "store"
    (job,) = jobs_of(text, tmp_path)
    real = protocol.run

    def racing(spec, **kwargs):        # another process (whose claim went stale, say) finishes the job meanwhile
        rec = real(spec, **kwargs)
        other = sweep.job_record(job, "done", rec, None, rec["provenance"], "t", 1.0)
        Store(store).write(other | {"worker": {"host": "node7", "pid": 4242}, "finished": "2026-01-01T00:00:00"})
        return rec
    monkeypatch.setattr(protocol, "run", racing)
    result = cli("sweep", path, "--store", store)
    assert result.exit_code == 0, result.output
    assert (f"sweep: warning: replaced the done record of job {job.id} that node7:4242 wrote at "
            f"2026-01-01T00:00:00 while this process ran the job too") in result.output
    assert Store(store, create=False).load(job.id)["worker"]["pid"] == os.getpid()


# --------------------------------------------------------------------------------------------------- Dask
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sweep_on_a_local_cluster_of_two_worker_processes(tmp_path):
    path = write(tmp_path / "s.toml", TINY)
    result = subprocess.run(fastmlp_command("sweep", path, "--store", tmp_path / "dask", "--workers", 2),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "local Dask cluster of 2 worker processes" in result.stderr and "6/6 jobs" in result.stderr
    records = Store(tmp_path / "dask", create=False).records()
    assert len(records) == 6 and all(r["status"] == "done" for r in records)
    assert all(r["worker"]["pid"] != os.getpid() for r in records)
    cores = len(os.sched_getaffinity(0))
    assert {r["provenance"]["threads"] for r in records} == {max(1, cores // 2)}   # the cores shared out
    # the same numbers as in this process
    assert cli("sweep", path, "--store", tmp_path / "here").exit_code == 0
    assert results_of(tmp_path / "dask") == results_of(tmp_path / "here")


@pytest.fixture
def dask_cluster(tmp_path):
    """A `dask scheduler` and two single-threaded `dask worker` processes on 127.0.0.1 (no nanny: killing a
    worker's process kills the worker) -> (address, {worker name: worker process})."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = open(tmp_path / "dask.log", "w")
    names = ["w0", "w1"]
    procs = [subprocess.Popen(dask_command("scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"),
                              stdout=logs, stderr=subprocess.STDOUT)]
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    for name in names:
        procs.append(subprocess.Popen(dask_command("worker", address, "--nthreads", 1, "--no-nanny", "--no-dashboard",
                                                   "--host", "127.0.0.1", "--name", name),
                                      stdout=logs, stderr=subprocess.STDOUT, env=env))
    from distributed import Client
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, dict(zip(names, procs[1:]))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        logs.close()


@pytest.mark.slow
def test_sweep_connects_to_a_dask_scheduler_by_address(tmp_path, dask_cluster):
    address, workers = dask_cluster
    path = write(tmp_path / "s.toml", TINY)
    result = subprocess.run(fastmlp_command("sweep", path, "--store", tmp_path / "store", "--scheduler", address),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"on the Dask cluster at {address}" in result.stderr
    records = Store(tmp_path / "store", create=False).records()
    assert len(records) == 6 and all(r["status"] == "done" for r in records)
    assert {r["worker"]["pid"] for r in records} <= {p.pid for p in workers.values()}


@pytest.mark.slow
def test_a_dask_worker_killed_mid_job_does_not_stop_the_sweep(tmp_path, dask_cluster):
    from distributed import Client
    address, workers = dask_cluster
    path, store = write(tmp_path / "s.toml", SLOW), tmp_path / "store"
    sweep_proc = subprocess.Popen(fastmlp_command("sweep", path, "--store", store, "--scheduler", address),
                                  stderr=subprocess.PIPE, text=True)
    killed, lost = None, None
    with Client(address, timeout=60) as client:
        deadline = time.monotonic() + 120
        while killed is None:
            assert sweep_proc.poll() is None and time.monotonic() < deadline, "no job ever started"
            busy = {addr: keys for addr, keys in client.processing().items() if keys}
            if busy:
                time.sleep(0.3)                                           # into the job
                addr, keys = next(iter(busy.items()))
                killed = workers[client.scheduler_info()["workers"][addr]["name"]]
                lost = {str(k).removeprefix("fastmlp-") for k in keys}
                killed.send_signal(signal.SIGKILL)
            time.sleep(0.05)
    _, stderr = sweep_proc.communicate(timeout=300)
    assert sweep_proc.returncode == 0, stderr
    assert killed.poll() is not None
    records = {r["id"]: r for r in Store(store, create=False).records()}
    assert len(records) == 6 and all(r["status"] == "done" for r in records.values())
    assert lost and all(records[job_id]["worker"]["pid"] != killed.pid for job_id in lost)


def test_gpu_jobs_are_refused_up_front_where_no_gpu_is_usable(tmp_path, without_gpu):
    result = cli("sweep", write(tmp_path / "s.toml", TINY), "--store", tmp_path / "store", "--set", "backend=gpu")
    assert result.exit_code == 2 and "--backend gpu needs CuPy and a CUDA device" in result.output
    assert not list((tmp_path / "store").glob("*.json"))


@pytest.mark.gpu
def test_a_sweep_runs_on_the_gpu_in_process(tmp_path):
    path = write(tmp_path / "s.toml", TINY)
    assert cli("sweep", path, "--store", tmp_path / "here", "--set", "backend=gpu").exit_code == 0
    records = Store(tmp_path / "here", create=False).records()
    assert len(records) == 6 and all(r["status"] == "done" for r in records)
    assert all(r["provenance"]["backend"] == "gpu" and r["record"]["config"]["backend"] == "gpu" for r in records)


@pytest.mark.gpu
def test_a_sweep_on_the_gpu_gives_the_same_records_on_a_local_cluster(tmp_path):
    pytest.importorskip("distributed")   # not on every GPU machine
    path = write(tmp_path / "s.toml", TINY)
    assert cli("sweep", path, "--store", tmp_path / "here", "--set", "backend=gpu").exit_code == 0
    result = subprocess.run(fastmlp_command("sweep", path, "--store", tmp_path / "dask", "--set", "backend=gpu",
                                            "--workers", 1), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert results_of(tmp_path / "dask") == results_of(tmp_path / "here")
