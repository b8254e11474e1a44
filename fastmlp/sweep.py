"""Sweeps: a grid of `run`, `ntk` or `train` jobs from one TOML file, each job named by a hash of its resolved
configuration, run in this process or on a Dask cluster, every result kept in a `fastmlp.store.Store`.

Sweep file (TOML, read with the standard library's tomllib)
  Keys are the options of `fastmlp run` (or of `fastmlp ntk` or `fastmlp train`, with ``command = "ntk"`` or
  ``"train"``) without their dashes, TASK included as ``task``.  A train job's ``lr`` and ``seeds`` are its
  comma-separated lists (``lr = "0.03,0.1"``, ``seeds = "0-9"``: all its networks in one engine call; a list of
  such strings is an axis), spelled one way in its identity (``1e-1, 0.3`` is ``0.1,0.3``)::

      task = ["2-local", "2-global"]     # a list is an axis of the grid
      N = [250, 500, 1000]
      L = [1, 3, 5]
      bo-calls = 20                      # a plain value is fixed

  The jobs are the Cartesian product of the list-valued keys.  A ``[[grid]]`` table is a further grid: its keys
  override the top level's for it alone, and the sweep is the union of all of them (the networks and the NTK of
  one figure, say, with ``command = "ntk"`` in the second).  ``workers = K`` sets the default of --workers.
  A key left out takes the command's default.

Job identity
  A job's configuration is resolved: every option of its command with its value, the task's D and indices made
  explicit (the paper's D when none is given), options the job does not use left out (beta1 and beta2 off the
  temperature task, the search's options with a fixed lr, sigma-w2 and sigma-b2 with the standard
  parameterization, init with the NTK parameterization), and the options added after the first release left out
  at the value every job had before they existed (IMPLICIT: init he, init-scale 1, loss xent, stop zero-error, no
  target-loss, lr-widen off), so that such jobs keep their ids.  Its id is the first 16 hex digits of the SHA-256 of
  the command, that configuration and (from version 2 on) the command's PROTOCOL version as canonical JSON.  How a
  sweep is run (store, workers, scheduler, shard) is not part of it; backend and dtype are, since they change results
  (by rounding at least).  Growing a list re-uses every job already stored.

Executors
  In process, one job after another (the default); a local Dask cluster of worker processes (--workers); an
  existing Dask cluster by its scheduler's address (--scheduler); Dask workers in SLURM batch jobs (--slurm, see
  fastmlp.slurm).  Every job's record comes back to the sweep process, which alone writes the store.  A job that
  raises is stored as failed with its error; a worker lost mid-job has its job rescheduled by Dask on another worker.

Several sweeps on one store
  `run_jobs` claims each job in the store before it runs (fastmlp.store: an atomic claim file with a heartbeat),
  so the same sweep started by several processes, on one machine or several, divides the jobs; each then waits for
  the jobs the others hold and takes over those whose claim goes stale.
"""
import contextlib
import functools
import gc
import hashlib
import itertools
import json
import math
import operator
import os
import socket
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .errors import UsageError
from .preflight import JOB_BYTES, check_memory
from .tasks import parse_task

COMMANDS = ("run", "ntk", "train")
TASK_KEYS = ("task", "D", "indices", "beta1", "beta2")   # what parse_task takes; resolved into the spec
SEARCH_KEYS = ("folds", "bo-calls", "bo-batch", "lr-min", "lr-max", "lr-widen")
# Settings added after the first release, left out of a `run` job's configuration at the value every job had before
# them, so that a job that keeps that value keeps its id; a reader of the store puts them back.
IMPLICIT = {"init": "he", "init-scale": 1.0, "loss": "xent", "stop": "zero-error", "target-loss": None,
            "lr-widen": "off", "f0": "keep"}
# The same for `train` jobs, which came later and name every setting older than them.
TRAIN_IMPLICIT = {"f0": "keep"}
# The version of what each command computes from its configuration.  A change that makes a command compute something
# else from the same settings (the optimizer's batch proposals spread out, say) raises its version, which then enters
# the identity of its jobs: new ids, so new records never mix with old ones.  Version 1 stays out of identity, so the
# jobs of a store written before versions existed keep their ids, and their records read as version 1.
PROTOCOL = {"run": 1, "ntk": 1, "train": 1}


