"""README.md's code blocks run as they stand, so an example cannot rot.

pytest-codeblocks (:func:`pytest_codeblocks.extract_from_file`) reads the blocks and their marks
(``<!--pytest.mark.skip(...)-->``, ``<!--pytest-codeblocks:cont-->`` joins a block to the one
before it). Each block runs in a fresh temporary folder, so its ``runs/...`` outputs never touch
the checkout's: Python blocks with ``exec`` in a fresh namespace (the global RNG state restored
afterwards), shell blocks with ``bash -e`` and this environment's ``mladv`` first on ``PATH``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from pytest_codeblocks import CodeBlock, extract_from_file
from typer.core import TyperGroup

from mladv.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results" / "README.md"
SHELLS = ("bash", "sh")
BLOCKS: list[CodeBlock] = extract_from_file(README)


def _marks(block: CodeBlock) -> list[Any]:
    """The block's ``pytest.mark...`` comments as marks, evaluated as the plugin does."""
    return [eval(mark, {"sys": sys, "pytest": pytest}) for mark in block.marks]


def _run_shell(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` under ``bash -e -o pipefail`` in ``cwd``, with this venv's ``mladv`` on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working folder that sees the checkout's ``configs/``, as a reader's would."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("block", [pytest.param(b, marks=_marks(b), id=f"README.md:{b.lineno}")
                                   for b in BLOCKS])
def test_readme_block_runs(block: CodeBlock, scratch: Path) -> None:
    """Every Python and shell block of the README runs without error (skip-marked ones aside)."""
    if block.syntax == "python":
        with torch.random.fork_rng():  # the suite's global RNG state is left as it was
            exec(compile(block.code, f"README.md:{block.lineno}", "exec"), {"__name__": "__main__"})
        return
    done = _run_shell(block.code, scratch)
    assert done.returncode == 0, f"README.md:{block.lineno} failed:\n{done.stderr[-3000:]}"
    if block.expected_output is not None:
        assert done.stdout == block.expected_output


def test_every_readme_block_is_python_or_shell() -> None:
    """No code block escapes the test above: each is ```python, ```bash or ```sh."""
    assert [(b.lineno, b.syntax) for b in BLOCKS if b.syntax not in ("python", *SHELLS)] == []


def test_every_cli_command_has_a_readme_example() -> None:
    """The commands used in the README's shell blocks are exactly the CLI's commands."""
    shell = "\n".join(b.code for b in BLOCKS if b.syntax in SHELLS)
    used = set(re.findall(r"(?:^|-m |\s)mladv (\w+)", shell, flags=re.MULTILINE))
    cli = typer.main.get_command(app)
    assert isinstance(cli, TyperGroup) and used == set(cli.commands)


def test_readme_has_no_path_into_the_project_workspace() -> None:
    """The README names no ``../shared`` path (a fresh clone does not have it)."""
    assert "../shared" not in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("page", [README, RESULTS], ids=["README.md", "docs/results/README.md"])
def test_relative_links_resolve(page: Path) -> None:
    """Every relative link and image of the README and the results record names a file."""
    targets = re.findall(r"\]\((?!https?:|#)([^)#\s]+)", page.read_text(encoding="utf-8"))
    assert targets and [t for t in targets if not (page.parent / t).exists()] == []
