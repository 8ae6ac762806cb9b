"""The import graph of src/mladv has no cycle (DESIGN.md: arrows point down only).

Every import counts: module level, inside functions, under ``if TYPE_CHECKING:``. A
function-local import that dodges a cycle at run time is still a cycle in the design.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    """``src/mladv/data/split.py`` -> ``mladv.data.split``; ``data/__init__.py``: ``mladv.data``."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "mladv").rglob("*.py"))}


def resolve_from(node: ast.ImportFrom, name: str, path: Path) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved."""
    if node.level == 0:
        return node.module or ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The mladv modules ``name`` imports anywhere in its file."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(node, name, path)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_relative_imports_resolve_to_the_module_they_name(tmp_path):
    pkg = tmp_path / "mladv" / "data"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .split import choose_split\n")
    (pkg / "split.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import models\n"
        "def f():\n    from ..utils import seed\n")
    modules = {"mladv": Path(), "mladv.data": pkg / "__init__.py", "mladv.models": Path(),
               "mladv.utils": Path(), "mladv.data.split": pkg / "split.py"}
    assert imports_of("mladv.data", pkg / "__init__.py", modules) == {"mladv.data.split"}
    assert imports_of("mladv.data.split", pkg / "split.py", modules) == {
        "mladv.models", "mladv.utils"}


def test_find_cycle_returns_the_cycle_closed_on_its_first_module():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_every_mladv_module():
    graph = import_graph()
    assert "mladv.cli" in graph and "mladv.data.split" in graph
    assert "mladv.attacks" in graph["mladv"]


def test_the_mladv_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