@dataclass(frozen=True)
class Key:
    """One option of a command as a sweep key."""
    name: str              # the option without its dashes: "bo-calls", "D"
    kind: type             # int, float or str: the TOML type it takes
    default: object        # None: the command's own default (no value)
    choices: tuple = ()    # allowed strings, when the option is a choice
    canonical: object = None   # a comma-separated list (train's lr and seeds): text -> its one spelling


@dataclass(frozen=True)
class Job:
    id: str
    command: str
    config: dict           # resolved; keys are sweep keys
    line: tuple = field(default=None, compare=False, repr=False)   # a Resolver's command-line template, if any

    @property
    def protocol(self):
        return PROTOCOL[self.command]

    @property
    def label(self):
        c = self.config
        width = f" H={c['H']}" if "H" in c else ""
        return f"{self.command} {c['task']} N={c['N']} L={c['L']}{width} seed={c['seed']}"

    def command_line(self):
        """The `fastmlp` command that computes this job alone."""
        if self.line is not None:
            segments, names = self.line
            parts = [segments[0]]
            for name, segment in zip(names, segments[1:]):
                parts += (f"{self.config[name]}", segment)
            return "".join(parts)
        c = with_implicit(self.command, self.config)
        args = [f"--{k} {v}" for k, v in c.items() if k != "task" and v is not None]
        return " ".join(["fastmlp", self.command, c["task"], *args])


# ----------------------------------------------------------------------------------------------- the file
def read_sweep(path, schemas, overrides=()):
    """The jobs of a sweep file -> (jobs in grid order without repeats, settings {workers}).

    ``schemas`` maps each command to its keys ({name: Key}); ``overrides`` are (key, value) pairs from the command
    line that replace the file's value of key in every grid whose command takes it.  Every problem raises
    UsageError naming the file and the key.
    """
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"no sweep file {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    where = str(path)
    grids = doc.pop("grid", [{}])
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise UsageError(f"{where}: 'grid' must be one or more [[grid]] tables")
    workers = doc.pop("workers", None)
    if workers is not None and (type(workers) is not int or workers < 1):
        raise UsageError(f"{where}: key 'workers' must be a positive integer (got {workers!r})")
    overrides = dict(overrides)
    with _no_gc():   # a million Jobs: the cyclic collector would rescan them all, again and again
        return _read_grids(doc, grids, where, schemas, overrides, workers)


