"""The --fix pipeline calls downward only: the engine calls the fixer, the fixer never imports the engine, and
the modules of `auditor.fixing` import each other without a cycle (type-checking and function-level imports
count too: a cycle there is still a loop in the design)."""

from __future__ import annotations

import ast
from pathlib import Path

import auditor

PACKAGE = Path(auditor.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every `auditor.*` module a file imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("auditor")}


def _fixing_graph() -> dict[str, set[str]]:
    modules = {f"auditor.fixing.{p.stem}": p for p in (PACKAGE / "fixing").glob("*.py") if p.stem != "__init__"}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_fixing_never_imports_the_engine_or_the_front_ends() -> None:
    for path in (PACKAGE / "fixing").glob("*.py"):
        upward = {m for m in _imports(path) if m.split(".")[:2] in (["auditor", "engine"], ["auditor", "api"], ["auditor", "cli"])}
        assert not upward, f"{path.name} imports {sorted(upward)}"


def test_fixing_modules_import_each_other_without_cycles() -> None:
    graph = _fixing_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            assert state.get(other) != 1, "import cycle: " + " -> ".join([*path, name, other])
            if other not in state:
                visit(other, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert graph["auditor.fixing.context"] >= {"auditor.fixing.plan", "auditor.fixing.workspace"}
