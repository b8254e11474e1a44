"""The paper's figures from a result store (see fastmlp.store), drawn with matplotlib off screen.

Three figures, chosen by what the store holds (N or lr) or asked for (init-scale):
  against N    test error against the training-set size: a panel per task, a curve per depth L of the `run` jobs,
               and, where the store has `ntk` jobs of that task, a dashed curve per depth of the NTK
  against lr   test error against a fixed learning rate (`run` jobs with lr set, no search): a panel per (task, N),
               a curve per depth, and the NTK of each depth as a dashed horizontal line (the lr -> 0 limit)
  against init-scale   test error against the initial scale: a panel per (task, N), a curve per depth

A point is the jobs at that x on that curve, one per data seed (seeds are pooled).  Its value is the mean over data
seeds of each seed's mean test error over its repeats; its error bar is the standard deviation (ddof = 1) of those
seed means where the point has two or more data seeds, and otherwise the standard deviation of the one seed's
repeats (initializations and minibatch orders on one training set; an NTK job's repeats are training sets).  The
tables of docs/results.md use the same definition (fastmlp.report calls `point`).  A point whose repeats include
diverged ones (test error 0.5 by the protocol's rule) is also drawn without them, as a cross.  A curve is one depth
and one value of every other setting that varies among the panel's jobs at one x (H, say), so settings are never
mixed at a point; its label names them.  A setting that changes only from one x to another (an epoch cap grown
as the fixed lr shrinks, a search range per N) does not split a curve: the label says it is set per x.  A point
where some repeats hit the epoch cap without reaching zero training error has a hollow marker.  Failed jobs and
null test errors (n_test = 0) are left out and counted.

The figure is drawn from job rows, the table `fastmlp collect` writes (fastmlp.store.flatten), so a committed
``NAME-jobs.csv`` redraws its figure exactly as the store did: `plot_table`.
"""
import csv
import math
from collections import defaultdict

from .errors import UsageError
from .protocol import DIVERGED_ERROR
from .store import RESULT_COLUMNS, Store, flatten, test_error_of

CSV_COLUMNS = ("panel", "curve", "command", "L", "x_name", "x", "mean", "std", "n_values", "n_jobs", "n_seeds",
               "not_converged", "diverged", "mean_without_diverged", "std_without_diverged")
X_CHOICES = ("auto", "N", "lr", "init-scale")
# Keys that never split a curve: the seeds (pooled), and what the panel title already says.  A task's indices or
# temperatures are not in the title, so where they vary on a panel they split its curves; so does a fixed lr
# against a searched one (lr null) in the figure against N.
NOT_CURVE_KEYS = {"N", "seed", "task", "D"}
NOT_CONFIG_KEYS = {"id", "status", "command", "protocol", *RESULT_COLUMNS}


def test_errors(rec):
    """The non-null test errors of a stored job's repeats."""
    return [v for v in test_error_of(rec)["values"] if v is not None]


def config_of(row):
    """The configuration part of a job row (fastmlp.store.flatten): every key but the identity and the results."""
    return {k: v for k, v in row.items() if k not in NOT_CONFIG_KEYS}


def combined(parts):
    """(mean, std, n) of the union of groups given as (mean, std, n) each (std ddof = 1, None for n = 1)."""
    parts = [(m, s, n) for m, s, n in parts if n]
    n = sum(p[2] for p in parts)
    if not n:
        return None, None, 0
    mean = sum(m * k for m, _, k in parts) / n
    ss = sum((k - 1) * (s or 0.0) ** 2 + k * (m - mean) ** 2 for m, s, k in parts)
    return mean, (math.sqrt(max(ss, 0.0) / (n - 1)) if n > 1 else None), n


def without_diverged(mean, std, n, diverged):
    """(mean, std, n) of a job's repeats less its ``diverged`` ones, each of which counted DIVERGED_ERROR."""
    if not diverged:
        return mean, std, n
    k = n - diverged
    if k <= 0:
        return None, None, 0
    total = n * mean - diverged * DIVERGED_ERROR
    ss = (n - 1) * (std or 0.0) ** 2 + n * mean ** 2 - diverged * DIVERGED_ERROR ** 2   # sum of squares
    m = total / k
    return m, (math.sqrt(max(ss - k * m * m, 0.0) / (k - 1)) if k > 1 else None), k