@contextlib.contextmanager
def _no_gc():
    """The cyclic garbage collector off (Jobs and their configurations hold no cycles) for the block."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_grids(doc, grids, where, schemas, overrides, workers):
    """read_sweep's work once the file is parsed: every grid's jobs, in order, without repeats."""
    jobs, seen, applied = [], set(), {"command"}
    for i, grid in enumerate(grids):
        if "grid" in grid or "workers" in grid:
            raise UsageError(f"{where}: [[grid]] tables take option keys and 'command' only")
        table = doc | grid | {k: v for k, v in overrides.items() if k == "command"}
        schema = schemas.get(table.get("command", "run"), {})
        table |= {k: v for k, v in overrides.items() if k in schema}
        applied |= set(overrides) & set(schema)
        label = where if len(grids) == 1 else f"{where} [[grid]] {i + 1}"
        for job in grid_jobs(table, schemas, label, planned=len(jobs)):
            if job.id not in seen:
                seen.add(job.id)
                jobs.append(job)
    unused = sorted(set(overrides) - applied)
    if unused:
        raise UsageError(f"--set {unused[0]}: no grid of {where} runs a command that takes it")
    return jobs, {"workers": workers}


def grid_jobs(table, schemas, where, planned=0):
    """The jobs of one table of keys (lists are axes), in grid order (the last key varies fastest).  The grid's
    size, with ``planned`` jobs of earlier grids, is checked against the memory before any job is made."""
    command = table.get("command", "run")
    if command not in COMMANDS:
        raise UsageError(f"{where}: key 'command' must be one of {', '.join(COMMANDS)} (got {command!r})")
    schema = schemas[command]
    axes = {}
    for name, value in table.items():
        if name == "command":
            continue
        if name not in schema:
            known = ", ".join(schema)
            raise UsageError(f"{where}: unknown key {name!r} for command {command} (known keys: {known})")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise UsageError(f"{where}: key {name!r} is an empty list, so the grid has no jobs")
        axes[name] = [check_value(schema[name], v, where) for v in values]
    if "task" not in axes:
        raise UsageError(f"{where}: key 'task' is missing (e.g. task = \"2-local\")")
    n_jobs = math.prod(len(values) for values in axes.values())
    check_memory((n_jobs + planned) * JOB_BYTES, f"{where}: a grid of {n_jobs} jobs"
                 + (f" (after {planned} others)" if planned else ""), fix="use fewer values per key")
    fixed = {name: values[0] for name, values in axes.items() if len(values) == 1}
    names = [name for name in axes if name not in fixed]
    resolver = Resolver(command, schema, fixed, names, where)
    return [resolver(point) for point in itertools.product(*(axes[n] for n in names))]


def check_value(key, value, where):
    """One value of a key, type-checked (an int is a float where a float is asked for; a list key takes a number or
    its comma-separated text, and spells it one way)."""
    if key.canonical is not None and type(value) in (int, float, str):
        try:
            return key.canonical(value if type(value) is str else repr(value))
        except UsageError as e:
            raise UsageError(f"{where}: key {key.name!r}: {e}") from None
    if key.kind is float and type(value) in (int, float):
        return float(value) + 0.0   # -0.0 is 0.0: one setting, one id
    if type(value) is not key.kind:
        kind = {int: "an integer", float: "a number", str: "a string"}[key.kind]
        raise UsageError(f"{where}: key {key.name!r} must be {kind} or a list of them (got {value!r})")
    if key.choices and value not in key.choices:
        raise UsageError(f"{where}: key {key.name!r} must be one of {', '.join(key.choices)} (got {value!r})")
    return value


class Resolver:
    """The Jobs of one grid: ``fixed`` keys with one value, ``varying`` keys whose values a point gives in order.

    A sweep of a million jobs is listed by --dry-run in seconds, because a point costs only what differs between
    points.  What the task and the keys that decide which settings a job leaves out (lr given, param, the IMPLICIT
    values) make of a configuration is worked out once per distinct combination of them (an `_Entry`): the task
    parsed, the keys left out, and templates of the job's canonical JSON (what `job_id` hashes) and of its command
    line, in which only the other varying keys are filled in.  The command's checks run once per distinct
    configuration *without its seed*, and once more for each new seed: a seed's check (its range) involves no other
    key, so a job whose seed and whose other settings both passed in jobs of the grid passes as a whole.  A failing
    check is always of a real job of the grid, which the error names."""

    def __init__(self, command, schema, fixed, varying, where="sweep"):
        self.command, self.where, self.varying = command, where, tuple(varying)
        self.given = set(fixed) | set(varying)
        self.defaults = {name: key.default for name, key in schema.items()} | fixed
        self.rest = {name: v for name, v in self.defaults.items() if name not in TASK_KEYS}   # the schema's order
        self.rest_at = [(i, name) for i, name in enumerate(varying) if name not in TASK_KEYS]
        self.task_at = [(TASK_KEYS.index(name), i) for i, name in enumerate(varying) if name in TASK_KEYS]
        deciding = ("lr", "param", *IMPLICIT, *TRAIN_IMPLICIT) if command != "ntk" else ()
        self.sig_at = [i for i, name in enumerate(varying) if name in deciding]
        self.seed_at = varying.index("seed") if "seed" in varying else None
        self.fixed_task = _TASK_OF(self.defaults)
        self._entries, self._checked, self._seeds = {}, set(), set()
        self._fragments = {name: {} for name in varying}

    def __call__(self, point):
        task = self.fixed_task
        if self.task_at:
            task = list(task)
            for k, i in self.task_at:
                task[k] = point[i]
            task = tuple(task)
        sig = (task, tuple(point[i] for i in self.sig_at)) if self.sig_at else task
        try:
            entry = self._entries.get(sig) or self._entry(sig, task, point)
            self._check(entry, task, point)
        except UsageError as e:
            values = self.defaults | dict(zip(self.varying, point))
            shown = ", ".join(f"{k} = {v!r}" for k, v in values.items() if k in self.given)
            raise UsageError(f"{self.where}: the job with {shown}: {e}") from None
        config = entry.base.copy()
        for i, name in entry.kept:
            config[name] = point[i]
        return Job(self._id(entry, point), self.command, config, entry.line)

    def _full(self, entry, point):
        """The whole configuration of a point, before the keys it leaves out are dropped."""
        config = entry.full.copy()
        for i, name in self.rest_at:
            config[name] = point[i]
        return config

    def _entry(self, sig, task, point):
        """The _Entry of a (task, deciding values) combination, from its first point."""
        spec = parse_task(task[0], D=task[1], indices=task[2], beta1=task[3], beta2=task[4])
        head = {"task": spec.name, "D": spec.D}
        if spec.rule == "temperature":
            head |= {"beta1": spec.beta1, "beta2": spec.beta2}
        else:
            head["indices"] = ",".join(map(str, spec.indices))
        entry = _Entry(full=head | self.rest)
        config = self._full(entry, point)
        if self.command != "ntk" and "init" in self.given and config["param"] == "ntk":
            raise UsageError("key 'init' applies to param = \"standard\" only: with param = \"ntk\" every "
                             "parameter is N(0, 1) (init-scale scales them)")
        unused = unused_keys(self.command, config)
        entry.base = {k: v for k, v in entry.full.items() if k not in unused}
        entry.kept = [(i, name) for i, name in self.rest_at if name not in unused]
        kept = {name for _, name in entry.kept}
        job = {k: v for k, v in config.items() if k not in unused}
        entry.key = self._template(job, kept)
        entry.line = _line_template(self.command, job, kept)
        entry.slots = [self.varying.index(name) for name in entry.key[1]]
        self._entries[sig] = entry
        return entry

    def _check(self, entry, task, point):
        at = self.seed_at
        rest = (task, point) if at is None else (task, point[:at] + point[at + 1:])
        seed = None if at is None else point[at]
        if rest in self._checked and seed in self._seeds:
            return
        check_job(self.command, self._full(entry, point))
        self._checked.add(rest)
        self._seeds.add(seed)

    def _id(self, entry, point):
        """job_id(command, config), from the entry's template and the point's fragments."""
        segments, names = entry.key
        parts = [segments[0]]
        for name, i, segment in zip(names, entry.slots, segments[1:]):
            fragments = self._fragments[name]
            value = point[i]
            fragment = fragments.get(value)
            if fragment is None:
                if len(fragments) >= 1 << 16:   # a million seeds would be a million fragments
                    fragments.clear()
                fragment = fragments[value] = _dumps(value)
            parts += (fragment, segment)
        return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]

    def _template(self, config, slots):
        """(segments, slot names): the canonical JSON of configurations like this one is segments[0] + the fragment
        of the first slot's value + segments[1] + ..."""
        segments, names, text = [], [], f'{{"command":"{self.command}","config":{{'
        for n, name in enumerate(sorted(config)):
            text += ("," if n else "") + _dumps(name) + ":"
            if name in slots:
                segments.append(text)
                names.append(name)
                text = ""
            else:
                text += _dumps(config[name])
        segments.append(text + "}" + _protocol_field(self.command) + "}")
        return segments, names


