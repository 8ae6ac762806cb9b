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
    """stderr is one ``error: ...`` line, no traceback, holding every needle."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err
    return err
