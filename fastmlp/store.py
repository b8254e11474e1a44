"""The result store: a directory with one JSON file per job, and the table `fastmlp collect` makes of it.

Layout: ``DIR/<id>.json`` for the job whose identity is ``id`` (see `fastmlp.sweep.job_id`).  Every file is written
through a temporary file in DIR, fsync and rename, so a reader, or a sweep restarted after a crash or a SIGKILL,
sees a whole record or none.  A writer killed mid-write leaves a ``.tmp-*`` file behind, which is never read as a
record.  Several sweep processes (shards of one grid) may write to one store at once: each writes only the files of
its own jobs.

A stored job record (the keys, in this order):
  id              the job's identity: 16 hex digits of SHA-256 of its command and resolved configuration
  status          "done", or "failed" (the command raised; see error)
  command         "run" or "ntk"
  config          the resolved configuration: every option of the command, keys spelled as the options without
                  their dashes ("bo-calls"), the task's D and indices explicit, options the job does not use left
                  out (see fastmlp.sweep)
  command_line    the `fastmlp` command that recomputes this job on its own
  record          what `fastmlp run --json` / `fastmlp ntk --json` prints for it; null when failed
  error           null, or {type, message, traceback} of what the job raised, or of how its worker was lost
  provenance      versions, git commit, backend, device, threads (the record's own block, or the worker's)
  worker          {host, pid} of the process that ran it
  started, finished, elapsed_s    UTC times (ISO 8601) and wall seconds
"""
import csv
import json
import math
import os
import tempfile
from pathlib import Path

from .errors import UsageError
from .sweep import with_implicit

STATUSES = ("done", "failed")
RECORD_FIELDS = ("id", "status", "command", "config", "command_line", "record", "error", "provenance", "worker",
                 "started", "finished", "elapsed_s")


def json_safe(obj):
    """Replace non-finite floats by None (JSON has no NaN) through dicts, lists and tuples."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path, obj):
    """Write obj as JSON to path through a temporary file, fsync and a rename: a reader never sees half a record."""
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(json_safe(obj), f, allow_nan=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Store:
    """A directory of job records, created on first use."""

    def __init__(self, path, create=True):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"the store {self.path} is a file, not a directory: give another --store")
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise UsageError(f"no result store at {self.path}: give the directory a sweep wrote (--store)")

    def file_of(self, job_id):
        return self.path / f"{job_id}.json"

    def write(self, rec):
        """Store one job record (replacing an earlier one of the same job)."""
        missing = [k for k in RECORD_FIELDS if k not in rec]
        if missing or rec["status"] not in STATUSES:
            raise ValueError(f"not a job record: missing {missing} or status {rec.get('status')!r}")
        write_json_atomic(self.file_of(rec["id"]), {k: rec[k] for k in RECORD_FIELDS})

    def statuses(self):
        """{id: status} of every stored job."""
        return {rec["id"]: rec["status"] for rec in self.records()}

    def records(self):
        """Every stored job record, in the order of their ids (temporary files of killed writers skipped)."""
        return [self._load(f) for f in sorted(self.path.glob("*.json")) if not f.name.startswith(".")]

    @staticmethod
    def _load(file):
        try:
            rec = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{file} is not a job record ({e}); move it out of the store") from None
        if not isinstance(rec, dict) or rec.get("id") != file.stem or rec.get("status") not in STATUSES:
            raise UsageError(f"{file} is not a job record of this store; move it out of the store")
        if isinstance(rec.get("config"), dict):   # settings its id leaves out, back in (init he, init-scale 1)
            rec["config"] = with_implicit(rec.get("command"), rec["config"])
        return rec


# ------------------------------------------------------------------------------------------------- collect
def test_error_of(rec):
    """{mean, std, values} of a done job's test error: the final repeats' of a run, the repeats' of an ntk job."""
    r = rec["record"]
    return (r["final"] if rec["command"] == "run" else r)["test_error"]


RESULT_COLUMNS = ("selected_lr", "test_error_mean", "test_error_std", "test_error_n", "converged", "diverged",
                  "not_converged", "validation_error", "wall_s", "device", "fastmlp", "git_commit", "error")


def flatten(rec):
    """One row (a flat dict) of a stored job record: identity, configuration, then results."""
    row = {"id": rec["id"], "status": rec["status"], "command": rec["command"]}
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
                       not_converged=f["not_converged"],
                       validation_error=r["search"]["best"]["mean_error"] if r["search"] else None)
    prov = rec.get("provenance") or {}
    out.update(device=prov.get("device"), fastmlp=(prov.get("versions") or {}).get("fastmlp"),
               git_commit=prov.get("git_commit"))
    if rec["error"]:
        out["error"] = f"{rec['error']['type']}: {rec['error']['message']}"
    row.update(out)
    return row


LEADING_COLUMNS = ("id", "status", "command", "task", "D", "indices", "beta1", "beta2", "seed", "N", "L", "H", "B",
                   "lr")


def table(records):
    """(columns, rows) of the given job records: the union of their columns, the identity and the main settings
    first, the other configuration keys in order of first appearance, then the results."""
    rows = [flatten(rec) for rec in records]
    present = {k for row in rows for k in row}
    columns = [k for k in LEADING_COLUMNS if k in present or k in ("id", "status", "command")]
    for row in rows:
        columns.extend(k for k in row if k not in columns and k not in RESULT_COLUMNS)
    columns.extend(RESULT_COLUMNS)
    return columns, rows


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
