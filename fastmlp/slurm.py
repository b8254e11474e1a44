"""Sweeps on SLURM: Dask workers in batch jobs (dask-jobqueue), the request checked against `sinfo` first.

`fastmlp sweep FILE --slurm JOBS` submits JOBS batch jobs, each of --slurm-cores cores and --slurm-memory memory in
--slurm-partition for --slurm-walltime, and runs --slurm-workers Dask worker processes in each; the jobs of the sweep
go to those workers, one at a time per worker, and their records come back to the sweep process, which alone writes
the store (so the store need not be on a file system the nodes share).  A job's workers share its cores as those of a
local cluster do: each runs with cores // workers threads, set in its environment before it starts.

Before anything is submitted (and before the store is created), `check_request` refuses, in one line: no SLURM on
this machine (sbatch, sinfo, squeue or scancel not on PATH, or sinfo failing), no dask-jobqueue, an unknown partition
or one that is not up, a request no node of the partition can meet (more cores or memory than its largest node, more
time than its limit), and memory per worker below the largest job's estimate.

While the sweep runs, a batch job that ends (scancel, its time limit, a node lost) is replaced by a new one, so that
JOBS stay queued or running; the jobs its workers held are rescheduled by Dask on the others.  A worker process killed
mid-job is restarted by its nanny and its job rescheduled the same way; a job whose workers keep dying is stored as
failed (Dask's KilledWorker), to be rerun with --retry-failed.  A job's record names the SLURM job its worker ran in
(fastmlp.sweep.job_record).

What the options do not set comes from dask-jobqueue's configuration (`jobqueue.slurm` in ~/.config/dask/
jobqueue.yaml or DASK_JOBQUEUE__SLURM__* variables): account, interface, log-directory, job-extra-directives, ...
"""
import math
import re
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass

from .errors import UsageError
from .preflight import gb

THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
WORKER_OVERHEAD_BYTES = 1 << 30     # a worker process beyond its job's arrays: Python, NumPy, Numba, Dask
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
               "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT"}
SINFO_TIMEOUT_S = 30
JOB_NAME = "fastmlp-worker"      # the batch jobs' name, as squeue shows it


@dataclass(frozen=True)
class Request:
    """What `fastmlp sweep --slurm` asks SLURM for, checked."""
    jobs: int                  # batch jobs kept queued or running
    cores: int                 # CPU cores of each (--cpus-per-task)
    workers: int               # Dask worker processes of each, sharing its cores
    memory_mib: int            # memory of each (--mem), MiB
    walltime: str | None       # time limit of each, as SLURM spells it; None: the partition's default
    partition: str             # the partition (the default one when none was named)

    @property
    def threads(self):
        return self.cores // self.workers


# ---------------------------------------------------------------------------------------------- parsing
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(text, option="--slurm-memory"):
    """A memory size as SLURM reads it -> bytes: a number with K, M, G or T (binary units; KB, GiB and the like are
    read the same), MiB when it has no unit ("4G", "4096M", "4096")."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UsageError(f"{option} takes a size such as 4G or 4096M (got {text!r})")
    number, unit = float(m.group(1)), (m.group(2) or "M").upper()
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise UsageError(f"{option} must be more than zero (got {text!r})")
    return size


def parse_time(text, option="--slurm-walltime"):
    """A time limit as SLURM spells it -> seconds: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
    days-hours:minutes or days-hours:minutes:seconds."""
    s = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise UsageError(f"{option} takes a SLURM time such as 90, 12:00:00 or 2-00:00:00 (got {text!r})")
    days, a, b, c = m.groups()
    a, b, c = int(a), None if b is None else int(b), None if c is None else int(c)
    if days is not None:                       # days-hours[:minutes[:seconds]]
        seconds = int(days) * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:                        # hours:minutes:seconds
        seconds = a * 3600 + b * 60 + c
    elif b is not None:                        # minutes:seconds
        seconds = a * 60 + b
    else:                                      # minutes
        seconds = a * 60
    if seconds <= 0:
        raise UsageError(f"{option} must be more than zero (got {text!r})")
    return seconds


def _limit_seconds(text):
    """A partition's time limit as sinfo prints it -> seconds, None when there is none (infinite)."""
    if text.strip().lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    return parse_time(text, "sinfo")


