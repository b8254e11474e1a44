"""Every number the documents publish from a result, generated from the committed data in docs/results/.

    python -m fastmlp.report            rewrite the generated parts of the documents and the figures' points
    python -m fastmlp.report --check    change nothing; print what differs and exit 1 if anything does
    python -m fastmlp.report --figures  also redraw every figure from its job table (`fastmlp.plot.plot_table`)

A document (DOCUMENTS) marks each generated piece with a pair of HTML comments, which Markdown renders as nothing:

    the error is <!--r m('init-k2', '2-local', 8000, 3)-->0.247<!--/r--> at N = 8000

The text between the comments is the value of the expression in the first: a number is written with three
decimals (`f(x, '.2f')` for others), a string as it is.  A table is one expression on a line of its own, with
the table between blank lines:

    <!--r table_depth('repro-k1', '1-local', Ls=(1, 3), ntk=(1, 3))-->

    | N | L = 1 | ...

    <!--/r-->

The expressions call the functions of `namespace` on the data (and min, max, sum, len, sorted, abs, round,
comprehensions; nothing else): a store is named as its committed job table, ``docs/results/NAME-jobs.csv`` (what
`fastmlp collect` wrote), and a job or a point is selected as (store, task, N, L) and further settings as keywords
(``init_scale=0.5`` for the column init-scale; ``ntk=True`` for the NTK jobs, else the `run` jobs; all data seeds
unless ``seed`` is given).  A point's mean and error bar are those of its figure (`fastmlp.plot.point`): the mean
over data seeds of each seed's mean, and the standard deviation over data seeds of those means, or over the repeats
where the point has one data seed.

  points      m (mean), sd (error bar), m0 (mean without diverged repeats), ms (several depths), pm ('m ± sd'),
              pt, points, best, deeper_wins
  depths      diff ('+0.012 (-0.003 to +0.027)': L = b minus L = a and its 95% interval), dd, ci (`difference`)
  jobs        job, jobs, lr (selected), njobs, searched, at_bound, capped_best, where, wall (the jobs' own
              seconds), wall_all,
              two_repeats (the two test errors of a job of two repeats)
  other data  rows and value (any CSV of docs/results/), slope, record and networks (JSON records), mean
  text        f (format a number), span ('lo to hi'), n_text, lr_text, duration ('4 min 41 s')
  tables      table_depth, table_jobs, table_init, table_diff, table_scale, table_means, table_best_lr, table_lr,
              table_width, table_lazy, table_lazy_lr, table_losses, table_expressivity

Adding the table of a new store (a sweep's section of docs/results.md):
  1. commit its job table, ``fastmlp collect results/NAME --csv docs/results/NAME-jobs.csv``;
  2. write the marker of its table where it goes, e.g. ``<!--r table_depth('NAME', '2-local', Ls=(1, 3, 5),
     bold=True)-->``, a blank line, ``<!--/r-->``, and ``<!--r table_diff('NAME', ['2-local'])-->`` for its depth
     differences; the numbers quoted in the prose as ``<!--r m('NAME', 'TASK', N, L)-->0<!--/r-->``;
  3. run ``python -m fastmlp.report --figures``: it fills the markers, writes ``NAME.csv`` (the figure's points) and
     draws ``NAME.png`` (FIGURE_X names the x axis of a figure that is not against N or lr).
tests/test_report.py fails while any document or points file differs from what this module generates.
"""
import argparse
import difflib
import io
import json
import math
import re
import statistics
import sys
from functools import lru_cache
from pathlib import Path

from . import plot

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "docs/results"
DOCUMENTS = ("README.md", "docs/results.md", "docs/ntk.md", "docs/science.md", "docs/benchmarks.md")
BENCH = "docs/bench"   # the JSON lines that `fastmlp bench` printed, one file per run
FIGURE_X = {"init-scale": "init-scale"}   # a figure's x axis where `fastmlp plot`'s auto choice is not it
MARK = re.compile(r"(?<!`)<!--r (.*?)-->(.*?)<!--/r-->", re.S)   # a mark quoted in `code` is not one


class ReportError(ValueError):
    """An expression in a document that selects nothing, or more than it may."""


# ------------------------------------------------------------------------------------------------- data
class Data:
    """The committed data under ``root``/docs/results (and the benchmark runs under docs/bench), read once."""

    def __init__(self, root=ROOT):
        self.dir = Path(root) / RESULTS
        self.bench_dir = Path(root) / BENCH

    @lru_cache(maxsize=None)
    def jobs(self, store):
        path = self.dir / f"{store}-jobs.csv"
        if not path.exists():
            raise ReportError(f"no job table {path.name} in {RESULTS}")
        return [r for r in plot.read_table(path) if r["status"] == "done"]

    @lru_cache(maxsize=None)
    def table(self, name):
        path = self.dir / f"{name}.csv"
        if not path.exists():
            raise ReportError(f"no table {path.name} in {RESULTS}")
        return plot.read_table(path)

    @lru_cache(maxsize=None)
    def record(self, name):
        return json.loads((self.dir / f"{name}.json").read_text())

    @lru_cache(maxsize=None)
    def bench(self, name):
        """The lines of one `fastmlp bench` run, docs/bench/NAME.jsonl."""
        path = self.bench_dir / f"{name}.jsonl"
        if not path.exists():
            raise ReportError(f"no benchmark run {path.name} in {BENCH}")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stores(self):
        return sorted(p.name[:-len("-jobs.csv")] for p in self.dir.glob("*-jobs.csv"))