class _Entry:
    """What a Resolver works out once per combination of a task and the values that decide the keys left out."""
    __slots__ = ("full", "base", "kept", "key", "line", "slots")

    def __init__(self, full):
        self.full = full


def _line_template(command, config, slots):
    """(segments, slot names) of the command lines of configurations like this one: Job.command_line's text is
    segments[0] + str(first slot's value) + segments[1] + ...  (values of slots are never None: TOML has none)."""
    c = with_implicit(command, config)
    segments, names, text = [], [], f"fastmlp {command} {c['task']}"
    for name, value in c.items():
        if name == "task" or (value is None and name not in slots):
            continue
        text += f" --{name} "
        if name in slots:
            segments.append(text)
            names.append(name)
            text = ""
        else:
            text += f"{value}"
    segments.append(text)
    return segments, names


_TASK_OF = operator.itemgetter(*TASK_KEYS)


def unused_keys(command, config):
    """Options a job does not use, or holds at their implicit value, left out of its configuration (and so of its
    identity): for `run` and `train`, sigma-w2 and sigma-b2 with the standard parameterization and init with the NTK
    parameterization; for `run` also the search's with a fixed lr, and the IMPLICIT settings at the value every job
    had before they existed (train jobs came later: they name every setting)."""
    if command == "ntk":
        return set()
    unused = {"sigma-w2", "sigma-b2"} if config["param"] == "standard" else {"init"}
    if command == "train":
        return unused | {k for k, v in TRAIN_IMPLICIT.items() if config.get(k) == v}
    unused |= set(SEARCH_KEYS) if config["lr"] is not None else set()
    return unused | {k for k, v in IMPLICIT.items() if config.get(k) == v}


