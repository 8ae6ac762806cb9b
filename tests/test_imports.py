"""The import graph of src/mladv has no cycle (DESIGN.md: arrows point down only).

Every import counts: module level, inside functions, under ``if TYPE_CHECKING:``. A
function-local import that dodges a cycle at run time is still a cycle in the design.
"""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

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


# -- start-up: what `mladv --help` and `import mladv` load (issue 25, item 2) ------------------
COMMANDS = sorted(p.stem for p in (SRC / "mladv" / "commands").glob("[!_]*.py"))
HEAVY_OPTIONAL = ("torchattacks", "matplotlib", "sklearn", "bm3d", "pytorch_grad_cam")


def imported_modules(*args: str) -> set[str]:
    """Every module ``python -X importtime ARGS`` imports (the last column of its report on
    stderr: ``import time: self [us] | cumulative | imported package``); the run must succeed."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert report, "no -X importtime report on stderr"
    return {line.rsplit("|", 1)[-1].strip() for line in report[1:]}  # [0]: the header


def test_imported_modules_reads_the_importtime_report():
    seen = imported_modules("-c", "import json")
    assert {"json", "json.decoder"} <= seen and "torch" not in seen


def test_the_commands_listed_are_the_command_files():
    assert {"train", "attack", "evaluate", "demo"} <= set(COMMANDS)
    assert not [c for c in COMMANDS if c.startswith("_")]


def test_mladv_help_imports_no_torch():
    assert "torch" not in imported_modules("-m", "mladv", "--help")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_imports_no_torch(command):
    assert "torch" not in imported_modules("-m", "mladv", command, "--help")


def test_import_mladv_imports_no_torch():
    assert "torch" not in imported_modules("-c", "import mladv")


def test_import_mladv_loads_no_heavy_optional_library():
    loaded = imported_modules("-c", "import mladv") & set(HEAVY_OPTIONAL)
    assert not loaded, f"import mladv loads {sorted(loaded)}"


def test_the_readme_names_load_no_heavy_optional_library():
    """README's first example: ``from mladv import MLAdv, build_model`` needs torch and
    torchvision, not the attack zoo, plotting, scikit-learn, BM3D or Grad-CAM."""
    loaded = imported_modules("-c", "from mladv import MLAdv, build_model") & set(HEAVY_OPTIONAL)
    assert not loaded, f"from mladv import MLAdv, build_model loads {sorted(loaded)}"


@pytest.mark.parametrize(("name", "module"), [
    ("MLAdv", "mladv.attacks"), ("heuristic_projection", "mladv.attacks"),
    ("projection_kernel", "mladv.attacks"), ("build_model", "mladv.models"),
    ("load_checkpoint", "mladv.models"), ("save_checkpoint", "mladv.models")])
def test_each_public_name_of_mladv_is_its_definition(name, module):
    import mladv

    assert getattr(mladv, name) is getattr(importlib.import_module(module), name)
    assert name in mladv.__all__ and name in dir(mladv)


def test_an_unknown_name_of_mladv_is_an_attribute_error():
    import mladv

    with pytest.raises(AttributeError, match="no attribute 'MLadv'"):
        mladv.MLadv  # noqa: B018


def test_the_cli_image_size_bounds_are_the_models_bounds():
    """``mladv train --image-size`` bounds live in the torch-free mladv.defaults; the model
    builder checks the same 16..1024 (until models.py imports them from there)."""
    from mladv import defaults, models

    assert (defaults.IMAGE_SIZE_MIN, defaults.IMAGE_SIZE_MAX) == (16, 1024)
    assert (models.IMAGE_SIZE_MIN, models.IMAGE_SIZE_MAX) == (16, 1024)
