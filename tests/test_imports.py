"""Imports inside the package run one way: no module of toolkit/edgecxr imports, directly or through
others, a module that imports it back.

A circle works until someone moves an import to module level and Python hands one side a half-built
module; it also means the two modules cannot be understood (or tested) apart. The graph is read from
the source with ``ast`` (nothing is imported), and counts every import: module level, inside
functions and under ``if TYPE_CHECKING`` (a type a module needs is a dependency too).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit" / "edgecxr"
INIT = "__init__"


def _target(module: str | None, level: int, names: list[str], modules: set[str]) -> set[str]:
    """The package modules one import statement names (``from . import data`` names ``data``)."""
    if level == 0:  # absolute: edgecxr.x or edgecxr
        if module is None or not (module == "edgecxr" or module.startswith("edgecxr.")):
            return set()
        parts = module.split(".")[1:]
    elif level == 1:
        parts = module.split(".") if module else []
    else:  # relative beyond the package
        return set()
    if parts:
        return {parts[0]} if parts[0] in modules else set()
    return {n if n in modules else INIT for n in names}  # from . import data, DEFAULT_MAX_DROP


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}`` for every ``*.py`` in ``package``."""
    modules = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                deps |= _target(node.module, node.level, [a.name for a in node.names], modules)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    deps |= _target(alias.name, 0, [], modules)
        deps.discard(path.stem)
        graph[path.stem] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The parser counts module-level, function-level, TYPE_CHECKING, relative and absolute imports."""
    pkg = tmp_path / "edgecxr"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "a.py").write_text("from . import X\nfrom .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from edgecxr.c import g\n    import edgecxr.a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    graph = import_graph(pkg)
    assert graph == {"__init__": set(), "a": {"__init__", "b"}, "b": {"a", "c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_imports_have_no_cycle():
    graph = import_graph()
    assert {"export", "export_options", "selective", "runtime", "cli"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import circle in toolkit/edgecxr: " + " -> ".join(cycle)