def with_implicit(command, config):
    """A job's configuration with the IMPLICIT settings it leaves out put back: every setting it runs with."""
    if command == "train":
        return config | {k: v for k, v in TRAIN_IMPLICIT.items() if k not in config}
    if command != "run":
        return config
    return config | {k: v for k, v in IMPLICIT.items()
                     if k not in config and not (k == "init" and config.get("param") == "ntk")
                     and not (k in SEARCH_KEYS and config.get("lr") is not None)}


@functools.lru_cache(maxsize=None)
def _python_name(key):
    return key.replace("-", "_")


def _arguments(config):
    """The keyword arguments of a configuration: sweep keys as Python names ("bo-calls" -> bo_calls)."""
    return {_python_name(k): v for k, v in config.items()}


def check_job(command, config):
    """UsageError for a job its command would refuse, before anything runs (on its whole configuration, before
    the keys it does not use are left out)."""
    c = _arguments(config)
    if command == "run":
        from .protocol import check_config
        check_config(c["N"], c["folds"], c["bo_calls"], c["bo_batch"], c["lr_min"], c["lr_max"], c["repeats"],
                     c["n_test"], c["lr"], H=c["H"], L=c["L"], B=c["B"], max_epochs=c["max_epochs"], seed=c["seed"],
                     init=c["init"], init_scale=c["init_scale"], dtype=c["dtype"], param=c["param"],
                     sigma_w2=c["sigma_w2"], sigma_b2=c["sigma_b2"], loss=c["loss"], stop=c["stop"],
                     target_loss=c["target_loss"], lr_widen=c["lr_widen"], f0=c["f0"])
    elif command == "train":
        from .train import check_settings
        check_settings(**c)
    else:
        from .ntk import check_config
        check_config(c["N"], c["L"], c["sigma_w2"], c["sigma_b2"], c["n_test"], c["repeats"], c["seed"], c["kind"])


def job_id(command, config):
    """16 hex digits of SHA-256 over the canonical JSON of the command, its resolved configuration and, from version
    2 on, its PROTOCOL version: ``json.dumps({"command": command, "config": config[, "protocol": version]},
    sort_keys=True, separators=(",", ":"))``."""
    version = PROTOCOL[command]
    canonical = _dumps({"command": command, "config": config} | ({"protocol": version} if version != 1 else {}))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _protocol_field(command):
    """The canonical JSON's protocol field (after config in key order), empty for version 1."""
    version = PROTOCOL[command]
    return "" if version == 1 else f',"protocol":{version}'


_dumps = functools.partial(json.dumps, sort_keys=True, separators=(",", ":"))


