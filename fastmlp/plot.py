"""The paper's figures from a result store (see fastmlp.store), drawn with matplotlib off screen.

Three figures, chosen by what the store holds (N or lr) or asked for (init-scale):
  against N    test error against the training-set size: a panel per task, a curve per depth L of the `run` jobs,
               and, where the store has `ntk` jobs of that task, a dashed curve per depth of the NTK
  against lr   test error against a fixed learning rate (`run` jobs with lr set, no search): a panel per (task, N),
               a curve per depth, and the NTK of each depth as a dashed horizontal line (the lr -> 0 limit)
  against init-scale   test error against the initial scale: a panel per (task, N), a curve per depth

A point pools the test errors of every repeat of every job at that x on that curve (seeds included): its value is
their mean and its error bar their standard deviation (ddof = 1; none for a single value).  A curve is one depth
and one value of every other setting that varies among the panel's jobs at one x (H, say), so settings are never
mixed at a point; its label names them.  A setting that changes only from one x to another (an epoch cap grown
as the fixed lr shrinks, a search range per N) does not split a curve: the label says it is set per x.  A point
where some repeats hit the epoch cap without reaching zero training error has a hollow marker.  Failed jobs and
null test errors (n_test = 0) are left out and counted.
"""
import csv
import math
from collections import defaultdict

from .store import Store, test_error_of
from .errors import UsageError

CSV_COLUMNS = ("panel", "curve", "command", "L", "x_name", "x", "mean", "std", "n_values", "n_jobs",
               "not_converged")
X_CHOICES = ("auto", "N", "lr", "init-scale")
# Keys that never split a curve: the seeds (pooled), and what the panel title already says.  A task's indices or
# temperatures are not in the title, so where they vary on a panel they split its curves; so does a fixed lr
# against a searched one (lr null) in the figure against N.
NOT_CURVE_KEYS = {"N", "seed", "task", "D"}


def test_errors(rec):
    """The non-null test errors of a stored job's repeats."""
    return [v for v in test_error_of(rec)["values"] if v is not None]


def pooled(values):
    """(mean, std, n) of a list of test errors; std None for fewer than two."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std, n


def varying_keys(records, x_key):
    """(split, per_x): the configuration keys (other than NOT_CURVE_KEYS, L and the x axis) whose values differ
    among the records, sorted.  ``split`` differ at some one x, so they split curves; ``per_x`` differ only from
    one x to another, so a curve may follow them."""
    values, at_point = defaultdict(set), defaultdict(set)
    for rec in records:
        c = rec["config"]
        for k, v in c.items():
            values[k].add(repr(v))
            at_point[k, repr(c[x_key])].add(repr(v))
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


def curves(records, x_key):
    """{curve label: [(x, pooled values, jobs)]} of one command's records on one panel, x ascending; curves ordered
    by depth, then by the values of the settings that split them."""
    keys, per_x = varying_keys(records, x_key)
    groups = defaultdict(list)
    for rec in records:
        c = rec["config"]
        order = (c["L"], *(_order(c[k]) for k in keys), c[x_key])
        groups[(order, curve_label(rec["command"], c, keys, per_x, x_key), c[x_key])].append(rec)
    out = defaultdict(list)
    for (_, label, x), recs in sorted(groups.items(), key=lambda kv: kv[0][0]):
        out[label].append((x, [v for rec in recs for v in test_errors(rec)], recs))
    return out


def panel_title(config, with_n=False):
    title = f"{config['task']} (D = {config['D']})"
    return title + (f", N = {config['N']}" if with_n else "")


def choose_x(runs):
    """'lr' when some (task, N, L, other settings) group of run jobs has more than one fixed lr, else 'N'.  Settings
    that change only with the lr (an epoch cap grown as lr shrinks) do not make groups."""
    fixed = [rec for rec in runs if rec["config"]["lr"] is not None]
    _, per_lr = varying_keys(fixed, "lr")
    lrs = defaultdict(set)
    for rec in fixed:
        rest = {k: v for k, v in rec["config"].items() if k not in ("lr", "seed", *per_lr)}
        lrs[repr(sorted(rest.items()))].add(rec["config"]["lr"])
    return "lr" if any(len(v) > 1 for v in lrs.values()) else "N"


# ---------------------------------------------------------------------------------------------- drawing
def _point_row(panel, label, command, L, x_name, x, values, recs):
    mean, std, n = pooled(values) if values else (None, None, 0)
    not_converged = sum(r["record"]["final"]["not_converged"] for r in recs) if command == "run" else None
    return {"panel": panel, "curve": label, "command": command, "L": L, "x_name": x_name, "x": x, "mean": mean,
            "std": std, "n_values": n, "n_jobs": len(recs), "not_converged": not_converged}


def depth_colours(records):
    """One colour per depth L on a panel, shared by the networks and the NTK of that depth."""
    return {L: f"C{i % 10}" for i, L in enumerate(sorted({r["config"]["L"] for r in records}))}


def _draw_curves(ax, panel, records, x_name, points, colour):
    """Error-bar curves of the records' commands on one panel (NTK dashed); appends their points."""
    markers = iter("osD^v<>phH*" * 10)
    for command, style in (("run", "-"), ("ntk", "--")):
        recs = [r for r in records if r["command"] == command]
        for label, entries in curves(recs, x_name).items():
            rows = [_point_row(panel, label, command, r[0]["config"]["L"], x_name, x, values, r)
                    for x, values, r in entries]
            rows = [row for row in rows if row["n_values"]]
            if not rows:
                continue
            points.extend(rows)
            marker, c = next(markers), colour[rows[0]["L"]]
            ax.errorbar([row["x"] for row in rows], [row["mean"] for row in rows],
                        yerr=[row["std"] or 0.0 for row in rows], linestyle=style, marker=marker, markersize=4,
                        capsize=3, color=c, label=label)
            hollow = [row for row in rows if row["not_converged"]]   # some repeats hit the epoch cap
            if hollow:
                ax.plot([row["x"] for row in hollow], [row["mean"] for row in hollow], linestyle="none",
                        marker=marker, markersize=4, markerfacecolor="white", color=c, zorder=3)


