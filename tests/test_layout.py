"""The house rules of the layout, checked on the source: imports flow one way, rooms stay small.

The import graph is built with ``ast`` from every module under orchestrator/,
function-level imports included and ``if TYPE_CHECKING:`` blocks excluded.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "orchestrator"
MAX_LINES = 500
# What each room may import from the others (besides itself). errors, types and sse are leaves.
LEAVES = {"errors", "types", "sse"}
CLIENT_ROOMS = {"client"} | LEAVES


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[str]:
    """Every module an import statement names, anywhere in the tree but under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (name for child in node.orelse for name in _imports(child))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in MODULES else node.module
        yield from _imports(node)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of this package it imports."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        found = set(_imports(ast.parse(path.read_text(), str(path))))
        graph[name] = {m for m in found if m in MODULES and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def room(module: str) -> str:
    """orchestrator.control.jobs -> control; orchestrator.errors -> errors."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_function_level_imports_but_not_type_checking() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import orchestrator.cli\n"
    source += "def f():\n    from orchestrator.control import launch\n"
    assert set(_imports(ast.parse(source))) == {"typing", "orchestrator.control.launch"}


def test_no_import_cycle_between_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_rooms() -> None:
    rooms: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        if room(module) == "__init__":
            continue  # the public API imports (lazily) from every room, and no room imports it
        rooms.setdefault(room(module), set()).update(room(t) for t in targets if room(t) != room(module))
    cycle = find_cycle(rooms)
    assert cycle is None, "rooms import each other: " + " -> ".join(cycle or [])
    assert all("__init__" not in targets for targets in rooms.values()), "a room imports the root package"


def test_client_imports_no_server_room() -> None:
    for module, targets in import_graph().items():
        if room(module) == "client":
            assert {room(t) for t in targets} <= CLIENT_ROOMS, (module, targets)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_core_never_imports_the_shipped_pools_or_the_test_kit(name: str) -> None:
    found = set(_imports(ast.parse(MODULES[name].read_text())))
    assert not {m for m in found if m.split(".")[0] in ("workers", "tests")}, name


def test_modules_are_small_and_say_what_they_are_for() -> None:
    for name, path in MODULES.items():
        assert len(path.read_text().splitlines()) <= MAX_LINES, f"{name} is over {MAX_LINES} lines"
        assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no docstring"


def test_default_pools_hold_no_test_kit() -> None:
    text = (ROOT / "pools.yaml").read_text()
    assert "tests.kit" not in text and "workers.testing" not in text
