"""The result store: a directory with one JSON file per job, and the table `fastmlp collect` makes of it.

Layout: ``DIR/<id>.json`` for the job whose identity is ``id`` (see `fastmlp.sweep.job_id`).  Every file is written
through a temporary file in DIR, fsync and rename, so a reader, or a sweep restarted after a crash or a SIGKILL,
sees a whole record or none.  A writer killed mid-write leaves a ``.tmp-*`` file behind, which is never read as a
record and is removed by the next writer once it is TMP_MAX_AGE_S old.  Record and claim files are created as
open() creates files (0666 less the umask: 0644 under the usual umask 022, 0664 under 002), so a group that shares
the store can read them.

Several processes, on one machine or several sharing the directory, may run sweeps into one store at once: a job
is claimed before it runs, by creating ``DIR/<id>.claim`` atomically (a hard link of a finished temporary file, so
exactly one process wins, on NFS too) with the claimant's host, pid and a token; while the job runs, a heartbeat
thread touches the file, and the claim is removed once the record is written.  A claim whose file has not been
touched for the claim timeout, or whose process on this host is gone, is stale and is taken over.  Replacing a
record that another process wrote meanwhile is reported as a warning.

A stored job record (the keys, in this order):
  id              the job's identity: 16 hex digits of SHA-256 of its command and resolved configuration
  status          "done", or "failed" (the command raised; see error)
  command         "run", "ntk" or "train"
  protocol        the version of what the command computes (fastmlp.sweep.PROTOCOL); a record written before
                  versions existed has none and reads as 1
  config          the resolved configuration: every option of the command, keys spelled as the options without
                  their dashes ("bo-calls"), the task's D and indices explicit, options the job does not use left
                  out (see fastmlp.sweep)
  command_line    the `fastmlp` command that recomputes this job on its own
  record          what `fastmlp run --json` / `ntk --json` / `train --json` prints for it; null when failed
  error           null, or {type, message, traceback} of what the job raised, or of how its worker was lost
  provenance      versions, git commit, backend, device, threads (the record's own block, or the worker's)
  worker          {host, pid} of the process that ran it, and the SLURM job it ran in when SLURM started it:
                  slurm_job_id (an array task's also slurm_array_job_id, slurm_array_task_id)
  started, finished, elapsed_s    UTC times (ISO 8601) and wall seconds
"""
import csv
import io
import json
import math
import os
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import UsageError
from .preflight import TMP_PREFIX, check_store
from .sweep import COMMANDS, with_implicit

STATUSES = ("done", "failed")
RECORD_FIELDS = ("id", "status", "command", "protocol", "config", "command_line", "record", "error", "provenance",
                 "worker", "started", "finished", "elapsed_s")
OPTIONAL_FIELDS = {"protocol": 1}   # absent from records written before it existed: read as this value
CLAIM_TIMEOUT_S = 600.0   # default: a claim whose file nobody touched for this long is stale and taken over
HEARTBEAT_S = 30.0        # a running job's claim is touched this often (at most a quarter of the timeout)
TMP_MAX_AGE_S = 3600.0    # a temporary file this old was left by a killed writer: the next writer removes it
HOST = socket.gethostname()