def _key(k):
    return k.replace("_", "-")


def _match(rows, sel):
    return [r for r in rows if all(r.get(k) == v for k, v in sel.items())]


def _sel(task, N, L, sel):
    """A selection from the positional shorthand (task, N, L) and keywords."""
    return {**{k: v for k, v in (("task", task), ("N", N), ("L", L)) if v is not None}, **sel}


def _select(data, store, sel):
    sel = {_key(k): v for k, v in sel.items()}
    sel["command"] = "ntk" if sel.pop("ntk", False) else sel.get("command", "run")
    rows = _match(data.jobs(store), sel)
    if not rows:
        raise ReportError(f"{store}: no job with {sel}")
    return rows


def _one_point(data, store, sel):
    """The job rows of one point: they may differ in the data seed only."""
    rows = _select(data, store, sel)
    for k in plot.config_of(rows[0]):
        if k != "seed" and len({repr(r.get(k)) for r in rows}) > 1:
            raise ReportError(f"{store} {sel}: the jobs differ in {k}; select one value")
    return rows


# ----------------------------------------------------------------------------------------------- format
def f(x, spec=".3f"):
    """A number as text: three decimals by default; None as '-'."""
    return "-" if x is None else format(x, spec)


def n_text(n):
    """N as the documents write it: 8000, 16,000."""
    return f"{n:,}" if n >= 10000 else str(n)


def span(values, spec=".3f", sep=" to "):
    """'lo to hi' of numbers (one number where they agree at this precision)."""
    lo, hi = f(min(values), spec), f(max(values), spec)
    return lo if lo == hi else f"{lo}{sep}{hi}"


def lr_text(x):
    """A learning rate as the documents write it: two significant digits."""
    return f"{x:.2g}" if x < 1 else f"{x:.3g}"