def parse_override(text, schemas, option="--set"):
    """'KEY=VALUE' from --set (or --only) -> (key, value).  VALUE is TOML (bare words are strings); a
    comma-separated VALUE is a list, except for indices, whose own value is comma-separated (write a list of them as
    ["0,1", "0,2"])."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    known = {name for schema in schemas.values() for name in schema} | {"command"}
    if not sep or not raw:
        raise UsageError(f"{option} takes KEY=VALUE, e.g. {option} N=250,500 (got {text!r})")
    if key not in known:
        raise UsageError(f"{option}: unknown key {key!r} (known keys: {', '.join(sorted(known))})")

    def value(s):
        try:
            return tomllib.loads(f"v = {s}")["v"]
        except tomllib.TOMLDecodeError:
            return s
    if raw.startswith("[") or key == "indices" or "," not in raw:
        return key, value(raw)
    return key, [value(part.strip()) for part in raw.split(",")]


def select_only(jobs, pairs):
    """The jobs whose command or resolved setting has one of the values of every (key, value) pair (a list value:
    any of its items), as --only selects a slice of a sweep to run again."""
    def has(job, key, value):
        got = job.command if key == "command" else job.config.get(key)
        return got in (value if isinstance(value, list) else [value])
    return [job for job in jobs if all(has(job, key, value) for key, value in pairs)]


def select_shard(jobs, shard):
    """The jobs of shard 'i/K' (0 <= i < K): those whose id, as a number, is i modulo K.  A job keeps its shard
    when the grid grows, and the K shards together are the whole sweep."""
    try:
        i, k = (int(s) for s in shard.split("/"))
    except ValueError:
        raise UsageError(f"--shard takes i/K with 0 <= i < K, e.g. 0/4 (got {shard!r})") from None
    if not 0 <= i < k:
        raise UsageError(f"--shard i/K needs 0 <= i < K (got {shard!r})")
    return [job for job in jobs if int(job.id, 16) % k == i]


# ------------------------------------------------------------------------------------------------ one job
def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# The SLURM job a process runs in, as its environment says: (record key, variable); an array task has all three.
SLURM_JOB_VARIABLES = (("slurm_job_id", "SLURM_JOB_ID"), ("slurm_array_job_id", "SLURM_ARRAY_JOB_ID"),
                       ("slurm_array_task_id", "SLURM_ARRAY_TASK_ID"))


def worker_info():
    """{host, pid} of this process, and the SLURM job it runs in (slurm_job_id; slurm_array_job_id and
    slurm_array_task_id for an array task) when SLURM started it."""
    info = {"host": socket.gethostname(), "pid": os.getpid()}
    for key, variable in SLURM_JOB_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value:
            info[key] = int(value) if value.isdigit() else value
    return info


def job_record(job, status, record, error, provenance, started, elapsed_s):
    """The stored record of a job (see fastmlp.store)."""
    return {"id": job.id, "status": status, "command": job.command, "protocol": job.protocol, "config": job.config,
            "command_line": job.command_line(), "record": record, "error": error, "provenance": provenance,
            "worker": worker_info(), "started": started, "finished": _now(), "elapsed_s": elapsed_s}


def error_of(exc):
    return {"type": type(exc).__name__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc))}


def execute(job, progress=None):
    """Run one job where this is called (this process or a Dask worker) -> its stored record.  Never raises for
    an error of the job itself: that is recorded as status failed.  ``progress(text)`` receives the job's own
    progress lines (search batches, final repeats; NTK repeats)."""
    from . import ntk, protocol, train
    from .provenance import git_commit, record as provenance
    git_commit()   # on a worker: pinned at its first job, when it imports this code
    started, t0 = _now(), time.perf_counter()
    c = with_implicit(job.command, job.config)
    _use_worker_gpu(c["backend"])
    try:
        spec = parse_task(c["task"], **{k: c[k] for k in TASK_KEYS[1:] if k in c})
        kwargs = _arguments({k: v for k, v in c.items() if k not in TASK_KEYS})
        run = {"run": protocol.run, "ntk": ntk.run, "train": train.run_job}[job.command]
        rec = run(spec, **kwargs, progress=progress)
    except Exception as e:   # any failure of the job is its result: stored, shown, retried on request
        return job_record(job, "failed", None, error_of(e), _safe_provenance(c["backend"], provenance), started,
                          time.perf_counter() - t0)
    return job_record(job, "done", rec, None, rec["provenance"], started, time.perf_counter() - t0)


def _safe_provenance(backend, provenance):
    try:
        return provenance(backend)
    except Exception as e:   # the failure may be the backend itself; the record must still be written
        return {"backend": backend, "error": str(e)}


def _use_worker_gpu(backend):
    """On a Dask worker of a machine with several GPUs, use GPU (worker number mod GPU count): one per worker."""
    if backend != "gpu" or "distributed" not in sys.modules:
        return
    try:
        from distributed import get_worker
        name = get_worker().name
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:   # not on a worker, or no CuPy/GPU: the job itself reports what is missing
        return
    if isinstance(name, int) and n > 1:
        cupy.cuda.Device(name % n).use()


# ---------------------------------------------------------------------------------------------- executors
class InProcess:
    """Runs the jobs here, one after another.  ``job_progress(job, text)`` receives each job's progress lines."""
    description = "in this process"

    def __init__(self, job_progress=None):
        self.job_progress = job_progress

    def results(self, jobs):
        for job in jobs:
            say = None if self.job_progress is None else functools.partial(self.job_progress, job)
            yield execute(job, progress=say)

    def close(self):
        pass


