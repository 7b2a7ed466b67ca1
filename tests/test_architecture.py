"""The layout's rules, read from the source: no import cycles, a Qt-free core, no private imports across modules.

Read with ``ast`` (nothing is imported), so the test takes a fraction of a second and names the module and line
that broke a rule. See docs/architecture.md for the folders and why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "napari_samatch"

# A part that holds its owner: the Controller (or the Cohort dock) builds these with ``self`` and they name its
# type for the reader.
# Type-only (under TYPE_CHECKING), so nothing runs in a circle; every other cycle fails the test.
OWNER_BACK_REFERENCES = {
    ("napari_samatch._widgets._review", "napari_samatch._widgets._controller"),
    ("napari_samatch._widgets._sessions", "napari_samatch._widgets._controller"),
    ("napari_samatch._widgets._cohort_review", "napari_samatch._widgets._cohort_widget"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> list[tuple[str, list[str], int, bool]]:
    """(absolute module, imported names, line, type-only) for every import in a module, wherever it is."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, [], node.lineno, id(node) in typing_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [a.name for a in node.names], node.lineno, id(node) in typing_only))
    return found


def _graph() -> dict[str, dict[str, bool]]:
    """module -> {module it imports: True when only under TYPE_CHECKING}."""
    graph: dict[str, dict[str, bool]] = {}
    for name in MODULES:
        edges: dict[str, bool] = {}
        for module, names, _, typing in _imports(name):
            targets = [f"{module}.{n}" if f"{module}.{n}" in MODULES else module for n in names] or [module]
            for target in targets:
                while target and target not in MODULES:
                    target = target.rpartition(".")[0]
                # importing a submodule runs its package's __init__, which is not a dependency on oneself
                if target and target != name and not name.startswith(target + "."):
                    edges[target] = edges.get(target, True) and typing
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_is_read():
    assert "napari_samatch.core.engine.engine" in MODULES and len(MODULES) > 40


def test_no_import_cycles_at_run_time():
    graph = {m: {t for t, typing in edges.items() if not typing} for m, edges in _graph().items()}
    assert _cycles(graph) == []


def test_no_import_cycles_even_for_type_hints_but_the_owner_back_references():
    graph = {m: {t for t in edges if (m, t) not in OWNER_BACK_REFERENCES} for m, edges in _graph().items()}
    assert _cycles(graph) == []
    for module, target in OWNER_BACK_REFERENCES:  # and those stay type-only
        assert _graph()[module].get(target) is True, f"{module} imports {target} at run time"


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith("napari_samatch.core")])
def test_the_core_imports_neither_napari_nor_qt(name):
    banned = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")
    for module, _, line, _ in _imports(name):
        assert module.split(".")[0] not in banned, f"{MODULES[name]}:{line} imports {module}"


def test_no_private_name_is_imported_from_another_module():
    for name in MODULES:
        for module, names, line, _ in _imports(name):
            if module.startswith("napari_samatch"):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                assert not private, f"{MODULES[name]}:{line} imports {private} from {module}"


# The core's folders in the order they may import each other: a part uses only what is above it.
LAYERS = {"errors": 0, "config": 0, "device": 0, "checkpoint": 0,  # the foundations every folder may use
          "data": 1, "prior": 1, "match": 2, "evaluation": 3, "sam": 4, "engine": 5}


def test_the_core_folders_are_layers():
    def layer(module: str) -> int:
        return LAYERS[module.split(".")[2]]

    core = [m for m in MODULES if m.count(".") >= 2 and m.startswith("napari_samatch.core.")]
    assert {m.split(".")[2] for m in core} == set(LAYERS), "a new folder or module in core/: give it a layer"
    for name in core:
        for target in _graph()[name]:
            if target.startswith("napari_samatch.core."):
                assert layer(target) <= layer(name), f"{name} (layer {layer(name)}) imports {target}"