def duration(seconds):
    """Seconds as the documents write a time: '33 s', '4 min 41 s', '1 h 37 min' (to the second below an hour,
    to the minute above)."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min"


# ---------------------------------------------------------------------------------------- the namespace
def namespace(data):
    """The functions a document's expressions may call, bound to ``data``."""
    def pt(store, task=None, N=None, L=None, **sel):
        """The point's statistics (fastmlp.plot.point) and its job rows under 'jobs'."""
        rows = _one_point(data, store, _sel(task, N, L, sel))
        return {**plot.point(rows), "jobs": rows}

    def m(*a, **sel):
        """A point's mean test error."""
        return pt(*a, **sel)["mean"]

    def sd(*a, **sel):
        """A point's error bar."""
        return pt(*a, **sel)["std"]

    def m0(*a, **sel):
        """A point's mean test error without its diverged repeats."""
        return pt(*a, **sel)["mean_without_diverged"]

    def ms(store, task, N, Ls=(1, 3, 5), sep=", ", **sel):
        """The means of the depths Ls at one point, 'a, b, c'."""
        return sep.join(f(m(store, task, N, L, **sel)) for L in Ls)

    def pm(*a, **sel):
        """'mean ± error bar' of a point, with its notes (capped, diverged)."""
        return cell(pt(*a, **sel))

    def job(store, task=None, N=None, L=None, **sel):
        """The one job row selected (every column of the job table)."""
        rows = _select(data, store, _sel(task, N, L, sel))
        if len(rows) != 1:
            raise ReportError(f"{store} {sel}: {len(rows)} jobs, not one")
        return rows[0]

    def jobs(store, task=None, N=None, L=None, **sel):
        return _select(data, store, _sel(task, N, L, sel))

    def lr(*a, **sel):
        """The selected learning rate of one job, as text."""
        return lr_text(job(*a, **sel)["selected_lr"])

    def wall(store, task=None, N=None, L=None, **sel):
        """The summed wall time (wall_s) of the selected jobs, in seconds: each job's own time, which leaves out
        what a sweep spent between jobs and on jobs it stopped."""
        return sum(r["wall_s"] for r in _select(data, store, _sel(task, N, L, sel)))

    def wall_all(store):
        """The summed wall time (wall_s) of every job of a store, networks and NTK alike, in seconds."""
        return sum(r["wall_s"] for r in data.jobs(store) if r["wall_s"] is not None)

    def two_repeats(*a, **sel):
        """(low, high): the two test errors of a job of two repeats, which its mean and standard deviation (ddof =
        1) determine: the mean -/+ std / sqrt(2)."""
        r = job(*a, **sel)
        if r["test_error_n"] != 2:
            raise ReportError(f"{a} {sel}: {r['test_error_n']} repeats, not two")
        half = r["test_error_std"] / math.sqrt(2)
        return r["test_error_mean"] - half, r["test_error_mean"] + half

    def points(store, task=None, N=None, L=None, **sel):
        """Every point of the selected jobs: [config of the point (no seed) with its statistics], ascending."""
        groups = {}
        for r in _select(data, store, _sel(task, N, L, sel)):
            key = tuple((k, repr(v)) for k, v in plot.config_of(r).items() if k != "seed")
            groups.setdefault(key, []).append(r)
        out = [{**{k: v for k, v in plot.config_of(g[0]).items() if k != "seed"}, **plot.point(g)}
               for g in groups.values()]
        return sorted(out, key=lambda p: [plot._order(p[k]) for k in ("N", "L", "init-scale", "lr", "H") if k in p])

    def best(*a, **sel):
        """The point of lowest mean among the selected ones."""
        return min(points(*a, **sel), key=lambda p: p["mean"])

    def deeper_wins(store, task, x, shallow=1, **sel):
        """The values of x at which some network deeper than L = shallow has a lower mean than L = shallow."""
        pts = points(store, task, **sel)
        base = {p[x]: p["mean"] for p in pts if p["L"] == shallow}
        return sorted({p[x] for p in pts if p["L"] > shallow and p[x] in base and p["mean"] < base[p[x]]})

    def at_bound(stores, side, learned=None):
        """The searched run jobs of the stores whose selected lr lies at the upper (within 1%) or lower (within 25%)
        bound of their search range; learned: only those whose mean test error is below (True) or not (False)
        0.47."""
        out = []
        for store in stores:
            for r in _select(data, store, {}):
                if r["selected_lr"] is None or r["lr"] is not None or r.get("lr-max") is None:
                    continue
                at = (r["selected_lr"] >= 0.99 * r["lr-max"] if side == "upper"
                      else r["selected_lr"] <= 1.25 * r["lr-min"])
                if at and (learned is None or (r["test_error_mean"] < 0.47) == learned):
                    out.append(r)
        return sorted(out, key=lambda r: (r["task"], r["N"], r["L"]))

    def capped_best(stores, learned=0.47):
        """The points of the stores' searched run jobs where the depth with the lowest mean, below ``learned``,
        has repeats that hit the epoch cap: [{store, task, N, L, not_converged, n}]."""
        out = []
        for store in stores:
            groups = {}
            for r in _select(data, store, {}):
                if r["lr"] is None:
                    key = tuple((k, repr(v)) for k, v in plot.config_of(r).items() if k not in ("L", "seed"))
                    groups.setdefault(key, {}).setdefault(r["L"], []).append(r)
            for by_depth in groups.values():
                if len(by_depth) < 2:
                    continue
                pts = {L: plot.point(rows_) for L, rows_ in by_depth.items()}
                L = min(pts, key=lambda d: pts[d]["mean"])
                if pts[L]["mean"] < learned and pts[L]["not_converged"]:
                    first = by_depth[L][0]
                    out.append({"store": store, "task": first["task"], "N": first["N"], "L": L,
                                "not_converged": pts[L]["not_converged"], "n": pts[L]["n_values"]})
        return sorted(out, key=lambda r: (r["task"], r["N"], r["store"]))

    def njobs(store, command=None):
        """The number of jobs in a store's job table (of one command if given)."""
        return sum(1 for r in data.jobs(store) if command is None or r["command"] == command)

    def searched(stores):
        """The number of searched run jobs of the stores."""
        return sum(1 for store in stores for r in _select(data, store, {}) if r["lr"] is None)

    def where(found):
        """'1-global N = 1000 L = 1; 3-local N = 8000 L = 1 and 3' of job rows."""
        groups = {}
        for r in found:
            groups.setdefault((r["task"], r["N"]), []).append(r["L"])
        return "; ".join(f"{t} N = {n_text(n)} L = {' and '.join(map(str, Ls))}" for (t, n), Ls in groups.items())

    def rows(name, **sel):
        """The rows of docs/results/NAME.csv with the given column values."""
        out = _match(data.table(name), {_key(k): v for k, v in sel.items()})
        if not out:
            raise ReportError(f"{name}.csv: no row with {sel}")
        return out

    def value(name, column, **sel):
        """One cell of docs/results/NAME.csv."""
        found = rows(name, **sel)
        if len(found) != 1:
            raise ReportError(f"{name}.csv: {len(found)} rows with {sel}, not one")
        return found[0][column]

    def slope(name, x, y, **sel):
        """The least-squares slope of log(y) against log(x) over the rows of docs/results/NAME.csv."""
        pts = [(math.log(r[x]), math.log(r[y])) for r in rows(name, **sel)]
        mx, my = (sum(p[i] for p in pts) / len(pts) for i in (0, 1))
        return sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)

    def bench(name, workload=None, impl=None, ratios=False):
        """The one line of a `fastmlp bench` run (docs/bench/NAME.jsonl) with this workload and impl: its rate, or
        with ``ratios`` its per-round ratios to the best peer and to sgemm."""
        found = [r for r in data.bench(name) if (workload is None or r.get("workload") == workload)
                 and (impl is None or r.get("impl") == impl) and ("ratios" in r) == ratios]
        if len(found) != 1:
            raise ReportError(f"{name}.jsonl: {len(found)} lines with workload {workload}, impl {impl}")
        return found[0]

    def bench_lines(name, **sel):
        """Every line of a benchmark run (docs/bench/NAME.jsonl) whose keys have the values given, in file order."""
        found = [r for r in data.bench(name) if all(r.get(k) == v for k, v in sel.items())]
        if not found:
            raise ReportError(f"{name}.jsonl: no line with {sel}")
        return found

    def kernel(name, kernel, commit=None):
        """The line of one kernel in a `bench/bench_kernels.py` run (docs/bench/NAME.jsonl): its family, rate and
        share of a step's FLOPs.  In a run with --against, the lines of one commit (its short hash, or "checkout"),
        the rate their median over the rounds."""
        found = [r for r in data.bench(name) if r.get("kernel") == kernel and r.get("commit") == commit]
        if len(found) > 1 and all("round" in r for r in found):
            return found[0] | {"gflops": statistics.median(r["gflops"] for r in found), "rounds": len(found)}
        if len(found) != 1:
            raise ReportError(f"{name}.jsonl: {len(found)} lines for kernel {kernel}" +
                              (f", commit {commit}" if commit else ""))
        return found[0]

    def spills(name, family, kind, dtype="float32"):
        """FMAs / vector stack accesses in the reduction loops of each kernel of one kind (fwd, dweight_r, dinp...,
        or train_epoch: the driver), family and dtype in a `bench/kernel_spills.py` run (docs/bench/NAME.jsonl):
        '4x16: 8 / 0; 4x8: 4 / 0'."""
        lines = [r for r in data.bench(name) if r["family"] == family and r["dtype"] == dtype]
        if kind == "train_epoch":   # the driver, every kernel inlined into it
            (r,) = [r for r in lines if r["kernel"] == "train_epoch (callees included)"]
            return f"{r['loop_fma']} / {r['loop_stack']}"
        found = [r for r in lines if re.fullmatch(rf"{kind}_(\d+x\d+)", r["kernel"])]
        if not found:
            return "-"
        return "; ".join(f"{r['kernel'][len(kind) + 1:]}: {r['loop_fma']} / {r['loop_stack']}" for r in
                         sorted(found, key=lambda r: -int(r["kernel"].split("_")[-1].split("x")[1])))

    def paired(name, workload):
        """The summary line of a `bench/bench_commits.py` run (docs/bench/NAME.jsonl) for one workload: the median
        ratio of this engine's rate to the other commit's over its pairs, and quartiles."""
        found = [r for r in data.bench(name) if r.get("workload") == workload and "ratio" in r]
        if len(found) != 1:
            raise ReportError(f"{name}.jsonl: {len(found)} summary lines for {workload}")
        return found[0]

    def pair_seconds(name, workload, commit):
        """The seconds of one commit's timed calls in a `bench/bench_commits.py` run's pair lines: their span."""
        calls = [r["seconds"][commit] for r in data.bench(name) if r.get("workload") == workload and "pair" in r]
        if not calls:
            raise ReportError(f"{name}.jsonl: no pairs of {workload} with {commit}")
        return span(calls, ".1f")

    def record(name):
        """The JSON record docs/results/NAME.json (what `fastmlp run/ntk/train --json` printed)."""
        return data.record(name)

    def networks(name, **sel):
        """The networks of a `train` record docs/results/NAME.json with the given values (lr=1.0, say)."""
        out = _match(data.record(name)["networks"], sel)
        if not out:
            raise ReportError(f"{name}.json: no network with {sel}")
        return out

    def mean(values):
        values = list(values)
        return sum(values) / len(values)

    def diff(store, task, N, a, b, **sel):
        """The depth difference L = b minus L = a at a point, with its 95% interval (table_diff's cell)."""
        return diff_cell(data, store, a, b, {"task": task, "N": N, **sel})

    def dd(store, task, N, a, b, clean=False, **sel):
        """(difference, low, high) of L = b minus L = a at a point (`difference`)."""
        ra = _one_point(data, store, {"task": task, "N": N, "L": a, **sel})
        rb = _one_point(data, store, {"task": task, "N": N, "L": b, **sel})
        return difference(ra, rb, clean)[:3]

    def ci(store, task, N, a, b, clean=False, **sel):
        """'95% interval lo to hi' of L = b minus L = a at a point."""
        _, lo, hi = dd(store, task, N, a, b, clean, **sel)
        return f"{lo:+.3f} to {hi:+.3f}"

    ns = {k: v for k, v in locals().items() if callable(v) and not k.startswith("_")}
    ns.update(f=f, span=span, duration=duration, any=any, all=all, n_text=n_text, lr_text=lr_text, min=min, max=max,
              abs=abs, round=round, len=len, sorted=sorted, sum=sum, str=str, int=int, float=float, math=math)
    for name in TABLES:
        ns[name] = (lambda fn: lambda *a, **k: fn(data, *a, **k))(TABLES[name])
    return ns