class DaskExecutor:
    """Runs the jobs on a Dask cluster: a new local one of ``workers`` processes, or the one whose scheduler is at
    ``scheduler``.  Records come back here as jobs finish, in any order."""

    def __init__(self, workers=None, scheduler=None, connect_timeout=30):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise UsageError("--workers and --scheduler need Dask: pip install 'fastmlp[cluster]'") from None
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=connect_timeout)
            except (OSError, TimeoutError) as e:
                raise UsageError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
            self.description = f"on the Dask cluster at {scheduler}"
        else:
            import dask
            threads = max(1, len(os.sched_getaffinity(0)) // workers)
            # Thread counts must be in the environment before a worker imports Numba or NumPy: Dask's
            # pre-spawn environment is set before the worker process starts (its `env` only after).
            env = dask.config.get("distributed.nanny.pre-spawn-environ", {}) | {
                name: str(threads) for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                "MKL_NUM_THREADS")}
            with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
            self.client = Client(self.cluster)
            self.description = f"on a local Dask cluster of {workers} worker processes, {threads} thread(s) each"

    def results(self, jobs):
        from distributed import as_completed
        futures = {self.client.submit(execute, job, key=f"fastmlp-{job.id}", pure=False): job for job in jobs}
        started = _now()
        for future in as_completed(futures):
            job = futures.pop(future)
            try:
                yield future.result()
            except Exception as e:   # the worker was lost too often (KilledWorker), or the task was cancelled
                yield job_record(job, "failed", None, error_of(e), None, started, None)
            future.release()

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def executor_for(workers=None, scheduler=None, job_progress=None):
    """The executor the options ask for (in process when neither is given; only that one reports
    ``job_progress(job, text)`` from inside jobs).  SLURM's, which builds on this module, is fastmlp.slurm's."""
    if workers is not None and scheduler:
        raise UsageError("give --workers (a local cluster) or --scheduler (an existing one), not both")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    if workers or scheduler:
        return DaskExecutor(workers=workers, scheduler=scheduler)
    return InProcess(job_progress)


def plan(jobs, statuses, retry_failed):
    """(jobs to run, done jobs skipped, failed jobs skipped) given the store's {id: status}."""
    todo, done, failed = [], [], []
    for job in jobs:
        status = statuses.get(job.id)
        if status == "done":
            done.append(job)
        elif status == "failed" and not retry_failed:
            failed.append(job)
        else:
            todo.append(job)
    return todo, done, failed


def job_bytes(job):
    """Memory one job allocates at its peak where it runs (the estimates of fastmlp.preflight and fastmlp.ntk)."""
    c = _arguments(with_implicit(job.command, job.config))
    if job.command == "run":
        from .protocol import memory_bytes
        return memory_bytes(c["D"], c["N"], c["H"], c["L"], c.get("folds", 0), c.get("bo_batch", 0), c["repeats"],
                            c["lr"], c["dtype"])
    if job.command == "train":
        from .preflight import engine_bytes
        from .train import expand, int_ranges, parse_floats
        M = len(parse_floats(c["lr"], "--lr")) * len(expand(int_ranges(c["seeds"], "--seeds")))
        return engine_bytes(M, c["N"], c["D"], c["H"], c["L"], 8 if c["dtype"] == "float64" else 4)
    from .ntk import regression_bytes
    return regression_bytes(c["N"], c["D"], copy=c["backend"] == "gpu")


