"""Sweeps on SLURM, for real: `fastmlp sweep --slurm` (Dask workers in batch jobs, through dask-jobqueue) and job
arrays of `--shard`, on whatever SLURM cluster answers here (the one-node cluster of bench/slurm_local.sh: the tests
never start one), with faults injected: a worker killed with SIGKILL mid-job, a batch job cancelled mid-run.  The
tests marked `slurm` are skipped where no cluster answers; the checks of bad input that need no cluster run
everywhere."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_sweep import SLOW, TINY, TWELVE, fastmlp_command, jobs_of, record_files, results_of, write

from fastmlp import slurm
from fastmlp.cli import main
from fastmlp.errors import UsageError
from fastmlp.store import check_job_record

ROOT = Path(__file__).parent.parent
FOUR = SLOW.replace("N = [1000, 1001, 1002]", "N = [1000, 1001]")   # four jobs of about a second each
ARRAY_SCRIPT = ROOT / "examples" / "slurm-array.sh"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def environment():
    """This process's environment with this interpreter's scripts (`fastmlp`) first on PATH, as batch jobs get it
    (sbatch passes the submitter's environment on)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def slurm_job_ids():
    """The ids of every job SLURM still lists, ended ones included."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def partition_cpus():
    return max(p["cpus"] for p in slurm.partitions().values())


def check_store(store, expected_ids):
    """Every job of expected_ids has exactly one record, each a whole, valid record (no temporary file, no claim
    left behind) -> {id: record}."""
    records = {}
    for f in record_files(store):
        rec = json.loads(f.read_text())               # a half-written file would not parse
        assert check_job_record(rec) is None, (f, check_job_record(rec))
        assert rec["id"] == f.stem
        records[rec["id"]] = rec
    assert sorted(records) == sorted(expected_ids)
    assert not list(Path(store).glob("*.claim")) and not list(Path(store).glob(".tmp-*"))
    return records


class Sweep:
    """A `fastmlp sweep` process whose stderr is read as it comes (the scheduler's address is in its first lines)."""

    def __init__(self, *args, cwd, env=None):
        self.lines = []
        self.proc = subprocess.Popen(fastmlp_command("sweep", *args), cwd=cwd, env=env or environment(),
                                     stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")),
                                       daemon=True)
        self.reader.start()

    @property
    def stderr(self):
        return "".join(self.lines)

    def scheduler(self, timeout=120):
        """The address of the sweep's Dask scheduler, once it has said it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"Dask scheduler at (tcp://\S+)", self.stderr)
            if m:
                return m.group(1)
            assert self.proc.poll() is None, self.stderr
            time.sleep(0.1)
        raise AssertionError(f"no scheduler address within {timeout}s: {self.stderr}")

    def wait(self, timeout=300):
        self.proc.wait(timeout)
        self.reader.join(10)
        return self.proc.returncode


def busy_worker(client, sweep, timeout=120):
    """(address, pid, SLURM job id) of a worker that is running a job of the sweep, and the keys it holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert sweep.proc.poll() is None, sweep.stderr
        busy = {addr: keys for addr, keys in client.processing().items() if keys}
        if busy:
            addr, keys = next(iter(busy.items()))
            info = client.run(lambda: (os.getpid(), os.environ.get("SLURM_JOB_ID")), workers=[addr])[addr]
            return addr, info[0], info[1], {str(k).removeprefix("fastmlp-") for k in keys}
        time.sleep(0.05)
    raise AssertionError(f"no worker got a job within {timeout}s: {sweep.stderr}")


# ------------------------------------------------------------------------------ bad input, on any machine
def test_no_slurm_on_this_machine_exits_2_in_one_line_before_the_store_exists(tmp_path):
    path = write(tmp_path / "s.toml", TINY)
    result = subprocess.run(fastmlp_command("sweep", path, "--store", tmp_path / "store", "--slurm", 2),
                            env={**os.environ, "PATH": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "fastmlp: error: --slurm needs SLURM, and sbatch, sinfo, squeue, scancel are not on PATH: run the sweep on "
        "a SLURM cluster's login node (or without --slurm)"]
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("args, message", [
    (["--slurm", 0], "--slurm must be at least 1 (got 0)"),
    (["--slurm-cores", 4], "--slurm-cores applies to a sweep on SLURM: add --slurm JOBS"),
    (["--slurm", 2, "--workers", 2], "give one of --workers (a local cluster), --scheduler (an existing one) and "
                                     "--slurm"),
    (["--slurm", 2, "--slurm-cores", 2, "--slurm-workers", 3], "--slurm-workers 3 is more than --slurm-cores 2"),
    (["--slurm", 2, "--slurm-memory", "lots"], "--slurm-memory takes a size such as 4G or 4096M (got 'lots')"),
    (["--slurm", 2, "--slurm-walltime", "1:2:3:4"], "--slurm-walltime takes a SLURM time such as 90, 12:00:00"),
    (["--slurm", 2, "--slurm-walltime", "0"], "--slurm-walltime must be more than zero"),
])
def test_bad_slurm_options_exit_2_in_one_line(tmp_path, args, message):
    result = cli("sweep", write(tmp_path / "s.toml", TINY), "--store", tmp_path / "store", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastmlp: error: ") and message in lines[0], lines
    assert not (tmp_path / "store").exists()


def fake_slurm(directory, sinfo):
    """sbatch, squeue and scancel that do nothing, and an sinfo that runs the shell code ``sinfo``, in directory."""
    directory.mkdir()
    for name, body in (("sbatch", "exit 0"), ("squeue", "exit 0"), ("scancel", "exit 0"), ("sinfo", sinfo)):
        (directory / name).write_text(f"#!/bin/sh\n{body}\n")
        (directory / name).chmod(0o755)
    return str(directory)


TABLE = "printf 'batch*|up|2-00:00:00|4|16|64000\\nlong|up|infinite|2|16|64000\\nold|down|1:00:00|1|8|32000\\n'"


@pytest.mark.parametrize("sinfo, args, message", [
    ("echo 'slurm_load_partitions: Unable to contact slurm controller (connect failure)' >&2; exit 1", [],
     "--slurm: sinfo failed (slurm_load_partitions: Unable to contact slurm controller (connect failure)): is "
     "slurmctld running?"),
    (TABLE, ["--slurm-partition", "old"], "--slurm-partition old: the partition is down, not up"),
    (TABLE, ["--slurm-cores", 32], "--slurm-cores 32: the largest node of partition batch has 16 CPUs"),
    (TABLE, ["--slurm-walltime", "3-00:00:00"], "--slurm-walltime 3-00:00:00: partition batch allows at most "
                                               "2-00:00:00; ask for less"),
    (TABLE, ["--slurm-walltime", "30-00:00:00", "--slurm-partition", "long"], None),   # no limit: accepted
    (TABLE.replace("batch*", "batch"), [], "--slurm: this cluster has no default partition: give --slurm-partition "
                                           "(one of batch, long, old)"),
])
def test_the_request_is_checked_against_what_sinfo_reports(tmp_path, monkeypatch, sinfo, args, message):
    """With stand-ins for SLURM's commands (so on any machine): what sinfo says decides, and nothing is submitted."""
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", sinfo))
    jobs = jobs_of(TINY, tmp_path)
    options = dict(zip([a.removeprefix("--slurm-") for a in args[::2]], args[1::2]))
    if message is None:
        request = slurm.check_request(2, jobs, **options)
        assert (request.partition, request.walltime, request.cores) == ("long", "30-00:00:00", 1)
        return
    with pytest.raises(UsageError) as e:
        slurm.check_request(2, jobs, **options)
    assert str(e.value).startswith(message), str(e.value)


def test_a_sweep_on_slurm_without_dask_jobqueue_exits_2_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", TABLE) + os.pathsep + os.environ["PATH"])
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)             # import dask_jobqueue fails
    result = cli("sweep", write(tmp_path / "s.toml", TINY), "--store", tmp_path / "store", "--slurm", 2)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "fastmlp: error: --slurm needs dask-jobqueue: pip install 'fastmlp[cluster]'"]
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("text, seconds", [("90", 5400), ("30:15", 1815), ("12:00:00", 43200), ("2-0", 172800),
                                           ("1-02:03", 93780), ("1-00:00:01", 86401)])
def test_slurm_times_read_as_sbatch_reads_them(text, seconds):
    assert slurm.parse_time(text) == seconds


@pytest.mark.parametrize("text, size", [("4G", 4 << 30), ("4GB", 4 << 30), ("4 GiB", 4 << 30), ("4096", 4 << 30),
                                        ("512M", 512 << 20), ("1.5T", 3 << 39), ("100k", 100 << 10)])
def test_slurm_memory_reads_as_sbatch_reads_it(text, size):
    assert slurm.parse_memory(text) == size
    with pytest.raises(UsageError):
        slurm.parse_memory(text + "x")


def test_the_cluster_section_of_the_docs_shows_what_these_tests_run():
    doc = (ROOT / "docs" / "sweeps.md").read_text()
    assert ARRAY_SCRIPT.read_text() in doc                       # the array script, verbatim
    assert f"```toml\n{TINY}```" in doc and "fastmlp sweep tiny.toml --slurm 2\n" in doc   # the small sweep


# ----------------------------------------------------------------------------------- bad input, on SLURM
@pytest.mark.slurm
@pytest.mark.parametrize("args, message", [
    (["--slurm-partition", "no-such-partition"], r"--slurm-partition no-such-partition: no such partition \(sinfo "
                                                 r"shows .+\)$"),
    (["--slurm-cores", 100000], r"--slurm-cores 100000: the largest node of partition \S+ has \d+ CPUs; ask for at "
                                r"most \d+$"),
    (["--slurm-memory", "1000T"], r"--slurm-memory 1000T: \d+ MiB per job, but the largest node of partition \S+ "
                                  r"has \d+ MiB; ask for less$"),
    (["--slurm-memory", "1K"], r"--slurm-memory 1K: .+ per worker, but the largest job, run 1-local N=80 L=2 .+, "
                               r"needs about .+: raise --slurm-memory or lower --slurm-workers$"),
    (["--slurm-walltime", "365-00:00:00"], r"--slurm-walltime 365-00:00:00: partition \S+ allows at most "
                                           r"[\d:-]+; ask for less$"),
])
def test_an_impossible_slurm_request_exits_2_before_any_job_is_submitted(tmp_path, args, message):
    if "--slurm-walltime" in args and all(p["time_limit_s"] is None for p in slurm.partitions().values()):
        pytest.skip("no partition here has a time limit")
    before = slurm_job_ids()
    result = cli("sweep", write(tmp_path / "s.toml", TINY), "--store", tmp_path / "store", "--slurm", 2, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"fastmlp: error: " + message, lines[0]), lines
    assert not (tmp_path / "store").exists()
    assert slurm_job_ids() <= before                     # nothing was submitted


# ------------------------------------------------------------------------------------ a sweep on SLURM
@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("args, processes", [(["--slurm", 2], 1),
                                             (["--slurm", 1, "--slurm-cores", 2, "--slurm-workers", 2], 2)],
                         ids=["two-jobs-of-one-core", "one-job-of-two-workers"])
def test_a_small_sweep_on_slurm_stores_one_record_per_job_naming_its_slurm_job(tmp_path, args, processes):
    """The sweep submits its workers as batch jobs, gets every record back and alone writes the store; each job's
    workers share its cores (one thread each here); the records name the SLURM job, and hold the numbers that the
    same sweep gives in one process; the batch jobs are gone when the sweep ends."""
    pytest.importorskip("dask_jobqueue")
    if processes > partition_cpus():
        pytest.skip(f"needs a node of {processes} CPUs")
    path, store = write(tmp_path / "s.toml", TINY), tmp_path / "slurm"
    before = slurm_job_ids()
    t0 = time.monotonic()
    sweep = Sweep(path, "--store", store, *args, cwd=tmp_path)
    assert sweep.wait() == 0, sweep.stderr
    wall = time.monotonic() - t0
    assert "6/6 jobs done, 0 failed; ran 6 in" in sweep.stderr and "warning" not in sweep.stderr
    assert re.search(r"running on \d SLURM jobs? in partition \S+ \(\d cores?, \d+ MiB, the partition's default "
                     r"time limit each\), \d Dask worker process(es)? per job, 1 thread\(s\) each", sweep.stderr)
    records = check_store(store, [j.id for j in jobs_of(TINY, tmp_path)])
    ours = slurm_job_ids() - before                      # the batch jobs this sweep submitted
    assert len(ours) == int(args[1])
    for rec in records.values():
        assert rec["status"] == "done" and str(rec["worker"]["slurm_job_id"]) in ours
        assert rec["worker"]["pid"] != sweep.proc.pid and rec["provenance"]["threads"] == 1
    assert not slurm.live_jobs(ours)                     # cancelled at the end of the sweep
    assert cli("sweep", path, "--store", tmp_path / "here").exit_code == 0
    assert results_of(store) == results_of(tmp_path / "here")
    print(f"small SLURM sweep ({' '.join(map(str, args))}): {wall:.1f} s")


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("allowed_failures", [None, 0], ids=["rescheduled", "failed-then-retried"])
def test_a_worker_killed_mid_job_loses_no_record(tmp_path, allowed_failures):
    """SIGKILL of the worker process running a job: its nanny starts a new one and Dask runs the job again
    (allowed_failures None, Dask's default); with no failure allowed the job is stored as failed (KilledWorker) and
    `--retry-failed` runs it.  Either way every job ends with one whole record, computed once for the store."""
    pytest.importorskip("dask_jobqueue")
    from distributed import Client
    path, store = write(tmp_path / "s.toml", FOUR), tmp_path / "store"
    env = environment()
    if allowed_failures is not None:
        env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = str(allowed_failures)
    sweep = Sweep(path, "--store", store, "--slurm", 1, cwd=tmp_path, env=env)
    with Client(sweep.scheduler(), timeout=60) as client:
        _, pid, job_id, lost = busy_worker(client, sweep)
        time.sleep(0.3)                                  # into the job
        os.kill(pid, signal.SIGKILL)
    status = sweep.wait()
    ids = [j.id for j in jobs_of(FOUR, tmp_path)]
    records = check_store(store, ids)
    if allowed_failures is None:
        assert status == 0, sweep.stderr
        assert "4/4 jobs done, 0 failed; ran 4 in" in sweep.stderr
        assert all(r["status"] == "done" for r in records.values())
        assert all(records[i]["worker"]["pid"] != pid for i in lost)
        return
    assert status == 1, sweep.stderr
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert failed and {r["id"] for r in failed} <= lost, (lost, sweep.stderr)
    assert all(r["error"]["type"] == "KilledWorker" for r in failed)
    done_before = {r["id"]: (store / f"{r['id']}.json").read_bytes() for r in records.values() if r["status"] == "done"}
    retry = Sweep(path, "--store", store, "--slurm", 1, "--retry-failed", cwd=tmp_path)
    assert retry.wait() == 0, retry.stderr
    assert f"{len(done_before)} done already, {len(failed)} to run" in retry.stderr
    records = check_store(store, ids)
    assert all(r["status"] == "done" for r in records.values()) and "warning" not in retry.stderr
    assert all((store / f"{i}.json").read_bytes() == data for i, data in done_before.items())


@pytest.mark.slurm
@pytest.mark.slow
def test_a_slurm_job_cancelled_mid_run_is_replaced_and_the_sweep_completes(tmp_path):
    """scancel of the one batch job while a worker in it runs a job: the sweep submits another, Dask reruns what
    the cancelled workers held there, and every job ends with one record (two SLURM jobs named among them)."""
    pytest.importorskip("dask_jobqueue")
    from distributed import Client
    path, store = write(tmp_path / "s.toml", FOUR), tmp_path / "store"
    sweep = Sweep(path, "--store", store, "--slurm", 1, cwd=tmp_path)
    with Client(sweep.scheduler(), timeout=60) as client:
        deadline = time.monotonic() + 120
        while not store.exists() or not record_files(store):       # the first job's record, from the first job
            assert sweep.proc.poll() is None and time.monotonic() < deadline, sweep.stderr
            time.sleep(0.05)
        _, _, job_id, lost = busy_worker(client, sweep)
        time.sleep(0.3)
        subprocess.run(["scancel", job_id], check=True)
    assert sweep.wait() == 0, sweep.stderr
    assert f"SLURM job {job_id} ended: submitting 1 in its place" in sweep.stderr
    assert "4/4 jobs done, 0 failed; ran 4 in" in sweep.stderr and "warning" not in sweep.stderr
    records = check_store(store, [j.id for j in jobs_of(FOUR, tmp_path)])
    assert all(r["status"] == "done" for r in records.values())
    named = {str(r["worker"]["slurm_job_id"]) for r in records.values()}
    assert len(named) == 2 and all(str(records[i]["worker"]["slurm_job_id"]) != job_id for i in lost)


# ------------------------------------------------------------------------------------------ job arrays
def sbatch_array(tmp_path, *args, wait=True):
    """sbatch of a job array from tmp_path, waiting for its end unless wait is False -> (the tasks' exit statuses
    {task: status} or None when not waiting, the array job id); a task's output goes to tmp_path/slurm-JOB_TASK.out.
    (sbatch --wait polls ever more slowly, up to half a minute late: squeue is asked every fifth of a second.)"""
    command = ["sbatch", "--parsable", "--cpus-per-task=1", "--mem=1G", "--time=15",
               f"--output={tmp_path}/slurm-%A_%a.out", *map(str, args)]
    out = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    if not wait:
        return None, job
    deadline = time.monotonic() + 600
    while array_live(job):
        assert time.monotonic() < deadline, f"array job {job} still runs after 600 s"
        time.sleep(0.2)
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    statuses = {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"ArrayTaskId=(\d+) .*?ExitCode=(\d+):", shown)}
    return statuses, job


def array_live(job):
    """Whether a task of array job `job` is still queued or running."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], capture_output=True, text=True)
    return any(state.rstrip("+") in slurm.LIVE_STATES for state in out.stdout.split())


def task_outputs(tmp_path, job):
    return {int(f.stem.rsplit("_", 1)[1]): f.read_text() for f in tmp_path.glob(f"slurm-{job}_*.out")}


@pytest.mark.slurm
@pytest.mark.slow
def test_the_documented_array_script_runs_one_shard_per_task_into_one_store(tmp_path):
    """Two array tasks of examples/slurm-array.sh (the script docs/sweeps.md shows), at once on one store: every
    record present once, written by the task whose shard holds the job, and naming that task."""
    path, store = write(tmp_path / "s.toml", TWELVE), tmp_path / "store"
    status, job = sbatch_array(tmp_path, "--array=0-1", ARRAY_SCRIPT, path, store)
    outputs = task_outputs(tmp_path, job)
    assert status == {0: 0, 1: 0} and sorted(outputs) == [0, 1], outputs
    ids = [j.id for j in jobs_of(TWELVE, tmp_path)]
    records = check_store(store, ids)
    spans = {}
    for rec in records.values():
        w = rec["worker"]
        assert rec["status"] == "done" and str(w["slurm_array_job_id"]) == job
        assert w["slurm_array_task_id"] == int(rec["id"], 16) % 2      # shard i/2 of task i
        start, end = spans.get(w["slurm_array_task_id"], (rec["started"], rec["finished"]))
        spans[w["slurm_array_task_id"]] = (min(start, rec["started"]), max(end, rec["finished"]))
    assert sorted(spans) == [0, 1]
    if partition_cpus() >= 2:                                           # the two tasks ran at the same time
        assert max(s for s, _ in spans.values()) <= min(e for _, e in spans.values()), spans
    for i, out in outputs.items():
        n = sum(int(r, 16) % 2 == i for r in ids)
        assert f"sweep: {n}/{n} jobs done, 0 failed; ran {n} in" in out, out


@pytest.mark.slurm
@pytest.mark.slow
def test_two_array_tasks_of_the_whole_sweep_divide_it_through_the_store(tmp_path):
    """Without --shard, two array tasks running the same sweep on one store claim its jobs between them: each job
    is computed by one of them, and both end when the whole sweep is done."""
    path, store = write(tmp_path / "s.toml", TWELVE), tmp_path / "store"
    status, job = sbatch_array(tmp_path, "--array=0-1", "--wrap",
                               f"NUMBA_NUM_THREADS=1 exec fastmlp sweep {path} --store {store}")
    outputs = task_outputs(tmp_path, job)
    assert status == {0: 0, 1: 0} and sorted(outputs) == [0, 1], outputs
    records = check_store(store, [j.id for j in jobs_of(TWELVE, tmp_path)])
    ran = {i: int(re.search(r"ran (\d+) in", out).group(1)) for i, out in outputs.items()}
    assert sum(ran.values()) == 12 and all("12/12 jobs done" in out for out in outputs.values()), outputs
    assert all("warning" not in out for out in outputs.values())
    by_task = {i: sum(r["worker"]["slurm_array_task_id"] == i for r in records.values()) for i in (0, 1)}
    assert by_task == ran


@pytest.mark.slurm
@pytest.mark.slow
def test_an_array_task_cancelled_mid_run_is_finished_by_resubmitting_it(tmp_path):
    """scancel of an array task while its sweep runs a job: the sweep stops cleanly (SIGTERM) with every finished
    job stored whole and its claim released; the same sbatch again runs only the rest."""
    path, store = write(tmp_path / "s.toml", SLOW), tmp_path / "store"
    _, job = sbatch_array(tmp_path, "--array=0-0", ARRAY_SCRIPT, path, store, wait=False)
    deadline = time.monotonic() + 180
    while not store.exists() or len(record_files(store)) < 2:
        assert time.monotonic() < deadline, task_outputs(tmp_path, job)
        time.sleep(0.1)
    subprocess.run(["scancel", job], check=True)
    while array_live(job):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    (first,) = task_outputs(tmp_path, job).values()
    assert "sweep: interrupted; every finished job is in" in first, first
    kept = {f.name: f.read_bytes() for f in record_files(store)}
    assert 2 <= len(kept) < 6 and not list(store.glob("*.claim"))
    ids = [j.id for j in jobs_of(SLOW, tmp_path)]
    check_store(store, [i for i in ids if f"{i}.json" in kept])        # what was stored is whole
    status, again = sbatch_array(tmp_path, "--array=0-0", ARRAY_SCRIPT, path, store)
    (second,) = task_outputs(tmp_path, again).values()
    assert status == {0: 0} and f"{len(kept)} done already, {6 - len(kept)} to run" in second, second
    records = check_store(store, ids)
    assert all(r["status"] == "done" for r in records.values())
    assert all((store / name).read_bytes() == data for name, data in kept.items())
    assert {str(r["worker"]["slurm_array_job_id"]) for n, r in records.items() if f"{n}.json" not in kept} == {again}