def _stat(per_seed):
    """(mean, error bar, n seeds) of {seed: (mean, std, n)}: the mean of the seed means; their std over two or more
    seeds, else the one seed's std over its repeats."""
    seeds = [v for v in per_seed.values() if v[2]]
    if not seeds:
        return None, None, 0
    means = [m for m, _, _ in seeds]
    mean = sum(means) / len(means)
    if len(means) > 1:
        return mean, math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1)), len(means)
    return mean, seeds[0][1], 1


def point(rows):
    """The statistics of one point from its job rows (module docstring): mean, std (the error bar), n_values,
    n_jobs, n_seeds, not_converged, diverged, and mean and std without the diverged repeats (equal to mean and std
    where none diverged; None where all did)."""
    groups, clean = defaultdict(list), defaultdict(list)
    for r in rows:
        n = r["test_error_n"] or 0
        m, s = r["test_error_mean"], r["test_error_std"]
        groups[r["seed"]].append((m, s, n))
        clean[r["seed"]].append(without_diverged(m, s, n, r["diverged"] or 0) if n else (None, None, 0))
    mean, std, n_seeds = _stat({seed: combined(parts) for seed, parts in groups.items()})
    mean_ok, std_ok, _ = _stat({seed: combined(parts) for seed, parts in clean.items()})
    runs = rows[0]["command"] != "ntk"
    return {"mean": mean, "std": std, "n_values": sum(r["test_error_n"] or 0 for r in rows), "n_jobs": len(rows),
            "n_seeds": n_seeds,
            "not_converged": sum(r["not_converged"] or 0 for r in rows) if runs else None,
            "diverged": sum(r["diverged"] or 0 for r in rows) if runs else None,
            "mean_without_diverged": mean_ok, "std_without_diverged": std_ok}


def varying_keys(rows, x_key):
    """(split, per_x): the configuration keys (other than NOT_CURVE_KEYS, L and the x axis) whose values differ
    among the job rows, sorted.  ``split`` differ at some one x, so they split curves; ``per_x`` differ only from
    one x to another, so a curve may follow them."""
    values, at_point = defaultdict(set), defaultdict(set)
    for row in rows:
        for k, v in config_of(row).items():
            values[k].add(repr(v))
            at_point[k, repr(row[x_key])].add(repr(v))
    varying = sorted(k for k, vs in values.items() if len(vs) > 1 and k not in NOT_CURVE_KEYS | {"L", x_key})
    split = {k for (k, _), vs in at_point.items() if len(vs) > 1}
    return [k for k in varying if k in split], [k for k in varying if k not in split]


def curve_label(command, config, keys, per_x=(), x_key="N"):
    parts = [f"L = {config['L']}"] + [f"{k} = {'searched' if config[k] is None else config[k]}" for k in keys]
    parts += [f"{k} set per {x_key}" for k in per_x]
    return ("NTK " if command == "ntk" else "") + ", ".join(parts)