def _draw_ntk_lines(ax, panel, records, points, colour):
    """A dashed horizontal line per NTK curve of the records (all at one N)."""
    for label, entries in curves(records, "N").items():
        (_, values, recs), = entries
        if not values:
            continue
        row = _point_row(panel, label, "ntk", recs[0]["config"]["L"], "lr", None, values, recs)
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


def figure_against_n(fig, records):
    """Test error against N, a panel per task -> points."""
    panels = defaultdict(list)
    for rec in records:
        panels[panel_title(rec["config"])].append(rec)
    points = []
    for ax, (title, recs) in zip(_axes(fig, len(panels)), sorted(panels.items())):
        _draw_curves(ax, title, recs, "N", points, depth_colours(recs))
        _log_x(ax, [r["config"]["N"] for r in recs], "training samples N")
        ax.set(ylabel="test error", title=title)
    return points


def _task_and_n(rec):
    c = rec["config"]
    return c["task"], c["D"], c["N"]


def _panels_by_task_and_n(records):
    """{(task, D, N): records}: the panels of the figures drawn at one N."""
    panels = defaultdict(list)
    for rec in records:
        panels[_task_and_n(rec)].append(rec)
    return panels


def figure_against_lr(fig, records):
    """Test error against a fixed lr, a panel per (task, N), the NTK as horizontal lines -> points."""
    panels = _panels_by_task_and_n([r for r in records if r["command"] == "run" and r["config"]["lr"] is not None])
    points = []
    for ax, (key, recs) in zip(_axes(fig, len(panels)), sorted(panels.items())):
        title = panel_title(recs[0]["config"], with_n=True)
        ntk_recs = [r for r in records if r["command"] == "ntk" and _task_and_n(r) == key]
        colour = depth_colours(recs + ntk_recs)
        _draw_curves(ax, title, recs, "lr", points, colour)
        _draw_ntk_lines(ax, title, ntk_recs, points, colour)
        _log_x(ax, [r["config"]["lr"] for r in recs], "learning rate")
        ax.set(ylabel="test error", title=title)
    return points


def figure_against_init_scale(fig, records):
    """Test error against the initial scale of the run jobs (searched or fixed lr), a panel per (task, N) ->
    points.  The NTK does not depend on the initialization and is not drawn."""
    panels = _panels_by_task_and_n([r for r in records if r["command"] == "run"])
    points = []
    for ax, (_, recs) in zip(_axes(fig, len(panels)), sorted(panels.items())):
        title = panel_title(recs[0]["config"], with_n=True)
        _draw_curves(ax, title, recs, "init-scale", points, depth_colours(recs))
        _log_x(ax, [r["config"]["init-scale"] for r in recs], "initial scale (init-scale)")
        ax.set(ylabel="test error", title=title)
    return points


FIGURES = {"N": figure_against_n, "lr": figure_against_lr, "init-scale": figure_against_init_scale}


def plot_store(store_dir, out, x="auto"):
    """Draw the figure of a store to ``out`` (any format matplotlib writes, by its suffix) and its points to
    ``out`` with suffix .csv -> (figure, points).  ``x``: "N", "lr", "init-scale" or "auto" (lr when the runs vary a
    fixed lr, else N)."""
    from pathlib import Path

    from matplotlib.figure import Figure   # no pyplot: no global state, no interactive backend

    if x not in X_CHOICES:
        raise UsageError(f"x must be one of {', '.join(X_CHOICES)}, not {x!r}")
    records = Store(store_dir, create=False).records()
    done = [r for r in records if r["status"] == "done"]
    n_failed = len(records) - len(done)
    if not done:
        raise UsageError(f"{store_dir} holds no done jobs to plot ({n_failed} failed); run a sweep into it first")
    runs = [r for r in done if r["command"] == "run"]
    if x == "auto":
        x = choose_x(runs)
    if x == "lr" and not any(r["config"]["lr"] is not None for r in runs):
        raise UsageError(f"--x lr needs run jobs with a fixed lr (a sweep over lr); {store_dir} has none")
    fig = Figure(layout="constrained")
    points = FIGURES[x](fig, done)
    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    dropped = sum(len(test_error_of(r)["values"]) - len(test_errors(r)) for r in done)
    notes = [f"{n_failed} failed jobs left out" if n_failed else "",
             f"{dropped} null test errors left out" if dropped else "",
             "hollow markers: some repeats hit the epoch cap" if any(p["not_converged"] for p in points) else ""]
    if any(notes):
        fig.suptitle("; ".join(n for n in notes if n), fontsize="small")
    out = Path(out)
    fig.savefig(out, dpi=120)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS} for row in points)
    return fig, points
