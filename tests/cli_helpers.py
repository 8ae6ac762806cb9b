"""What the CLI test modules share: run a command, and check its error is one line."""
from __future__ import annotations

import pytest

from mladv.cli import main


def run(args: list[str]) -> int | str | None:
    """``mladv ARGS`` in-process; its exit code."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


def one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """stderr ends with one ``error: ...`` line holding every needle, no traceback; the lines
    before it, if any, are the command's own progress log (``mladv.logs``: unindented lines,
    no other error). Returns the error line (with its newline)."""
    lines = capsys.readouterr().err.splitlines(keepends=True)
    text = "".join(lines)
    assert lines and "Traceback" not in text, text
    err = lines[-1]
    assert err.startswith("error: ") and err.endswith("\n"), text
    assert not any(line.startswith(("error", " ")) for line in lines[:-1]), text
    for needle in needles:
        assert needle in err, text
    return err
