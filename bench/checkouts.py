"""Commits of this repository checked out side by side, for the scripts that compare them (bench_commits.py,
kernel_asm.py, compile_time.py): each commit in a temporary git worktree, removed again on the way out."""
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def short(commit):
    """The commit's abbreviated hash."""
    return subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


@contextlib.contextmanager
def checkouts(*commits):
    """Yield one source directory per commit: a temporary worktree, or the working tree itself for None."""
    with tempfile.TemporaryDirectory() as tmp:
        made = []
        try:
            paths = []
            for i, commit in enumerate(commits):
                if commit is None:
                    paths.append(ROOT)
                    continue
                path = Path(tmp) / f"commit-{i}"
                subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True,
                               capture_output=True)
                made.append(path)
                paths.append(path)
            yield paths
        finally:
            for path in made:
                subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)


def worker_json(script, src, args=(), env=None):
    """Run ``script --worker *args`` in a fresh interpreter on the source directory src (its fastmlp first on the
    path, `env` added to the environment) and return its last line of output, parsed as JSON; exit with its stderr
    if it fails."""
    env = os.environ | {"PYTHONPATH": str(src)} | (env or {})
    out = subprocess.run([sys.executable, str(script), "--worker", *args], cwd=src, env=env, capture_output=True,
                         text=True)
    if out.returncode:
        sys.exit(f"{Path(script).stem}: the worker in {src} failed:\n{out.stderr}")
    return json.loads(out.stdout.splitlines()[-1])