# ------------------------------------------------------------------------------------------------ cells
def cell(p, with_std=True, notes=True):
    """'mean ± std', then '(k capped)' and '(k diverged; mean without)' where they apply."""
    text = f(p["mean"]) + (f" ± {f(p['std'])}" if with_std and p["std"] is not None else "")
    if not notes:
        return text
    extra = []
    if p.get("not_converged"):
        extra.append(f"{p['not_converged']} capped")
    if p.get("diverged"):
        n = p["n_values"]
        without = ("all" if p["mean_without_diverged"] is None else
                   f"{f(p['mean_without_diverged'])}" + (f" ± {f(p['std_without_diverged'])}"
                                                          if with_std and p["std_without_diverged"] is not None
                                                          else "") + " without them")
        extra.append(f"{p['diverged']} of {n} diverged" + ("" if without == "all" else f"; {without}"))
    return text + (f" ({'; '.join(extra)})" if extra else "")


def _t(q, df):
    from scipy.stats import t
    return float(t.ppf(q, df))


def _seed_means(rows, clean=False):
    """{seed: mean over the seed's repeats} of one point's job rows (without diverged repeats if ``clean``)."""
    out = {}
    for seed in sorted({r["seed"] for r in rows}):
        parts = [(r["test_error_mean"], r["test_error_std"], r["test_error_n"] or 0) for r in rows
                 if r["seed"] == seed]
        if clean:
            parts = [plot.without_diverged(m_, s_, n_, r["diverged"] or 0) for (m_, s_, n_), r
                     in zip(parts, [r for r in rows if r["seed"] == seed])]
        mean, std, n = plot.combined(parts)
        if n:
            out[seed] = (mean, std, n)
    return out