def json_safe(obj):
    """Replace non-finite floats by None (JSON has no NaN) through dicts, lists and tuples."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _umask():
    """This process's umask, read without changing it where Linux shows it (no race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_temp(directory, text, sync=True, suffix=".json"):
    """A new temporary file in directory holding text, with the mode open() would give a new file (mkstemp's is
    0600, which a group sharing the store cannot read) -> its path."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX, suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _write_atomic(path, text, suffix):
    """Write text to path through a temporary file, fsync and a rename: a reader never sees half a file, and a
    failed write leaves the old file whole."""
    path = os.path.abspath(path)
    tmp = _write_temp(os.path.dirname(path), text, suffix=suffix)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json_atomic(path, obj):
    """Write obj as JSON to path atomically (_write_atomic): a reader never sees half a record."""
    _write_atomic(path, json.dumps(json_safe(obj), allow_nan=False, indent=1), ".json")


# --------------------------------------------------------------------------------------- what a record is
def _missing(d, keys):
    return [k for k in keys if k not in d] if isinstance(d, dict) else list(keys)


def check_job_record(rec):
    """What is wrong with a job record, in a few words, or None when it is valid: the one definition of a record
    that the sweep (what is done), collect and plot (what they read) and the writer all use.  It asks for what the
    readers use: every field of RECORD_FIELDS; a known status and command; a configuration with the task, D, N, L
    (and lr for run); for a done job the record's test error {mean, std, values} and timing, for run its
    selected_lr, final counts and search, for train its summary; for a failed one its error's type and message."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    missing = _missing(rec, [k for k in RECORD_FIELDS if k not in OPTIONAL_FIELDS])
    if missing:
        return f"no {', '.join(missing)}"
    protocol = rec.get("protocol", 1)
    if type(protocol) is not int or protocol < 1:
        return f"protocol {protocol!r} is not a version number"
    if rec["status"] not in STATUSES:
        return f"status {rec['status']!r} is not one of {', '.join(STATUSES)}"
    if rec["command"] not in COMMANDS:
        return f"command {rec['command']!r} is not one of {', '.join(COMMANDS)}"
    missing = _missing(rec["config"], ("task", "D", "N", "L") + (("lr",) if rec["command"] == "run" else ()))
    if missing:
        return f"no config {', '.join(missing)}"
    if rec["status"] == "failed":
        missing = _missing(rec["error"], ("type", "message"))
        return f"a failed job without error {', '.join(missing)}" if missing else None
    r = rec["record"]
    if not isinstance(r, dict):
        return "a done job without its record"
    if rec["command"] == "run":
        missing = [f"record.{k}" for k in _missing(r, ("selected_lr", "search", "final", "timing"))]
        missing += [f"record.final.{k}" for k in _missing(r.get("final"), ("test_error", "converged", "diverged",
                                                                          "not_converged"))]
        if not missing and r["search"] is not None and not isinstance((r["search"].get("best") or {}).get(
                "mean_error"), (int, float)):
            missing.append("record.search.best.mean_error")
        te = (r.get("final") or {}).get("test_error")
    else:
        needed = ("test_error", "timing") + (("summary",) if rec["command"] == "train" else ())
        missing = [f"record.{k}" for k in _missing(r, needed)]
        te = r.get("test_error")
    if not missing:
        missing += [f"test_error.{k}" for k in _missing(te, ("mean", "std", "values"))]
        missing += ["record.timing.wall_s"] if _missing(r["timing"], ("wall_s",)) else []
    if not missing and not isinstance(te["values"], list):
        return "test_error.values is not a list"
    return f"no {', '.join(missing)}" if missing else None


