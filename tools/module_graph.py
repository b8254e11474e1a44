"""The import graph of the fastmlp package, read from the code (every `import` and `from ... import`, lazy ones
inside functions included), as layers: each module listed with the fastmlp modules it imports.  A module's layer
is one above the highest of its imports, so every arrow points down the page.

    python tools/module_graph.py            # print the graph
    python tools/module_graph.py --check    # exit 1 unless docs/design.md holds exactly this graph

docs/design.md carries the printed graph between the lines `<!-- module graph -->` and `<!-- end module graph -->`.
"""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fastmlp"
DOC = ROOT / "docs" / "design.md"
BEGIN, END = "<!-- module graph -->", "<!-- end module graph -->"


def module_name(path):
    """fastmlp/gpu/engine.py -> gpu.engine; fastmlp/gpu/__init__.py -> gpu."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "fastmlp"


def imports_of(path, modules):
    """The fastmlp modules that a file imports (names as in `module_name`)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
            elif node.module and node.module.split(".")[0] == "fastmlp":
                base, node_module = [], node.module.split(".", 1)[1] if "." in node.module else ""
                target = node_module.split(".") if node_module else []
                candidates = [".".join(target + [a.name]) for a in node.names] + [".".join(target)]
                found.update(c for c in candidates if c in modules)
                continue
            else:
                continue
            target = base + (node.module.split(".") if node.module else [])
            candidates = [".".join(target + [a.name]) for a in node.names] + [".".join(target)]
            found.update(c for c in candidates if c in modules)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "fastmlp":
                    name = a.name.split(".", 1)[1] if "." in a.name else ""
                    if name in modules:
                        found.add(name)
    found.discard(module_name(path))
    return found


def graph():
    """{module: set of fastmlp modules it imports}; a package's __init__ imports its own submodules."""
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(files)
    return {m: imports_of(p, modules) for m, p in files.items()}


def layers(g):
    """Modules by layer (0: imports nothing of fastmlp); raises ValueError on a cycle."""
    level, visiting = {}, set()

    def depth(m):
        if m in level:
            return level[m]
        if m in visiting:
            raise ValueError(f"import cycle through {m}")
        visiting.add(m)
        level[m] = 1 + max((depth(d) for d in g[m]), default=-1)
        visiting.discard(m)
        return level[m]

    for m in g:
        depth(m)
    out = {}
    for m, lv in level.items():
        out.setdefault(lv, []).append(m)
    return [sorted(out[lv]) for lv in sorted(out)]


def text(g):
    lines = []
    for lv, mods in enumerate(layers(g)):
        for m in mods:
            deps = sorted(g[m])
            lines.append(f"{lv:>2}  {m:<13} -> {', '.join(deps) if deps else '(nothing of fastmlp)'}")
    return "\n".join(lines)


def documented():
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        return None
    block = doc.split(BEGIN, 1)[1].split(END, 1)[0]
    return block.strip("\n").strip("`").strip("\n")


if __name__ == "__main__":
    drawn = text(graph())
    if "--check" in sys.argv:
        if documented() != drawn:
            print(f"{DOC.relative_to(ROOT)}: the module graph is not the code's; paste the output of "
                  f"`python tools/module_graph.py` between {BEGIN} and {END}", file=sys.stderr)
            sys.exit(1)
    else:
        print(drawn)
