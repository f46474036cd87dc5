"""The boundaries the layout promises: no import circles, and the runtime never imports the workstation side.

Imports are read from the source (every ``import``/``from`` statement, at
module level or inside functions: a lazy import is still a dependency), so a
circle hidden behind a function-level import is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "calib", "bench")


def _modules() -> Dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _imports(path: Path, name: str, mods: Dict[str, Path]) -> Set[str]:
    """Project modules ``name`` imports (``from a.b import c``: ``a.b.c`` if a module, else ``a.b``)."""
    out: Set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in mods)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                if full in mods:
                    out.add(full)
                elif base in mods:
                    out.add(base)
    out.discard(name)
    return out


def _graph() -> Dict[str, Set[str]]:
    mods = _modules()
    return {m: _imports(p, m, mods) for m, p in mods.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    graph = _graph()
    assert len(graph) > 60  # the walk found the project
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_runtime_depends_on_nothing_of_the_workstation_side():
    graph = _graph()
    bad = {m: sorted(d for d in deps if d.split(".")[0] in ("export", "calib", "bench"))
           for m, deps in graph.items() if m.split(".")[0] == "runtime"}
    assert {m: d for m, d in bad.items() if d} == {}


def test_core_depends_on_no_product():
    """runtime.core is the bottom layer: products (sam2, dense), the camera app and the CLIs build on it."""
    graph = _graph()
    bad = {m: sorted(d for d in deps if d.split(".")[:2][-1] in ("sam2", "dense", "camera", "cli"))
           for m, deps in graph.items() if m.startswith("runtime.core")}
    assert {m: d for m, d in bad.items() if d} == {}
