"""lib's modules import each other without a cycle (imports inside functions included)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter

from lib.runtime import REPO_ROOT


def lib_imports() -> dict[str, set[str]]:
    """Each module of lib (dotted name) and the lib modules it imports anywhere in its source."""
    files = {
        ".".join(f.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): f
        for f in (REPO_ROOT / "lib").rglob("*.py")
    }
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in files and m not in (name, "lib")}
    return graph


def test_lib_has_no_import_cycle():
    try:
        tuple(TopologicalSorter(lib_imports()).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_the_check_sees_a_cycle():
    graph = lib_imports()
    assert "lib.params" in graph["lib.pipeline"]  # the graph holds real edges
    graph["lib.params"] = graph["lib.params"] | {"lib.pipeline"}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError:
        return
    raise AssertionError("a cycle went unseen")
