"""hf_pcoh's modules import one way, with no circle: entry points -> the job (pipeline) -> training (trainer) -> the
setup -> the pieces (losses, data, features, ...); docs/architecture.md draws the tree in that order.

The graph is read from the source with ``ast``: every import, at module level or inside a function (an import
that runs only when called is still a dependency of that module), relative imports resolved; only imports under
``if TYPE_CHECKING:`` are left out, as they never run (a type named in an annotation). An edge goes to
the module named and, as Python runs it, to every package ``__init__`` on the way there (``from ..evaluation.report
import x`` runs ``hf_pcoh/evaluation/__init__.py`` first, and with it everything that ``__init__`` re-exports),
except the packages the importing module already lives in (they are initialised before it).

The package root ``hf_pcoh/__init__.py`` is left out as an aggregator: it re-exports the public API from every
layer (config, losses, trainer, pipeline...), so a module that reads ``__version__`` from it (``from .. import
__version__``) would otherwise close a circle through the whole package. Those reads are safe, as the root sets
``__version__`` before any re-export; a circle among the modules it re-exports is still caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "hf_pcoh"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_names(path: Path, name: str) -> set[str]:
    """Every ``hf_pcoh`` module ``path`` imports (the module ``name``): ``import a.b``, ``from a import b`` (b a
    module or a name), relative or absolute, at any depth of the file."""
    package = name if is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in walk_run_time(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)  # kept below only when a module
    return {target for target in found if target == PACKAGE or target.startswith(PACKAGE + ".")}


def walk_run_time(tree: ast.AST):
    """Every node of ``tree`` (as ``ast.walk``) except the bodies of ``if TYPE_CHECKING:`` blocks."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                pending.extend(child.orelse)
                continue
            pending.append(child)


def import_graph() -> dict[str, set[str]]:
    """module -> the modules importing it runs (see the module docstring), the package root left out."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if name == PACKAGE:
            continue
        own_packages = {".".join(name.split(".")[:depth]) for depth in range(1, name.count(".") + 1)}
        if is_package(path):
            own_packages.add(name)
        edges: set[str] = set()
        for target in imported_names(path, name):
            if target not in modules:
                continue  # a name imported from a module, not a module
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):  # every package on the way, then the module itself
                step = ".".join(parts[:depth])
                if step not in own_packages:
                    edges.add(step)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search, in sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_imports_one_way() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "hf_pcoh's imports go round in a circle: " + " -> ".join(cycle)


def test_the_graph_sees_function_level_relative_and_package_imports() -> None:
    """The reader itself: a lazy import inside a function, ``from . import x``, and the ``__init__`` of a package
    imported through count; a name imported from a module does not become a module."""
    graph = import_graph()
    assert "hf_pcoh.losses" in graph["hf_pcoh.config"]  # from .losses import LOSSES, ...
    assert "hf_pcoh.losses.base" not in graph["hf_pcoh.config"]  # ... names, not the module
    assert "hf_pcoh.evaluation.report" in graph["hf_pcoh.evaluation"]  # an __init__'s re-exports are its edges
    assert "hf_pcoh.evaluation" not in graph["hf_pcoh.evaluation.report"]  # its own package was initialised first
    lazy = ast.parse("def f():\n    from .collator import process\nif TYPE_CHECKING:\n    from .trainer import x\n")
    found = [node.module for node in walk_run_time(lazy) if isinstance(node, ast.ImportFrom)]
    assert found == ["collator"]  # the function's import counts, the type-only one does not
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(package_modules()))
def test_no_module_is_over_500_lines(name: str) -> None:
    lines = package_modules()[name].read_text(encoding="utf-8").count("\n")
    assert lines <= 500, f"{name} has {lines} lines: split it along its jobs (at most 500)"
