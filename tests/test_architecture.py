"""The import graph, read from the code: arrows point down only, the engines never see each other, and nothing
above the engines imports a backend but `backend`; docs/design.md draws the graph as it is."""
import subprocess
import sys
from pathlib import Path

import pytest

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