def check_sizes(jobs):
    """UsageError (the estimate-and-refuse rule) when the largest of the jobs would not fit in this machine's memory,
    for the jobs that run on this machine (in process), before the first one starts."""
    cpu = [job for job in jobs if job.config["backend"] == "cpu"]
    if cpu:
        largest = max(cpu, key=job_bytes)
        check_memory(job_bytes(largest), f"the largest job, {largest.label} ({largest.id}),",
                     fix="lower its N (or H, L, repeats), or run it where there is more memory")


def run_jobs(jobs, store, executor, on_record=None, timeout=None, on_other=None, say=None, warn=None, poll_s=None):
    """Run the jobs on the executor, each claimed in the store before it starts (`fastmlp.store.Store.claim`) and
    its record written the moment it arrives -> the records this process wrote.

    A job another process holds is left to it; once this process has run every job it could claim, it waits for
    those, and takes a job over when its claim goes stale (its process was killed).  A job whose record another
    process wrote meanwhile is not run again: ``on_other(record)`` hears of it.  ``say(text)`` hears what the sweep
    waits for, ``warn(text)`` of a record replaced that another process wrote meanwhile.  ``timeout``: seconds after
    which a claim nobody touched is stale (None: the store's default); this process touches its own claims from a
    heartbeat thread, and looks at the others' every ``poll_s`` seconds (default: a tenth of the timeout, at most
    5 s).  The in-process executor claims each job just before it runs it; a Dask executor claims all it submits.
    """
    claim_kw = {} if timeout is None else {"timeout": timeout}
    heartbeat = store.heartbeat(timeout)
    poll_s = min(5.0, heartbeat.timeout / 10) if poll_s is None else poll_s
    initial = {job.id: store.stamp(job.id) for job in jobs}   # the record each job replaces (a failed one), if any
    held = {}                                                   # job id -> Claim
    written, pending, announced = [], list(jobs), False

    def elsewhere(job):
        """The record another process wrote for the job since this sweep looked (None if none): a job to run has no
        record, or a failed one to retry, so any other record is another process's result."""
        stamp = store.stamp(job.id)
        return None if stamp is None or stamp == initial[job.id] else store.load(job.id)

    def claimed(jobs, others):
        """The jobs this process has claimed, in order, claiming each as it is reached."""
        for job in jobs:
            rec = elsewhere(job)
            if rec is None:
                claim = store.claim(job.id, **claim_kw)
                if claim is None:
                    others.append(job)
                    continue
                rec = elsewhere(job)            # written between the look and the claim: release it again
                if rec is None:
                    held[job.id] = claim
                    heartbeat.add(claim)
                    yield job
                    continue
                store.release(claim)
            if on_other:
                on_other(rec)

    try:
        while pending:
            others = []
            for rec in executor.results(claimed(pending, others)):
                claim = held.pop(rec["id"])
                note = store.write(rec, replaces=initial.get(rec["id"]))
                heartbeat.remove(claim)
                store.release(claim)
                written.append(rec)
                if note and warn:
                    warn(note)
                if on_record:
                    on_record(rec)
            pending = others
            if pending:
                if say and not announced:
                    holders = sorted({f"{h.get('host', '?')}:{h.get('pid', '?')}" for h in
                                      (store.claim_of(job.id) for job in pending) if h is not None})
                    who = f" ({', '.join(holders[:4])}{', ...' if len(holders) > 4 else ''})" if holders else ""
                    n = len(pending)
                    say(f"{n} job{'s are' if n > 1 else ' is'} claimed by other processes{who}: waiting for "
                        f"{'them' if n > 1 else 'it'}; a claim not renewed for {heartbeat.timeout:g}s is taken over")
                    announced = True
                time.sleep(poll_s)
    finally:
        for claim in held.values():             # stopped mid-job: the job is free for the next sweep at once
            store.release(claim)
        heartbeat.close()
    return written