def difference(rows_a, rows_b, clean=False):
    """(b - a, low, high, how) of two points' means: a 95% t-interval over the data seeds both share, paired by
    seed, where they share two or more; else Welch's 95% interval over the repeats of the one seed (how names
    which)."""
    sa, sb = _seed_means(rows_a, clean), _seed_means(rows_b, clean)
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        return None, None, None, "none"
    if len(seeds) > 1:
        d = [sb[s][0] - sa[s][0] for s in seeds]
        k = len(d)
        mean = sum(d) / k
        half = _t(0.975, k - 1) * math.sqrt(sum((x - mean) ** 2 for x in d) / (k - 1) / k)
        return mean, mean - half, mean + half, f"{k} seeds"
    (ma, sa_, na), (mb, sb_, nb) = sa[seeds[0]], sb[seeds[0]]
    va, vb = (sa_ or 0.0) ** 2 / na, (sb_ or 0.0) ** 2 / nb
    se = math.sqrt(va + vb)
    if se == 0 or na < 2 or nb < 2:
        return mb - ma, mb - ma, mb - ma, "repeats"
    df = (va + vb) ** 2 / ((va ** 2 / (na - 1) if na > 1 else 0) + (vb ** 2 / (nb - 1) if nb > 1 else 0))
    half = _t(0.975, df) * se
    return mb - ma, mb - ma - half, mb - ma + half, "repeats"


def diff_text(d, lo, hi):
    return "-" if d is None else f"{d:+.3f} ({lo:+.3f} to {hi:+.3f})"


def diff_cell(data, store, a, b, sel, ntk=False):
    """'+0.012 (-0.003 to +0.027)': L = b minus L = a, its 95% interval; the same without diverged repeats
    where either point has some."""
    ra = _one_point(data, store, {**sel, "L": a, "ntk": ntk})
    rb = _one_point(data, store, {**sel, "L": b, "ntk": ntk})
    text = diff_text(*difference(ra, rb)[:3])
    if any(r["diverged"] for r in ra + rb):
        text += f"; without diverged repeats {diff_text(*difference(ra, rb, clean=True)[:3])}"
    return text