# ------------------------------------------------------------------------------------------------- claims
def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _alive(pid):
    """Whether process pid of this host runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Claim:
    """A claim this process holds: its job, its file, and what tells the file apart from a later claim."""
    job_id: str
    file: Path
    token: str
    inode: int


def is_stale(holder, timeout=CLAIM_TIMEOUT_S, now=None):
    """Whether a claim (as `Store.claim_of` reads it) may be taken over: its file untouched for ``timeout``
    seconds, or its process, on this host, gone."""
    age = (time.time() if now is None else now) - holder["mtime"]
    if age > timeout:
        return True
    pid = holder.get("pid")
    return holder.get("host") == HOST and isinstance(pid, int) and pid != os.getpid() and not _alive(pid)


class Heartbeat:
    """Touches the claim files this process holds every ``interval`` seconds (HEARTBEAT_S, at most a quarter of the
    claim ``timeout``), from a daemon thread, so that other processes see them alive however long the job runs."""

    def __init__(self, timeout=CLAIM_TIMEOUT_S):
        self.timeout = timeout
        self.interval = min(HEARTBEAT_S, timeout / 4)
        self._claims = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def add(self, claim):
        with self._lock:
            self._claims[claim.job_id] = claim
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fastmlp-heartbeat", daemon=True)
                self._thread.start()

    def remove(self, claim):
        with self._lock:
            self._claims.pop(claim.job_id, None)

    def beat(self):
        """Touch every claim held now (one whose file is no longer this process's is left alone)."""
        with self._lock:
            claims = list(self._claims.values())
        for claim in claims:
            try:
                if os.stat(claim.file).st_ino == claim.inode:
                    os.utime(claim.file)
            except OSError:
                pass

    def _run(self):
        while not self._stop.wait(self.interval):
            self.beat()

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Store:
    """A directory of job records and claims.  ``create``: for a writer, the store is created when missing (with
    its parents), checked writable, and cleared of what killed writers left (old temporary files, stale claims of
    jobs that have their record); otherwise it must exist, and nothing is written."""

    def __init__(self, path, create=True):
        self.path = Path(path)
        self.created = False
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"the store {self.path} is a file, not a directory: give another --store")
        if create:
            self.created = check_store(self.path)
            self.clean()
        elif not self.path.is_dir():
            raise UsageError(f"no result store at {self.path}: give the directory a sweep wrote (--store)")

    def file_of(self, job_id):
        return self.path / f"{job_id}.json"

    def stamp(self, job_id):
        """What tells one version of a job's record file from another (inode, mtime), or None when there is none."""
        try:
            st = os.stat(self.file_of(job_id))
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def write(self, rec, replaces=None):
        """Store one job record -> None, or a warning (one line) when it replaced a record other than the one
        whose `stamp` is ``replaces`` (None: the job had no record when it was claimed), one that another process
        wrote meanwhile."""
        problem = check_job_record(rec)
        if problem:
            raise ValueError(f"not a job record: {problem}")
        before = self.stamp(rec["id"])
        other = None
        if before is not None and before != replaces:
            try:
                other = self.load(rec["id"])
            except UsageError:
                other = {}
        write_json_atomic(self.file_of(rec["id"]), {k: rec.get(k, OPTIONAL_FIELDS.get(k)) for k in RECORD_FIELDS})
        if other is None:
            return None
        worker = other.get("worker") or {}
        return (f"replaced the {other.get('status', 'unreadable')} record of job {rec['id']} that "
                f"{worker.get('host', '?')}:{worker.get('pid', '?')} wrote at {other.get('finished', '?')} while "
                f"this process ran the job too")

    def statuses(self):
        """{id: status} of every stored job."""
        return {rec["id"]: rec["status"] for rec in self.records()}

    def records(self):
        """Every stored job record, in the order of their ids (temporary files of killed writers skipped)."""
        return [self._load(f) for f in sorted(self.path.glob("*.json")) if not f.name.startswith(".")]

    def load(self, job_id):
        """The stored record of one job (None when there is none)."""
        file = self.file_of(job_id)
        return self._load(file) if file.exists() else None

    @staticmethod
    def _load(file):
        try:
            rec = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{file} is not a job record ({e}); move it out of the store") from None
        if not isinstance(rec, dict) or rec.get("id") != file.stem:
            raise UsageError(f"{file} is not a job record of this store; move it out of the store")
        problem = check_job_record(rec)
        if problem:
            raise UsageError(f"{file} is not a valid job record ({problem}); move it out of the store")
        for key, value in OPTIONAL_FIELDS.items():   # a record written before the field existed
            rec.setdefault(key, value)
        if isinstance(rec.get("config"), dict):   # settings its id leaves out, back in (init he, init-scale 1)
            rec["config"] = with_implicit(rec.get("command"), rec["config"])
        return rec

    # ----------------------------------------------------------------------------------------------- claims
    def claim_file(self, job_id):
        return self.path / f"{job_id}.claim"

    def claim_of(self, job_id):
        """The claim on a job as its file says: {id, host, pid, token, claimed} (empty while its creator is still
        writing it, on a file system without hard links) with its file's mtime (the heartbeat) and inode; None when
        the job is not claimed."""
        file = self.claim_file(job_id)
        try:
            st = os.stat(file)
            text = file.read_text()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            info = {}
        return (info if isinstance(info, dict) else {}) | {"mtime": st.st_mtime, "inode": st.st_ino}

    def claims(self):
        """{job id: claim} of every claimed job."""
        out = {}
        for f in self.path.glob("*.claim"):
            if f.name.startswith("."):          # a temporary file, not a claim
                continue
            holder = self.claim_of(f.stem)
            if holder is not None:
                out[f.stem] = holder
        return out

    def claim(self, job_id, timeout=CLAIM_TIMEOUT_S):
        """Claim a job for this process -> a Claim, or None while another process holds a live claim on it.  The
        claim file is a hard link of a complete temporary file, made only if no claim file exists (atomic, on NFS
        too); a stale claim (`is_stale`) is set aside first."""
        token = uuid.uuid4().hex
        text = json.dumps({"id": job_id, "host": HOST, "pid": os.getpid(), "token": token, "claimed": _now()})
        file = self.claim_file(job_id)
        tmp = _write_temp(self.path, text, sync=False, suffix=".claim")
        try:
            for _ in range(3):
                try:
                    self._create(tmp, file, text)
                    return Claim(job_id, file, token, os.stat(file).st_ino)
                except FileExistsError:
                    holder = self.claim_of(job_id)
                    if holder is not None:
                        if not is_stale(holder, timeout):
                            return None
                        self._set_aside(file, holder)
            return None
        finally:
            os.unlink(tmp)

    @staticmethod
    def _create(tmp, file, text):
        """Create file with tmp's content unless it exists (FileExistsError)."""
        try:
            os.link(tmp, file)
        except FileExistsError:
            raise
        except OSError:   # a file system without hard links: create exclusively, then write
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "w") as f:
                f.write(text)

    def _set_aside(self, file, holder):
        """Remove a stale claim file: renamed aside first, so that of several processes taking it over only one
        removes it; if what was renamed is not the claim judged stale (renewed meanwhile), it is put back."""
        aside = self.path / f"{TMP_PREFIX}stale-{uuid.uuid4().hex}.claim"
        try:
            os.rename(file, aside)
        except FileNotFoundError:
            return
        try:
            if os.stat(aside).st_ino != holder["inode"]:
                try:
                    os.link(aside, file)
                except OSError:
                    pass
        finally:
            os.unlink(aside)

    def heartbeat(self, timeout=None):
        """A Heartbeat for the claims of this process, for claims that go stale after ``timeout`` seconds."""
        return Heartbeat(CLAIM_TIMEOUT_S if timeout is None else timeout)

    def release(self, claim):
        """Remove this process's claim file (not one that took its place)."""
        holder = self.claim_of(claim.job_id)
        if holder is not None and holder["inode"] == claim.inode and holder.get("token") == claim.token:
            try:
                os.unlink(claim.file)
            except FileNotFoundError:
                pass

    def clean(self, max_age=TMP_MAX_AGE_S, timeout=CLAIM_TIMEOUT_S):
        """Remove what killed writers left: temporary files older than max_age, and stale claims of jobs that have
        their record.  (A stale claim of a job without a record is taken over by the next sweep that runs it.)"""
        now = time.time()
        for f in self.path.glob(TMP_PREFIX + "*"):
            try:
                if now - f.stat().st_mtime > max_age:
                    f.unlink()
            except OSError:
                pass
        for job_id, holder in self.claims().items():
            if self.file_of(job_id).exists() and is_stale(holder, timeout, now):
                self._set_aside(self.claim_file(job_id), holder)


