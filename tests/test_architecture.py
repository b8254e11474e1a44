"""The import graph, read from the code: arrows point down only, the engines never see each other, and nothing
above the engines imports a backend but `backend`; docs/design.md draws the graph as it is.  And no tracked file
names a path of the machine it was made on."""
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fastmlp import provenance

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import module_graph  # noqa: E402


@pytest.fixture(scope="module")
def graph():
    return module_graph.graph()


def closure(g, module):
    """Every module that importing `module` may import, directly or not."""
    seen, todo = set(), [module]
    while todo:
        for dep in g[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_no_cycles(graph):
    assert sum(len(layer) for layer in module_graph.layers(graph)) == len(graph)   # raises on a cycle


def test_a_cycle_is_found(graph):
    bad = dict(graph) | {"errors": graph["errors"] | {"cli"}}
    with pytest.raises(ValueError, match="cycle"):
        module_graph.layers(bad)


def test_the_engines_do_not_import_each_other(graph):
    gpu_side = {m for m in graph if m == "gpu" or m.startswith("gpu.")}
    assert not closure(graph, "cpu_engine") & (gpu_side | {"backend"})
    for m in gpu_side:
        assert not closure(graph, m) & {"cpu_engine", "cpu", "backend"}, m


@pytest.mark.parametrize("module", ["protocol", "ntk", "train", "sweep", "store", "plot", "bench", "progress", "cli"])
def test_nothing_above_the_engines_names_a_backend_but_backend(graph, module):
    direct = graph[module]
    assert not {d for d in direct if d in ("cpu_engine", "cpu", "gpu") or d.startswith("gpu.")}, direct


def test_the_design_document_draws_the_graph_of_the_code():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "module_graph.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------- machine paths
# Where a checkout or a home happens to live on the machine that runs the test: none of it belongs in the project (a
# committed record's argv was the first place one crept in).  Read from the machine itself, not written down here:
# the directory holding this checkout and the home directory (an interpreter under either is covered with them),
# and any user's home in the usual layouts.  The temporary directory is everywhere, so it is left out.
def _machine_path_pattern():
    tmp = Path(tempfile.gettempdir()).resolve()
    places = {ROOT.resolve().parent, Path.home().resolve()}
    places = [p for p in places if len(p.parts) > 1 and p != tmp and tmp not in p.parents]
    homes = ["/home/[A-Za-z]", "/Users/[A-Za-z]"]
    return re.compile("|".join([re.escape(str(p) + "/") for p in sorted(places)] + homes))


MACHINE_PATH = _machine_path_pattern()


def test_no_tracked_file_names_a_path_of_this_machine():
    root = ROOT
    if not (root / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the tracked files are not known")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.split(b"\0")
    found = []
    for name in filter(None, files):
        path = root / name.decode()
        if path.suffix in (".png", ".npz") or not path.is_file() or path == Path(__file__).resolve():
            continue                                   # pictures, and this file, whose pattern names the paths
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{name.decode()}:{i}: {MACHINE_PATH.search(line).group(0)}")
    assert not found, "machine paths in tracked files:\n" + "\n".join(found[:20])


@pytest.mark.parametrize("argv, recorded", [
    (["/somewhere/venv/bin/fastmlp", "run", "1-local"], ["fastmlp", "run", "1-local"]),
    (["/a/checkout/fastmlp/cli.py", "ntk", "2-local"], ["fastmlp", "ntk", "2-local"]),
    (["/a/checkout/examples/lazy_limit.py", "--f0", "subtract"], ["lazy_limit.py", "--f0", "subtract"]),
])
def test_a_records_argv_names_the_program_not_where_it_was_run_from(argv, recorded):
    assert provenance.command_argv(argv) == recorded