# ----------------------------------------------------------------------------------------------- tables
def _md(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _values(rows, key):
    return sorted({r[key] for r in rows if r[key] is not None})


def table_depth(data, store, task, Ls=(1, 3, 5), ntk=(), bold=False, N=None, seeds=None, **sel):
    """N against depth: 'mean ± error bar' of the networks of each L in Ls, then the NTK of each depth in ntk;
    bold: the lowest network mean of a row; sel: further settings every job of the table has (H=100, say).  With
    ``seeds`` (the data seeds a point will have), a point with fewer says which it has, and one with none says
    so: a table of a sweep still running."""
    sel = {_key(k): v for k, v in sel.items()}
    jobs = _match([r for r in data.jobs(store) if r["task"] == task and r["command"] == "run"], sel)
    Ns = N or _values(jobs, "N")
    body = []
    for n in Ns:
        pts = {L: plot.point(_one_point(data, store, {**sel, "task": task, "N": n, "L": L})) for L in Ls
               if _match(jobs, {"N": n, "L": L})}
        best = min((p["mean"] for p in pts.values()), default=None)
        row = [n_text(n)]
        for L in Ls:
            if L not in pts:
                row.append("not run yet")
                continue
            text = cell(pts[L])
            row.append(f"**{text}**" if bold and pts[L]["mean"] == best and len(pts) > 1 else text)
            have = sorted({r["seed"] for r in _match(jobs, {"N": n, "L": L})})
            if seeds and len(have) < len(seeds):
                row[-1] += f" [seed {' and '.join(map(str, have))} only]"
        for L in ntk:
            rows_ = _select(data, store, {**sel, "task": task, "N": n, "L": L, "ntk": True})
            row.append(cell(plot.point(rows_)))
        body.append(row)
    header = ["N"] + [f"L = {L}" for L in Ls] + [f"NTK L = {L}" for L in ntk]
    return _md(header, body)


def table_jobs(data, store, rows, columns, **sel):
    """One job per cell: rows and columns are [(label, settings)], a cell the job with its row's, its column's and
    sel's settings: 'mean ± std over its repeats, a to b epochs' (the fewest and most of its final networks), with
    '(k capped)' and '(k diverged)' where they apply; empty where no job has them."""
    sel = {_key(k): v for k, v in sel.items()}
    body = []
    for label, rsel in rows:
        row = [label]
        for _, csel in columns:
            want = {"command": "run", **sel, **{_key(k): v for k, v in {**rsel, **csel}.items()}}
            found = _match(data.jobs(store), want)
            if len(found) > 1:
                raise ReportError(f"{store}: {len(found)} jobs with {sel} {rsel} {csel}, not one")
            if not found:
                row.append("")
                continue
            j = found[0]
            notes = [f"{j[k]} {word}" for k, word in (("not_converged", "capped"), ("diverged", "diverged")) if j[k]]
            row.append(f"{f(j['test_error_mean'])} ± {f(j['test_error_std'])}, {j['epochs_min']} to {j['epochs_max']} "
                       "epochs" + (f" ({'; '.join(notes)})" if notes else ""))
        body.append(row)
    return _md([""] + [label for label, _ in columns], body)


def table_init(data, parts, Ls=(1, 3, 5)):
    """torch against He: parts is [(torch store, He store, task)]; a row per (task, N) of the torch store with
    'mean ± error bar' per depth (bold: the lowest), and He's means of the same point, '-' where He has none."""
    body = []
    for store, he, task in parts:
        ls = [L for L in Ls if _match(data.jobs(store), {"task": task, "L": L, "command": "run"})]
        for n in _values([r for r in data.jobs(store) if r["task"] == task and r["command"] == "run"], "N"):
            pts = [plot.point(_one_point(data, store, {"task": task, "N": n, "L": L})) for L in ls]
            best = min(p["mean"] for p in pts)
            cells = [("**" + cell(p) + "**") if p["mean"] == best else cell(p) for p in pts]
            hes = []
            for L in ls:
                rows_ = _match(data.jobs(he), {"task": task, "N": n, "L": L, "command": "run"})
                hes.append(f(plot.point(rows_)["mean"]) if rows_ else "-")
            body.append([task, n_text(n)] + cells + [""] * (len(Ls) - len(ls)) + [", ".join(hes)])
    header = ["task", "N"] + [f"L = {L} (torch)" for L in Ls] + [f"L = {', '.join(map(str, Ls))} (He)"]
    return _md(header, body)


def table_diff(data, store, tasks, pairs=((1, 3), (1, 5)), Ns=None, **sel):
    """Depth differences of a store: a row per (task, N), a column per pair (a, b): the mean of L = b minus that
    of L = a with its 95% interval (paired over data seeds where the store has several, else Welch's over the
    repeats of the one seed); negative: the deeper network is better.  sel: further settings of every job."""
    sel = {_key(k): v for k, v in sel.items()}
    body = []
    for task in tasks:
        jobs = _match([r for r in data.jobs(store) if r["task"] == task and r["command"] == "run"], sel)
        for n in Ns or _values(jobs, "N"):
            cells = []
            for a, b in pairs:
                has = {r["L"] for r in jobs if r["N"] == n}
                cells.append(diff_cell(data, store, a, b, {**sel, "task": task, "N": n}) if {a, b} <= has else "")
            if any(cells):          # a point of a sweep still running may have one depth only
                body.append([task, n_text(n)] + cells)
    return _md(["task", "N"] + [f"L = {b} minus L = {a}" for a, b in pairs], body)


def table_scale(data, store, tasks=("2-local", "2-global"), Ls=(1, 3, 5)):
    """Test error against the initial scale: a row per (task, L), a column per scale; '*' where some repeats hit
    the epoch cap, '†' where every repeat diverged; bold: the lowest of a task."""
    jobs = [r for r in data.jobs(store) if r["command"] == "run"]
    scales = _values(jobs, "init-scale")
    body = []
    for task in tasks:
        pts = {(L, s): plot.point(_one_point(data, store, {"task": task, "L": L, "init_scale": s}))
               for L in Ls for s in scales}
        best = min(p["mean"] for p in pts.values())
        for L in Ls:
            row = [f"{task}, L = {L}"]
            for s in scales:
                p = pts[L, s]
                text = f(p["mean"])
                text = f"**{text}**" if p["mean"] == best else text
                if p["diverged"] == p["n_values"]:
                    text += " †"
                elif p["not_converged"]:
                    text += " *"
                row.append(text)
            body.append(row)
    return _md(["ALPHA"] + [f"{s:g}" for s in scales], body)


def table_means(data, store, columns, Ns):
    """Means only: columns is [(header, task, L)], a row per N."""
    body = [[n_text(n)] + [f(plot.point(_one_point(data, store, {"task": task, "L": L, "N": n}))["mean"])
                           for _, task, L in columns] for n in Ns]
    return _md(["N"] + [h for h, _, _ in columns], body)


def table_best_lr(data, store, task, Ls=(1, 3, 5)):
    """Fixed-lr jobs: per N and depth, the lr with the lowest mean, 'mean ± std (lr x)'."""
    jobs = [r for r in data.jobs(store) if r["task"] == task and r["command"] == "run"]
    body = []
    for n in _values(jobs, "N"):
        row = [n_text(n)]
        for L in Ls:
            pts = [(plot.point(_one_point(data, store, {"task": task, "N": n, "L": L, "lr": lr})), lr)
                   for lr in _values([r for r in jobs if r["N"] == n and r["L"] == L], "lr")]
            p, lr = min(pts, key=lambda t: t[0]["mean"])
            row.append(f"{cell(p, notes=False)} (lr {lr:g})")
        body.append(row)
    return _md(["N"] + [f"best L = {L}" for L in Ls], body)


def table_lr(data, store, columns, bold=None):
    """Test error against a fixed lr: columns [(task, L)], a row per lr (rows equal in every cell merged), the NTK
    of each column last; bold: the lowest of each column in ``bold`` (default all)."""
    jobs = [r for r in data.jobs(store) if r["command"] == "run"]
    lrs = _values(jobs, "lr")
    pts = {(lr, c): plot.point(_one_point(data, store, {"task": c[0], "L": c[1], "lr": lr})) for lr in lrs
           for c in columns}
    best = {c: min(pts[lr, c]["mean"] for lr in lrs) for c in (columns if bold is None else bold)}

    def text(p, c):
        if p["diverged"] == p["n_values"]:
            return f"{f(p['mean'])} (diverged)"
        t = cell(p)
        return f"**{t}**" if p["mean"] == best.get(c) else t

    body = []
    for lr in lrs:
        row = [text(pts[lr, c], c) for c in columns]
        if body and body[-1][1:] == row:
            body[-1][0] += f", {lr:g}"
        else:
            body.append([f"{lr:g}"] + row)
    body.append(["NTK"] + [cell(plot.point(_select(data, store, {"task": t, "L": L, "ntk": True})))
                           for t, L in columns])
    return _md(["lr"] + [f"{t} L = {L}" for t, L in columns], body)


def table_width(data, store, Ls=(1, 3)):
    """The width test: a row per depth, a column per H and the NTK."""
    jobs = [r for r in data.jobs(store) if r["command"] == "run"]
    Hs = _values(jobs, "H")
    body = []
    for L in Ls:
        row = [f"L = {L}"]
        for H in Hs:
            rows_ = _match(jobs, {"L": L, "H": H})
            row.append(cell(plot.point(rows_)) if rows_ else "")
        row.append(cell(plot.point(_select(data, store, {"L": L, "ntk": True}))))
        body.append(row)
    return _md([""] + [f"H = {H}" for H in Hs] + ["NTK"], body)


LAZY_ROWS = (("distance network to its lazy prediction", "dist_lin", ".3f"),
             ("distance network to the NTK predictor", "dist_each", None),
             ("test error: networks (mean of 10)", "test_error_net", ".3f"),
             ("test error: their lazy predictions", "test_error_lin", ".3f"),
             ("test error: mean function of the 10 seeds", "test_error_ens", ".3f"),
             ("test error: NTK predictor", "test_error_ntk", ".3f"))


def table_lazy(data, name, task, rows=("dist_lin", "dist_each", "test_error_net", "test_error_lin",
                                       "test_error_ntk")):
    """The lazy-limit measurement of one task: a row per quantity, a column per width; the NTK predictor once.
    A distance above 2 is written with two decimals."""
    table = [r for r in data.table(name) if r["task"] == task]
    Hs = sorted(r["H"] for r in table)
    body = []
    for label, key, spec in LAZY_ROWS:
        if key not in rows:
            continue
        vals = [next(r[key] for r in table if r["H"] == H) for H in Hs]
        if key == "test_error_ntk":
            cells = [f(vals[0])] + [""] * (len(vals) - 1)
        else:
            cells = [f(v, spec or (".2f" if v >= 2 else ".3f")) for v in vals]
        body.append([label] + cells)
    return _md([task, f"H = {Hs[0]}"] + [str(H) for H in Hs[1:]], body)


def table_losses(data, name="losses", tasks=(("2-local", 500), ("2-global", 100)), losses=("xent", "hinge2", "mse")):
    """The best mean test error over the fixed lr grid per task and loss, with the lr (or lrs) that gave it."""
    body = []
    for task, D in tasks:
        row = [f"{task} (D = {D})"]
        for loss in losses:
            rs = [r for r in data.table(name) if r["task"] == task and r["loss"] == loss]
            best = min(f(r["test_error_mean"]) for r in rs)
            lrs = [f"{r['lr']:g}" for r in sorted(rs, key=lambda r: r["lr"]) if f(r["test_error_mean"]) == best]
            row.append(f"{best} (lr {', '.join(lrs)})")
        body.append(row)
    return _md([""] + list(losses), body)


def table_lazy_lr(data, train, ntk):
    """Test error against a fixed lr of one `train` record (mean ± std over its seeds; ranges of epochs to zero
    training error), and the NTK regression of an `ntk` record in the last column."""
    nets = data.record(train)["networks"]
    lrs = sorted({n["lr"] for n in nets})
    errs, epochs = [], []
    for lr in lrs:
        group = [n for n in nets if n["lr"] == lr]
        mean_, std, _ = plot.combined([(n["test_error"], None, 1) for n in group])
        errs.append(f"{f(mean_)} ± {f(std)}")
        epochs.append(span([n["epochs"] for n in group], "d", "-"))
    seeds = len({n["seed"] for n in nets})
    body = [[f"test error, mean ± std over {seeds} seeds"] + errs + [f(data.record(ntk)["test_error"]["mean"])],
            ["epochs to zero training error"] + epochs + [""]]
    return _md(["lr"] + [f"{lr:g}" for lr in lrs] + ["NTK regression"], body)


def table_expressivity(data, store):
    jobs = [r for r in data.jobs(store) if r["command"] == "run"]
    Hs = _values(jobs, "H")
    body = [[n_text(n)] + [cell(plot.point(_one_point(data, store, {"N": n, "H": H}))) for H in Hs]
            for n in _values(jobs, "N")]
    return _md(["N"] + [f"L = 1, H = {H}" for H in Hs], body)


IMPL_NAMES = {"numpy-procs": "NumPy, {processes} processes", "numpy": "NumPy batched", "torch": "PyTorch `bmm`"}


def table_bench(data, name, peers=False):
    """A `fastmlp bench` run: per workload fastmlp-cpu's rate, the best peer's, and the per-round ratios (median and
    quartiles) to the best peer and to the run's large-sgemm rate.  With ``peers``, every peer's rate in a column
    of its own (the workload's shape beside its name, the fastest rate of a row in bold) instead of the best's."""
    lines = data.bench(name)
    impls = [i for i in IMPL_NAMES if any(r.get("impl") == i and "gflops" in r for r in lines)]
    body = []
    for ratio in (r for r in lines if r.get("ratios") == "per round"):
        w = ratio["workload"]
        rows = {r["impl"]: r for r in lines if r.get("workload") == w and "gflops" in r}
        rates = {i: r["gflops"] for i, r in rows.items()}
        ratios = [f"{f(ratio['vs_best_peer'], '.2f')}x ({f(ratio['vs_best_peer_q1'], '.2f')}-"
                  f"{f(ratio['vs_best_peer_q3'], '.2f')})",
                  f"{100 * ratio['of_sgemm']:.0f}% ({100 * ratio['of_sgemm_q1']:.0f}-"
                  f"{100 * ratio['of_sgemm_q3']:.0f})"]
        if not peers:
            body.append([w, f(rates[ratio["impl"]], ".1f"),
                         f"{ratio['best_peer']} {f(rates[ratio['best_peer']], '.1f')}"] + ratios)
            continue
        top = max(rates.values())
        cells = [("-" if i not in rates else f"**{f(rates[i], '.1f')}**" if rates[i] == top else f(rates[i], ".1f"))
                 for i in [ratio["impl"]] + impls]
        shape = rows[ratio["impl"]]
        body.append([f"{w} ({shape['M']}, {shape['D']}, {shape['H']}, {shape['L']})"] + cells + ratios)
    if peers:
        first = {i: next(r for r in lines if r.get("impl") == i and "gflops" in r) for i in impls}
        return _md(["workload (M, D, H, L)", "fastmlp-cpu"] + [IMPL_NAMES[i].format(**first[i]) for i in impls]
                   + ["vs the best peer (quartiles)", "of sgemm (quartiles)"], body)
    return _md(["workload", "fastmlp-cpu GFLOP/s", "best peer GFLOP/s", "vs best peer (quartiles)",
                "of sgemm (quartiles)"], body)


TABLES = {fn.__name__: fn for fn in (table_bench, table_depth, table_jobs, table_init, table_diff, table_scale,
                                     table_means, table_best_lr, table_lr, table_width, table_lazy, table_losses,
                                     table_lazy_lr, table_expressivity)}


# -------------------------------------------------------------------------------------------- rendering
def evaluate(expr, ns):
    try:
        value = eval(expr, {"__builtins__": {}, **ns})   # the documents' own expressions over the namespace
    except ReportError:
        raise
    except Exception as e:
        raise ReportError(f"{expr}: {type(e).__name__}: {e}") from e
    if isinstance(value, bool):
        raise ReportError(f"{expr}: a truth value, not a number or text")
    if isinstance(value, float):
        return f(value)
    return str(value)


def render(text, ns):
    """The document with every marked piece regenerated."""
    def one(match):
        expr, old = match.group(1), match.group(2)
        value = evaluate(expr, ns)
        if old.startswith("\n"):           # a block: the table between blank lines, indented as its marker
            start = text.rfind("\n", 0, match.start()) + 1
            indent = text[start:match.start()]
            indent = indent if not indent.strip() else ""
            lines = [indent + line if line else line for line in value.split("\n")]
            value = "\n\n" + "\n".join(lines) + "\n\n" + indent
        return f"<!--r {expr}-->{value}<!--/r-->"
    return MARK.sub(one, text)


def points_text(data, store):
    """The figure's points of a job table, as `fastmlp plot` writes them beside the figure (NAME.csv)."""
    done = data.jobs(store)
    fig, points = plot.figure(done, FIGURE_X.get(store, "auto"))
    out = io.StringIO()
    plot.write_points(out, points)
    return out.getvalue()


def outputs(root=ROOT):
    """{path relative to root: generated text} of every document and every figure's points file."""
    data = Data(root)
    ns = namespace(data)
    out = {doc: render((Path(root) / doc).read_text(), ns) for doc in DOCUMENTS}
    for store in data.stores():
        if (data.dir / f"{store}.png").exists():
            out[f"{RESULTS}/{store}.csv"] = points_text(data, store)
    return out


def differences(root=ROOT):
    """[(path, unified diff)] of every file whose committed text differs from the generated one."""
    found = []
    for rel, new in outputs(root).items():
        path = Path(root) / rel
        old = path.read_text() if path.exists() else ""
        if old != new:
            found.append((rel, "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                            f"{rel} (committed)", f"{rel} (generated)"))))
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m fastmlp.report", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if any generated text differs")
    ap.add_argument("--figures", action="store_true", help="also redraw every figure from its job table")
    ap.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        found = differences(args.root)
    except ReportError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    if args.check:
        for _, diff in found:
            sys.stdout.write(diff)
        print(f"report: {len(found)} file(s) differ from what fastmlp.report generates"
              + ("; run `python -m fastmlp.report`" if found else ""), file=sys.stderr)
        return 1 if found else 0
    gen = outputs(args.root)
    for rel, _ in found:
        (Path(args.root) / rel).write_text(gen[rel])
        print(f"report: wrote {rel}", file=sys.stderr)
    if args.figures:
        data = Data(args.root)
        for store in data.stores():
            png = data.dir / f"{store}.png"
            if png.exists():
                plot.plot_table(data.dir / f"{store}-jobs.csv", png, FIGURE_X.get(store, "auto"))
                print(f"report: drew {png.relative_to(args.root)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