# ------------------------------------------------------------------------------------------------- collect
def test_error_of(rec):
    """{mean, std, values} of a done job's test error: the final repeats' of a run, the repeats' of an ntk job."""
    r = rec["record"]
    return (r["final"] if rec["command"] == "run" else r)["test_error"]


RESULT_COLUMNS = ("selected_lr", "searched_lr_min", "searched_lr_max", "widened", "test_error_mean", "test_error_std",
                  "test_error_n", "converged", "diverged", "not_converged", "epochs_min", "epochs_max",
                  "validation_error", "wall_s", "device", "fastmlp", "git_commit", "error")


def _epochs(networks):
    """{epochs_min, epochs_max}: the fewest and most epochs that the final networks of a job trained."""
    epochs = [n["epochs"] for n in networks if n.get("epochs") is not None]
    return {"epochs_min": min(epochs), "epochs_max": max(epochs)} if epochs else {}


def flatten(rec):
    """One row (a flat dict) of a stored job record: identity, configuration, then results."""
    row = {"id": rec["id"], "status": rec["status"], "command": rec["command"], "protocol": rec.get("protocol", 1)}
    row.update({k: v for k, v in rec["config"].items()})
    out = dict.fromkeys(RESULT_COLUMNS)
    r = rec["record"]
    if r is not None:
        te = test_error_of(rec)
        out.update(test_error_mean=te["mean"], test_error_std=te["std"],
                   test_error_n=sum(v is not None for v in te["values"]), wall_s=r["timing"]["wall_s"])
        if rec["command"] == "run":
            f = r["final"]
            out.update(selected_lr=r["selected_lr"], converged=f["converged"], diverged=f["diverged"],
                       not_converged=f["not_converged"], **_epochs(f["repeats"]),
                       validation_error=r["search"]["best"]["mean_error"] if r["search"] else None)
            if r["search"] and "lr_range" in r["search"]:      # the search range it ended with (widened or not)
                out.update(searched_lr_min=r["search"]["lr_range"][0], searched_lr_max=r["search"]["lr_range"][1],
                           widened=len(r["search"]["widened"]))
        elif rec["command"] == "train":
            out.update({k: r["summary"][k] for k in ("converged", "diverged", "not_converged")},
                       **_epochs(r["networks"]))
    prov = rec.get("provenance") or {}
    out.update(device=prov.get("device"), fastmlp=(prov.get("versions") or {}).get("fastmlp"),
               git_commit=prov.get("git_commit"))
    if rec["error"]:
        out["error"] = f"{rec['error']['type']}: {rec['error']['message']}"
    row.update(out)
    return row


