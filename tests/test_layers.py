"""The package is built in layers: no import cycle between its subpackages and top-level modules, and no private
name (``_x``) imported from another subpackage.

Imports are read from the source with ``ast`` (inside functions too, where the lazy imports hide), so an import that
only runs on some code path still counts.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "nnunet_liver"
#: source folders and the package each installs as (setup.py: dataset_conversion/ is nnunet_liver.dataset_conversion)
SOURCES = {ROOT / "nnunet_liver": PACKAGE, ROOT / "dataset_conversion": f"{PACKAGE}.dataset_conversion"}
#: the package's own __init__ (``from nnunet_liver import __version__``): imports nothing, a node like the others
ROOT_NODE = "__init__"


def _modules() -> Iterator[Tuple[str, Path]]:
    """(dotted module name, path) of every source file of the package."""
    for folder, dotted in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join([dotted, *parts]), path


def _imports(module: str, path: Path) -> Iterator[Tuple[str, Optional[str], int]]:
    """(imported module, imported name or None, line) of every import statement of a module, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield target, alias.name, node.lineno


def _node(dotted: str, known: Set[str]) -> Optional[str]:
    """The layer of a dotted name inside the package: its first component below ``nnunet_liver`` (the root's own
    attributes are :data:`ROOT_NODE`); None outside the package."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1 or parts[1] not in known:
        return ROOT_NODE
    return parts[1]


def import_graph() -> Tuple[Dict[str, Set[str]], List[str]]:
    """The layer graph {layer: layers it imports} and the private names imported across layers (``file:line``)."""
    modules = list(_modules())
    known = {m.split(".")[1] for m, _ in modules if m.count(".") >= 1}
    graph: Dict[str, Set[str]] = {}
    private = []
    for module, path in modules:
        src = _node(module, known)
        graph.setdefault(src, set())
        for target, name, line in _imports(module, path):
            # ``from nnunet_liver import labels``: the name is the layer
            full = f"{target}.{name}" if target == PACKAGE and name else target
            dst = _node(full, known)
            if dst is None or dst == src:
                continue
            graph[src].add(dst)
            graph.setdefault(dst, set())
            names = full.split(".")[1:] + ([name] if name and full == target else [])
            if any(n.startswith("_") and not n.startswith("__") for n in names):
                private.append(f"{path.relative_to(ROOT)}:{line} imports {name or ''} from {target}")
    return graph, private


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b", "c"}, "b": set(), "c": {"c2"}, "c2": {"c"}}, ["c", "c2", "c"]),
    ({}, None),
])
def test_find_cycle(graph, cycle):
    assert find_cycle(graph) == cycle


def test_graph_sees_lazy_and_relative_imports():
    """The graph holds imports made inside functions (the detector imports post-processing there) and the
    conversion folder's imports (installed as nnunet_liver.dataset_conversion)."""
    graph, _ = import_graph()
    assert "postprocessing" in graph["inference"]
    assert {"dicom", "training", "evaluation"} <= graph["dataset_conversion"]
    assert "trainers" in graph["inference"]  # model.py's trainer lookup, an import inside a function


def test_no_import_cycle_between_subpackages():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle between subpackages: {' -> '.join(cycle)}"


def test_no_private_name_imported_across_subpackages():
    _, private = import_graph()
    assert not private, "private names imported from another subpackage:\n" + "\n".join(private)