# ---------------------------------------------------------------------------------------------- sinfo
def _run(command, what):
    """stdout of a SLURM command; UsageError (one line: its error) when it cannot run or fails."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=SINFO_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"--slurm: {what} failed ({e}): is this a SLURM cluster's login node?") from None
    if out.returncode != 0:
        lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {out.returncode}"
        raise UsageError(f"--slurm: {what} failed ({reason}): is slurmctld running?")
    return out.stdout


def _number(text):
    """The leading integer of a sinfo field ("8+", "24105+": the smallest of a range), 0 when there is none."""
    m = re.match(r"\d+", text.strip())
    return int(m.group()) if m else 0


def partitions():
    """{name: {cpus, memory_mib, time_limit_s, available, nodes, default}} of every partition sinfo shows, each
    node count summed and each size the largest of its nodes' (sinfo prints one line per distinct node setup)."""
    out = _run(["sinfo", "-a", "-h", "-o", "%P|%a|%l|%D|%c|%m"], "sinfo")   # -a: hidden partitions too
    parts = {}
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, available, limit, nodes, cpus, memory = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        p = parts.setdefault(name, {"cpus": 0, "memory_mib": 0, "time_limit_s": _limit_seconds(limit),
                                    "available": available, "nodes": 0, "default": default})
        p["cpus"] = max(p["cpus"], _number(cpus))
        p["memory_mib"] = max(p["memory_mib"], _number(memory))
        p["nodes"] += _number(nodes)
    return parts


# ---------------------------------------------------------------------------------------------- checks
def check_request(jobs, todo, cores=None, workers=None, memory=None, walltime=None, partition=None):
    """The checked Request for the jobs to run (``todo``, fastmlp.sweep Jobs), or UsageError in one line: bad
    values, no SLURM here, no dask-jobqueue, a partition that does not exist or is not up, a request larger than
    the partition's largest node or its time limit, memory per worker below the largest job's estimate.  It only
    asks sinfo; nothing is submitted."""
    cores = 1 if cores is None else cores
    workers = 1 if workers is None else workers
    for option, value in (("--slurm", jobs), ("--slurm-cores", cores), ("--slurm-workers", workers)):
        if value < 1:
            raise UsageError(f"{option} must be at least 1 (got {value})")
    if workers > cores:
        raise UsageError(f"--slurm-workers {workers} is more than --slurm-cores {cores}: each worker needs a core; "
                         f"raise --slurm-cores or lower --slurm-workers")
    memory_bytes = None if memory is None else parse_memory(memory)
    seconds = None if walltime is None else parse_time(walltime)
    missing = [name for name in ("sbatch", "sinfo", "squeue", "scancel") if shutil.which(name) is None]
    if missing:
        raise UsageError(f"--slurm needs SLURM, and {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                         f"not on PATH: run the sweep on a SLURM cluster's login node (or without --slurm)")
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        raise UsageError("--slurm needs dask-jobqueue: pip install 'fastmlp[cluster]'") from None

    parts = partitions()
    if partition is None:
        defaults = [name for name, p in parts.items() if p["default"]]
        if not defaults:
            raise UsageError(f"--slurm: this cluster has no default partition: give --slurm-partition (one of "
                             f"{', '.join(sorted(parts)) or 'none: sinfo shows no partition'})")
        partition = defaults[0]
    if partition not in parts:
        raise UsageError(f"--slurm-partition {partition}: no such partition (sinfo shows "
                         f"{', '.join(sorted(parts)) or 'none'})")
    p = parts[partition]
    if p["available"] != "up":
        raise UsageError(f"--slurm-partition {partition}: the partition is {p['available']}, not up: its jobs "
                         f"would never start; choose another")
    if cores > p["cpus"]:
        raise UsageError(f"--slurm-cores {cores}: the largest node of partition {partition} has {p['cpus']} CPUs; "
                         f"ask for at most {p['cpus']}")

    from .sweep import job_bytes
    if not todo:
        raise ValueError("check_request needs the jobs to run")
    largest = max(todo, key=job_bytes)
    need = job_bytes(largest)
    if memory_bytes is None:   # the largest job and a worker's own memory, per worker, in whole GiB
        memory_bytes = workers * math.ceil((need + WORKER_OVERHEAD_BYTES) / (1 << 30)) * (1 << 30)
    elif memory_bytes / workers < need:
        raise UsageError(f"--slurm-memory {memory}: {gb(memory_bytes / workers)} per worker, but the largest job, "
                         f"{largest.label} ({largest.id}), needs about {gb(need)}: raise --slurm-memory or lower "
                         f"--slurm-workers")
    memory_mib = math.ceil(memory_bytes / (1 << 20))
    if memory_mib > p["memory_mib"]:
        if memory is not None:
            raise UsageError(f"--slurm-memory {memory}: {memory_mib} MiB per job, but the largest node of partition "
                             f"{partition} has {p['memory_mib']} MiB; ask for less")
        raise UsageError(f"the largest job, {largest.label} ({largest.id}), needs about {gb(need)}, so each SLURM job "
                         f"would ask for {memory_mib} MiB (1 GiB more per worker), but the largest node of partition "
                         f"{partition} has {p['memory_mib']} MiB; lower --slurm-workers or the jobs' sizes")
    limit = p["time_limit_s"]
    if seconds is not None and limit is not None and seconds > limit:
        raise UsageError(f"--slurm-walltime {walltime}: partition {partition} allows at most "
                         f"{_duration(limit)}; ask for less")
    return Request(jobs=jobs, cores=cores, workers=workers, memory_mib=memory_mib,
                   walltime=None if walltime is None else str(walltime).strip(), partition=partition)


def _duration(seconds):
    days, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{days}-" if days else "") + f"{h:02d}:{m:02d}:{s:02d}"


def live_jobs(job_ids):
    """The ids among job_ids that SLURM still has queued or running (all of them when squeue cannot tell)."""
    job_ids = sorted(set(job_ids))
    if not job_ids:
        return set()
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=SINFO_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return set(job_ids)
    if out.returncode != 0:
        # every id unknown (ended and forgotten) is an error of squeue; anything else: it cannot tell
        return set() if "Invalid job id" in out.stderr else set(job_ids)
    live = set()
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].rstrip("+") in LIVE_STATES:
            live.add(fields[0])
    return live