LEADING_COLUMNS = ("id", "status", "command", "protocol", "task", "D", "indices", "beta1", "beta2", "seed", "N", "L",
                   "H", "B", "lr")


def table(records):
    """(columns, rows) of the given job records: the union of their columns, the identity and the main settings
    first, the other configuration keys in order of first appearance, then the results."""
    return _columns([flatten(rec) for rec in records])


def replace_rows(table_rows, records):
    """(columns, rows) of a job table (rows as csv.DictReader reads them) with the rows of these records in place of
    the rows of the same id, in the table's order; the records of other ids come after them."""
    new = {row["id"]: row for row in (flatten(rec) for rec in records)}
    return _columns([new.pop(row["id"], row) for row in table_rows] + list(new.values()))


def _columns(rows):
    present = {k for row in rows for k in row}
    columns = [k for k in LEADING_COLUMNS if k in present or k in ("id", "status", "command", "protocol")]
    for row in rows:
        columns.extend(k for k in row if k not in columns and k not in RESULT_COLUMNS)
    columns.extend(RESULT_COLUMNS)
    return columns, rows


def write_csv_atomic(path, columns, rows):
    """write_csv to path atomically (_write_atomic): the old table stays whole if it fails."""
    text = io.StringIO()
    write_csv(text, columns, rows)
    _write_atomic(path, text.getvalue(), ".csv")


CANDIDATE_COLUMNS = ("eval", "batch", "lr", "mean_error", "converged", "not_converged", "diverged", "epochs_min",
                     "epochs_max")


def candidates(records):
    """(columns, rows) of the learning rates that the searches of the given run records scored, a row per
    candidate: the job's id and settings, then the candidate's rate, its mean validation error over the folds, how
    many fold networks converged, hit the epoch cap or diverged, and their fewest and most epochs."""
    rows = []
    for rec in records:
        r = rec["record"]
        if rec["command"] != "run" or r is None or not r.get("search"):
            continue
        job = {k: v for k, v in flatten(rec).items() if k not in RESULT_COLUMNS and k != "lr"}
        for h in r["search"]["history"]:
            status = h["fold_status"]
            rows.append({**job, "eval": h["eval"], "batch": h["batch"], "lr": h["lr"], "mean_error": h["mean_error"],
                         **{k: status.count(k) for k in ("converged", "not_converged", "diverged")},
                         "epochs_min": min(h["fold_epochs"]), "epochs_max": max(h["fold_epochs"])})
    columns = []
    for row in rows:
        columns.extend(k for k in row if k not in columns and k not in CANDIDATE_COLUMNS)
    return columns + list(CANDIDATE_COLUMNS), rows


def write_csv(file, columns, rows):
    """Rows as CSV (missing values empty; lists such as indices as they are spelled on the command line)."""
    writer = csv.DictWriter(file, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})


def write_jsonl(file, columns, rows):
    """Rows as JSON lines, every row with every column (null where missing)."""
    for row in rows:
        file.write(json.dumps(json_safe({k: row.get(k) for k in columns}), allow_nan=False) + "\n")
