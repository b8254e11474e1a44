"""Progress on stderr: a one-line bar for an engine call (`train`), and the job-by-job report of a sweep.

Drawn only where it helps: a bar only in a terminal; a sweep in a log writes one line per finished job and, from
inside a long job, a line at most every HEARTBEAT_S seconds.  Nothing here writes to stdout, so --json output
stays one object.
"""
import sys
import time

import click

from .store import test_error_of


def bar(done, total, width=30):
    """[####......] for done out of total."""
    fill = int(width * done / max(total, 1))
    return f"[{'#' * fill}{'.' * (width - fill)}]"


class Progress:
    """A one-line progress bar on stderr, drawn only in a terminal (never with --json)."""

    def __init__(self, label, enabled=True):
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def __call__(self, epoch, n_active, n_total):
        if not self.enabled:
            return
        done = n_total - n_active
        elapsed = time.perf_counter() - self.t0
        click.echo(f"\r{self.label} {bar(done, n_total)} {done}/{n_total} stopped, "
                   f"epoch {epoch}, {elapsed:.0f}s ", err=True, nl=False)

    def note(self, text):
        """A transient message, overwritten by the bar."""
        if self.enabled:
            click.echo(f"\r{self.label}: {text}", err=True, nl=False)

    def close(self):
        if self.enabled:
            click.echo("", err=True)


def duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _outcome(rec):
    """A job record's result in a few words."""
    if rec["status"] == "failed":
        return f"FAILED {rec['error']['type']}: {rec['error']['message']}"
    te = test_error_of(rec)["mean"]
    text = "test error -" if te is None else f"test error {te:.4f}"
    return text + (f" at lr {rec['record']['selected_lr']:.3g}" if rec["command"] == "run" else "")


class SweepProgress:
    """Jobs finished out of the sweep's total, failures, elapsed and remaining time, on stderr: a bar in a
    terminal, otherwise one line per finished job (batch-system logs stay readable).  From inside a running job
    (in process only): its latest phase beside the bar, or in a log a line at most every HEARTBEAT_S seconds, so
    a long job is never silent for long and short ones add nothing."""
    HEARTBEAT_S = 60.0

    def __init__(self, total, done, failed, enabled=True):
        self.total, self.done, self.failed = total, done, failed
        self.finished = 0                       # by this process
        self.enabled = enabled
        self.bar = enabled and sys.stderr.isatty()
        self.t0 = self.last_line = time.perf_counter()

    def job(self, job, text):
        """A progress line from inside a running job."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.bar:
            status = f"{bar(self.done + self.failed, self.total)} {self.done + self.failed}/{self.total}"
            click.echo(f"\r\x1b[Ksweep {status} {job.label}: {text}"[:200], err=True, nl=False)
        elif now - self.last_line >= self.HEARTBEAT_S:
            click.echo(f"sweep:   {job.label} {job.id}: {text}", err=True)
            self.last_line = now

    def __call__(self, rec):
        from .sweep import Job
        self.finished += 1
        if rec["status"] == "done":
            self.done += 1
        else:
            self.failed += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        left = self.total - self.done - self.failed
        eta = f"about {duration(elapsed / self.finished * left)} left" if left else "finished"
        status = f"{self.done + self.failed}/{self.total} jobs, {self.failed} failed, " \
                 f"{duration(elapsed)} elapsed, {eta}"
        label = Job(rec["id"], rec["command"], rec["config"]).label
        if self.bar:
            if rec["status"] == "failed":
                click.echo(f"\r\x1b[K{label}: {_outcome(rec)}", err=True)
            click.echo(f"\r\x1b[Ksweep {bar(self.done + self.failed, self.total)} {status} ", err=True, nl=False)
        else:
            took = "" if rec["elapsed_s"] is None else f" in {rec['elapsed_s']:.1f}s"
            click.echo(f"sweep: {label} {rec['id']}: {_outcome(rec)}{took}; {status}", err=True)
        self.last_line = time.perf_counter()

    def close(self):
        if self.bar:
            click.echo("", err=True)