def _order(value):
    """A sort key that puts numbers in numeric order (H = 8 before H = 16) and anything else after, as text."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def curves(rows, x_key):
    """{curve label: [(x, job rows)]} of one command's job rows on one panel, x ascending; curves ordered by depth,
    then by the values of the settings that split them."""
    keys, per_x = varying_keys(rows, x_key)
    groups = defaultdict(list)
    for row in rows:
        order = (row["L"], *(_order(row[k]) for k in keys), row[x_key])
        groups[(order, curve_label(row["command"], row, keys, per_x, x_key), row[x_key])].append(row)
    out = defaultdict(list)
    for (_, label, x), group in sorted(groups.items(), key=lambda kv: kv[0][0]):
        out[label].append((x, group))
    return out


def panel_title(config, with_n=False):
    title = f"{config['task']} (D = {config['D']})"
    return title + (f", N = {config['N']}" if with_n else "")


def choose_x(runs):
    """'lr' when some (task, N, L, other settings) group of run jobs has more than one fixed lr, else 'N'.  Settings
    that change only with the lr (an epoch cap grown as lr shrinks) do not make groups."""
    fixed = [row for row in runs if row["lr"] is not None]
    _, per_lr = varying_keys(fixed, "lr")
    lrs = defaultdict(set)
    for row in fixed:
        rest = {k: v for k, v in config_of(row).items() if k not in ("lr", "seed", *per_lr)}
        lrs[repr(sorted(rest.items()))].add(row["lr"])
    return "lr" if any(len(v) > 1 for v in lrs.values()) else "N"


# ---------------------------------------------------------------------------------------------- drawing
def _point_row(panel, label, command, L, x_name, x, rows):
    return {"panel": panel, "curve": label, "command": command, "L": L, "x_name": x_name, "x": x, **point(rows)}


def depth_colours(rows):
    """One colour per depth L on a panel, shared by the networks and the NTK of that depth."""
    return {L: f"C{i % 10}" for i, L in enumerate(sorted({r["L"] for r in rows}))}


def _draw_curves(ax, panel, rows, x_name, points, colour):
    """Error-bar curves of the rows' commands on one panel (NTK dashed); appends their points."""
    markers = iter("osD^v<>phH*" * 10)
    for command, style in (("run", "-"), ("ntk", "--")):
        jobs = [r for r in rows if r["command"] == command]
        for label, entries in curves(jobs, x_name).items():
            pts = [_point_row(panel, label, command, group[0]["L"], x_name, x, group) for x, group in entries]
            pts = [p for p in pts if p["n_values"]]
            if not pts:
                continue
            points.extend(pts)
            marker, c = next(markers), colour[pts[0]["L"]]
            ax.errorbar([p["x"] for p in pts], [p["mean"] for p in pts], yerr=[p["std"] or 0.0 for p in pts],
                        linestyle=style, marker=marker, markersize=4, capsize=3, color=c, label=label)
            hollow = [p for p in pts if p["not_converged"]]   # some repeats hit the epoch cap
            if hollow:
                ax.plot([p["x"] for p in hollow], [p["mean"] for p in hollow], linestyle="none",
                        marker=marker, markersize=4, markerfacecolor="white", color=c, zorder=3)
            crossed = [p for p in pts if p["diverged"] and p["mean_without_diverged"] is not None]
            if crossed:                                       # the same point without its diverged repeats
                ax.plot([p["x"] for p in crossed], [p["mean_without_diverged"] for p in crossed], linestyle="none",
                        marker="x", markersize=5, color=c, zorder=3)


def _draw_ntk_lines(ax, panel, rows, points, colour):
    """A dashed horizontal line per NTK curve of the rows (all at one N)."""
    for label, entries in curves(rows, "N").items():
        (_, group), = entries
        row = _point_row(panel, label, "ntk", group[0]["L"], "lr", None, group)
        if not row["n_values"]:
            continue
        points.append(row)
        ax.axhline(row["mean"], linestyle="--", color=colour.get(row["L"], "k"), label=label)


def _log_x(ax, xs, label):
    """A log x axis, labelled at the data's own x values when they are few enough to read."""
    from matplotlib.ticker import NullFormatter
    ax.set_xscale("log")
    xs = sorted(set(xs))
    if len(xs) <= 6:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def _axes(fig, n):
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig.set_size_inches(4.6 * ncols, 3.7 * nrows)
    return [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]


def figure_against_n(fig, rows):
    """Test error against N, a panel per task -> points."""
    panels = defaultdict(list)
    for row in rows:
        panels[panel_title(row)].append(row)
    points = []
    for ax, (title, group) in zip(_axes(fig, len(panels)), sorted(panels.items())):
        _draw_curves(ax, title, group, "N", points, depth_colours(group))
        _log_x(ax, [r["N"] for r in group], "training samples N")
        ax.set(ylabel="test error", title=title)
    return points


def _task_and_n(row):
    return row["task"], row["D"], row["N"]


def _panels_by_task_and_n(rows):
    """{(task, D, N): rows}: the panels of the figures drawn at one N."""
    panels = defaultdict(list)
    for row in rows:
        panels[_task_and_n(row)].append(row)
    return panels


def figure_against_lr(fig, rows):
    """Test error against a fixed lr, a panel per (task, N), the NTK as horizontal lines -> points."""
    panels = _panels_by_task_and_n([r for r in rows if r["command"] == "run" and r["lr"] is not None])
    points = []
    for ax, (key, group) in zip(_axes(fig, len(panels)), sorted(panels.items())):
        title = panel_title(group[0], with_n=True)
        ntk_rows = [r for r in rows if r["command"] == "ntk" and _task_and_n(r) == key]
        colour = depth_colours(group + ntk_rows)
        _draw_curves(ax, title, group, "lr", points, colour)
        _draw_ntk_lines(ax, title, ntk_rows, points, colour)
        _log_x(ax, [r["lr"] for r in group], "learning rate")
        ax.set(ylabel="test error", title=title)
    return points


