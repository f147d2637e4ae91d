"""The layering of archlab's modules: the graph of imports between them has no cycle (README "Layers").

Every ``import`` of an archlab module counts as an edge: at module level, inside functions, and under
``if TYPE_CHECKING:`` too, so a type hint cannot point upward either. Importing ``a.b.c`` also runs the
``__init__`` of ``a.b``, so that package is an edge of the importer as well, unless it is one of the
importer's own parent packages (those are already being imported when the importer runs). An explicit
``from a.b import name`` of a name defined in ``a/b/__init__.py`` is always an edge to ``a.b``.
Modules imported by a computed name (``importlib.import_module(variable)``) are not seen.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Edge:
    line: int
    where: str  # "module", "function" or "TYPE_CHECKING"


Graph = dict[str, dict[str, Edge]]


def modules_of(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``package`` under ``root``."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_pkg: bool, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(module, explicit) pairs one import statement loads; implicit = a parent package run on the way."""
    if isinstance(node, ast.Import):
        explicit = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importer's package, one level up per extra dot
            package = name.split(".") if is_pkg else name.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
        names_from_base = len(subs) < len(node.names)
        explicit = subs + ([base] if names_from_base else [])
    pairs = []
    for target in explicit:
        pairs.append((target, True))
        parts = target.split(".")
        pairs += [(".".join(parts[:i]), False) for i in range(1, len(parts))]
    return pairs


def import_graph(root: Path, package: str = "archlab") -> Graph:
    """module -> {imported module: Edge} over the modules of ``package``."""
    modules = modules_of(root, package)
    graph: Graph = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        edges: dict[str, Edge] = {}

        def visit(node: ast.AST, where: str) -> None:
            for child in ast.iter_child_nodes(node):
                inner = where
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and where == "module":
                    inner = "function"
                if isinstance(child, ast.If) and _is_type_checking(child.test):
                    inner = "TYPE_CHECKING"
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target, explicit in _targets(child, name, is_pkg, modules):
                        parent_of_importer = name.startswith(target + ".")
                        if target in modules and target != name and (explicit or not parent_of_importer):
                            edges.setdefault(target, Edge(child.lineno, inner))
                visit(child, inner)

        visit(ast.parse(path.read_text(), str(path)), "module")
        graph[name] = edges
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle [a, b, ..., a] of the graph, or None (depth-first search, back edges)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path, iters = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, {}))))
    return None


def describe(graph: Graph, cycle: list[str]) -> str:
    return " -> ".join([cycle[0]] + [f"{b} (line {graph[a][b].line}, {graph[a][b].where})" for a, b in zip(cycle, cycle[1:])])


def test_archlab_imports_have_no_cycle():
    graph = import_graph(ROOT)
    assert len(graph) > 50 and "archlab.cli" in graph and graph["archlab.config"]  # it really read the package
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle (an upward import): {describe(graph, cycle)}"


def test_find_cycle_reports_a_back_edge():
    layered = {"top": {"mid": Edge(1, "module")}, "mid": {"low": Edge(1, "module")}, "low": {}}
    assert find_cycle(layered) is None
    layered["low"]["top"] = Edge(7, "function")
    assert find_cycle(layered) == ["low", "top", "mid", "low"]
    assert describe(layered, ["top", "mid", "low", "top"]).endswith("top (line 7, function)")


def write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_import_graph_sees_what_python_runs(tmp_path):
    """A back edge through a parent package's __init__ (the shape of the old circle: ``config`` imports a registry
    module whose package __init__ imports the implementations, which import ``config``) is a cycle; a function-level
    or TYPE_CHECKING upward import too; an __init__ importing its own submodules is not. Python agrees on the first."""
    write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/config.py": "from pkg.parts.base import REGISTRY\n",
        "pkg/parts/__init__.py": "from pkg.parts import base, impl\n",
        "pkg/parts/base.py": "REGISTRY = {}\n",
        "pkg/parts/impl.py": "from pkg.parts.base import REGISTRY\nfrom pkg.config import REGISTRY as R\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert find_cycle(graph) == ["pkg.config", "pkg.parts", "pkg.parts.impl", "pkg.config"]
    run = subprocess.run([sys.executable, "-c", "import pkg.config"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode != 0 and "circular import" in run.stderr

    (tmp_path / "pkg/config.py").write_text("REGISTRY = {}\n")  # the registry moved below config: layered
    (tmp_path / "pkg/parts/base.py").write_text("from pkg.config import REGISTRY\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None
    assert subprocess.run([sys.executable, "-c", "import pkg.config, pkg.parts"], cwd=tmp_path).returncode == 0

    for upward in ("def f():\n    from pkg.parts import impl\n", "if TYPE_CHECKING:\n    from pkg.parts.impl import R\n"):
        (tmp_path / "pkg/config.py").write_text("from typing import TYPE_CHECKING\nREGISTRY = {}\n" + upward)
        cycle = find_cycle(import_graph(tmp_path, "pkg"))
        assert cycle is not None and cycle[0] == cycle[-1] and "pkg.config" in cycle