# ---------------------------------------------------------------------------------------------- executor
class SlurmExecutor:
    """Runs the jobs on Dask workers in SLURM batch jobs (dask-jobqueue's SLURMCluster, its scheduler in this
    process); records come back here as jobs finish, in any order.  ``say(text)`` hears of batch jobs replaced."""

    def __init__(self, request, say=None, poll_s=5.0):
        import dask
        from dask_jobqueue import SLURMCluster
        from distributed import Client
        self.request, self.say, self.poll_s = request, say, poll_s
        self.replaced = 0
        threads = request.threads
        # Thread counts must be in a worker's environment before it imports Numba or NumPy: the nanny sets its
        # pre-spawn environment (Dask's default sets OMP and the BLAS to 1 thread) in the worker before it starts,
        # so that is where they go, through Dask's configuration in the batch job's environment.
        spawn = dask.config.get("distributed.nanny.pre-spawn-environ", {}) | {
            name: str(threads) for name in THREAD_VARIABLES}
        prologue = [f"export {name}={threads}" for name in THREAD_VARIABLES]
        prologue.append(f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON={shlex.quote(repr(spawn))}")
        # one Dask thread per worker: a worker runs one job of the sweep at a time, with `threads` Numba threads
        scheduler_options = {"dashboard_address": None} | dask.config.get("jobqueue.slurm.scheduler-options", {})
        options = dict(cores=request.workers, processes=request.workers, job_cpu=request.cores,
                       memory=f"{request.memory_mib}MiB", job_mem=f"{request.memory_mib}M", queue=request.partition,
                       job_name=JOB_NAME,
                       job_script_prologue=list(dask.config.get("jobqueue.slurm.job-script-prologue", [])) + prologue,
                       scheduler_options=scheduler_options)
        if request.walltime is None:          # no -t: SLURM gives the partition's default time limit
            options["job_directives_skip"] = list(dask.config.get("jobqueue.slurm.job-directives-skip", [])) + [
                "#SBATCH -t "]
        else:
            options["walltime"] = request.walltime
        self.cluster = SLURMCluster(**options)
        try:
            self.cluster.scale(jobs=request.jobs)
            self.cluster.sync(self.cluster._correct_state)     # submitted now, so that a refusal is reported now
        except RuntimeError as e:            # sbatch refused: its last line says why
            self.cluster.close()
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            reason = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else e)
            raise UsageError(f"--slurm: sbatch refused the worker jobs ({reason})") from None
        self.client = Client(self.cluster)
        time_limit = request.walltime or "the partition's default time limit"
        self.description = (f"on {request.jobs} SLURM job{'s' if request.jobs > 1 else ''} in partition "
                            f"{request.partition} ({request.cores} core{'s' if request.cores > 1 else ''}, "
                            f"{request.memory_mib} MiB, {time_limit} each), {request.workers} Dask worker "
                            f"process{'es' if request.workers > 1 else ''} per job, {threads} thread(s) each; "
                            f"Dask scheduler at {self.cluster.scheduler_address}")

    def keep_jobs(self):
        """Submit a batch job in place of each of ours that ended (scancel, its time limit, a node lost) while the
        sweep still has jobs, so that request.jobs stay queued or running."""
        submitted = dict(self.cluster.workers)             # worker-spec name -> dask-jobqueue Job
        ids = {name: job.job_id for name, job in submitted.items() if getattr(job, "job_id", None)}
        live = live_jobs(ids.values())
        ended = sorted(name for name, job_id in ids.items() if job_id not in live)
        # a name in the spec without a job: Dask dropped it after its worker was lost (one worker per job), or it
        # is being submitted; either way the next correction submits what is missing, and only that
        unopened = set(self.cluster.worker_spec) - set(submitted)
        if not ended and not unopened:
            return
        if ended and self.say:
            which = ", ".join(ids[name] for name in ended)
            self.say(f"SLURM job{'s' if len(ended) > 1 else ''} {which} ended: submitting {len(ended)} in "
                     f"{'their' if len(ended) > 1 else 'its'} place")
        self.replaced += len(ended)
        self.cluster.sync(self._replace, ended)

    async def _replace(self, names):
        """On the cluster's event loop: drop the ended jobs of these worker-spec names from dask-jobqueue's books
        (it never notices that a batch job ended), give the spec new names up to request.jobs, and submit a job for
        every name of the spec that has none.  New names, not the old ones again: Dask closes the job of a name whose
        worker was lost a while after the loss, which would cancel a new job of that name still in the queue."""
        for name in names:
            self.cluster.worker_spec.pop(name, None)
            job = self.cluster.workers.pop(name, None)
            if job is not None:
                await job.close()                          # scancel of a job that has ended: a no-op
        while len(self.cluster.worker_spec) < self.request.jobs:
            self.cluster.worker_spec.update(self.cluster.new_worker_spec())
        await self.cluster._correct_state()

    def results(self, jobs):
        from distributed import as_completed

        from .sweep import _now, error_of, execute, job_record
        futures = {self.client.submit(execute, job, key=f"fastmlp-{job.id}", pure=False): job for job in jobs}
        started = _now()
        watch = _Watch(self)
        try:
            for future in as_completed(futures):
                job = futures.pop(future)
                try:
                    yield future.result()
                except Exception as e:   # its workers were lost too often (KilledWorker), or it was cancelled
                    yield job_record(job, "failed", None, error_of(e), None, started, None)
                future.release()
        finally:
            watch.stop()

    def close(self):
        """Stop the client and cancel every batch job (scancel) of this sweep."""
        for close in (getattr(self, "client", None), self.cluster):
            if close is not None:
                try:
                    close.close()
                except Exception:   # a cluster half started or already gone: its jobs end at their death timeout
                    pass


class _Watch:
    """A daemon thread that calls executor.keep_jobs() every executor.poll_s seconds until stopped (the sweep's
    thread meanwhile waits for records)."""

    def __init__(self, executor):
        self.executor = executor
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastmlp-slurm-jobs", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.executor.poll_s):
            try:
                self.executor.keep_jobs()
            except Exception as e:   # squeue or sbatch failing for a while must not stop the sweep: try again
                if self.executor.say:
                    reason = (str(e).strip().splitlines() or [type(e).__name__])[-1]
                    self.executor.say(f"could not check or replace the SLURM jobs ({reason}); trying again in "
                                      f"{self.executor.poll_s:g}s")

    def stop(self):
        self._stop.set()
        self._thread.join()


def environment_ok():
    """Whether SLURM answers here: sinfo runs and shows a node that can take jobs (idle, mixed or allocated)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=SINFO_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return False
    # a trailing * is a node not responding; the other marks (power saving, planned by backfill) leave it usable
    return out.returncode == 0 and any(s.rstrip("~#!%$@^-") in ("idle", "mix", "alloc") for s in out.stdout.split())