def figure_against_init_scale(fig, rows):
    """Test error against the initial scale of the run jobs (searched or fixed lr), a panel per (task, N) ->
    points.  The NTK does not depend on the initialization and is not drawn."""
    panels = _panels_by_task_and_n([r for r in rows if r["command"] == "run"])
    points = []
    for ax, (_, group) in zip(_axes(fig, len(panels)), sorted(panels.items())):
        title = panel_title(group[0], with_n=True)
        _draw_curves(ax, title, group, "init-scale", points, depth_colours(group))
        _log_x(ax, [r["init-scale"] for r in group], "initial scale (init-scale)")
        ax.set(ylabel="test error", title=title)
    return points


FIGURES = {"N": figure_against_n, "lr": figure_against_lr, "init-scale": figure_against_init_scale}


def figure(rows, x="auto", n_failed=0, dropped=0):
    """(figure, points) of done job rows, not yet saved."""
    from matplotlib.figure import Figure   # no pyplot: no global state, no interactive backend

    if x not in X_CHOICES:
        raise UsageError(f"x must be one of {', '.join(X_CHOICES)}, not {x!r}")
    runs = [r for r in rows if r["command"] == "run"]
    if x == "auto":
        x = choose_x(runs)
    if x == "lr" and not any(r["lr"] is not None for r in runs):
        raise UsageError("--x lr needs run jobs with a fixed lr (a sweep over lr); these have none")
    fig = Figure(layout="constrained")
    points = FIGURES[x](fig, rows)
    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    notes = [f"{n_failed} failed jobs left out" if n_failed else "",
             f"{dropped} null test errors left out" if dropped else "",
             "hollow markers: some repeats hit the epoch cap" if any(p["not_converged"] for p in points) else "",
             "crosses: without the diverged repeats" if any(p["diverged"] and p["mean_without_diverged"] is not None
                                                            for p in points) else ""]
    if any(notes):
        fig.suptitle("; ".join(n for n in notes if n), fontsize="small")
    return fig, points


def write_points(file, points):
    """The points as CSV (CSV_COLUMNS; missing values empty)."""
    writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS} for row in points)


def _save(fig, points, out):
    from pathlib import Path
    out = Path(out)
    fig.savefig(out, dpi=120)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        write_points(f, points)
    return fig, points


def plot_store(store_dir, out, x="auto"):
    """Draw the figure of a store to ``out`` (any format matplotlib writes, by its suffix) and its points to
    ``out`` with suffix .csv -> (figure, points).  ``x``: "N", "lr", "init-scale" or "auto" (lr when the runs vary a
    fixed lr, else N)."""
    records = Store(store_dir, create=False).records()
    done = [r for r in records if r["status"] == "done"]
    n_failed = len(records) - len(done)
    if not done:
        raise UsageError(f"{store_dir} holds no done jobs to plot ({n_failed} failed); run a sweep into it first")
    if x == "lr" and not any(r["command"] == "run" and r["config"]["lr"] is not None for r in done):
        raise UsageError(f"--x lr needs run jobs with a fixed lr (a sweep over lr); {store_dir} has none")
    dropped = sum(len(test_error_of(r)["values"]) - len(test_errors(r)) for r in done)
    return _save(*figure([flatten(r) for r in done], x, n_failed, dropped), out)


# The columns of a job table that are text even where they read as numbers (a 1-local task's indices "0").
TEXT_COLUMNS = {"id", "indices", "git_commit", "fastmlp", "device", "error"}


def _cell(key, text):
    if text == "":
        return None
    if key in TEXT_COLUMNS:
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_table(path):
    """The job rows of a table `fastmlp collect` wrote (CSV), with numbers as numbers and empty cells None."""
    with open(path, newline="") as f:
        return [{k: _cell(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_table(table_csv, out, x="auto"):
    """Draw the figure of a committed job table (``NAME-jobs.csv``) as `plot_store` draws its store -> (figure,
    points); the null test errors of the store are not in the table and go uncounted."""
    rows = read_table(table_csv)
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        raise UsageError(f"{table_csv} holds no done jobs to plot")
    return _save(*figure(done, x, len(rows) - len(done)), out)
