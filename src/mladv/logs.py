"""The one logger of the long jobs (``mladv experiment``, ``mladv transfer``, ``mladv train``).

A log is any ``Callable[[str], None]`` (:data:`Log`). The default, :func:`stderr_log`, writes one
line to stderr, flushed, so the results a command prints on stdout stay machine-readable.
:func:`run_log` wraps a log for a run folder: every line also goes, time-stamped, to
``OUT/log.txt`` (appended, so a resumed run keeps the history of the interrupted one), and ranks
other than 0 under torchrun are silent (:func:`quiet_log`).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

Log = Callable[[str], None]

LOG_FILE = "log.txt"


def stderr_log(msg: str) -> None:
    """One line to stderr, flushed."""
    print(msg, file=sys.stderr, flush=True)


def quiet_log(msg: str) -> None:
    """Drops the line (ranks other than 0, tests)."""


def run_log(log: Log, out: str | Path, *, main_process: bool = True) -> Log:
    """``log`` that also appends ``YYYY-MM-DD HH:MM:SS  line`` to ``out/log.txt``; on ranks other
    than 0 (``main_process=False``) a log that drops every line. ``quiet_log`` stays quiet on
    the terminal but still writes the file."""
    if not main_process:
        return quiet_log
    path = Path(out) / LOG_FILE

    def both(msg: str) -> None:
        log(msg)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {msg}\n")

    return both
