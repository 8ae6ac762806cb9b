"""The ``mladv`` command line. Sub-commands live in :mod:`mladv.commands` (one file each; modules
whose name starts with ``_`` hold shared pieces and are not commands).

Start-up: this module and every command module import no torch (nor anything that does) at
module level; a command imports its library modules inside its function, so ``mladv --help``
and ``mladv <command> --help`` answer in typer's time, not torch's (tests/test_imports.py reads
``python -X importtime``; benchmarks/startup.py times it)."""
from __future__ import annotations

import functools
import importlib
import pkgutil
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import typer

from . import commands

INTERRUPTED = "interrupted: finished outputs are kept; rerun the same command to resume"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Realistic adversarial augmentation of medical images (MLAdv).")


class Interrupted(Exception):
    """Ctrl-C inside a command. Typer would turn ``KeyboardInterrupt`` into a silent exit 130;
    this passes it through typer to :func:`main`, which prints what was kept: the message is
    the command's own (``interrupt_message`` in :mod:`mladv.commands._common`) or
    :data:`INTERRUPTED`."""


def _interruptible(command: Callable[..., Any]) -> Callable[..., Any]:
    message = getattr(command, "interrupted", INTERRUPTED)

    @functools.wraps(command)  # typer reads the signature and help through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted(message) from None
    return run


for _info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{commands.__name__}.{_info.name}").register(app)
for _command in app.registered_commands:
    if _command.callback is not None:
        _command.callback = _interruptible(_command.callback)


def one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                     lineno: int, line: str | None = None) -> str:
    """``warnings.formatwarning`` for the command line: ``warning: MESSAGE`` without the source
    file and line (they mean nothing to a user)."""
    return f"warning: {message}\n"


def error_line(exc: BaseException) -> str:
    """The one line a user error prints: an ``OSError`` as ``PATH: reason``, else its message."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc).strip() or exc.__class__.__name__


@contextmanager
def _user_facing(terminated: list[bool]) -> Iterator[None]:
    """While a command runs: warnings print as ``warning: MESSAGE`` (no source file and line)
    and SIGTERM (``kill``, a scheduler's time limit) stops it like Ctrl-C, setting
    ``terminated[0]``. Both are restored afterwards."""
    def stop(signum: int, frame: FrameType | None) -> None:
        terminated[0] = True
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, stop) if in_main else None
    try:
        with warnings.catch_warnings():
            warnings.formatwarning = one_line_warning  # type: ignore[assignment]  # restored
            yield
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, before)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors (``ValueError``, ``OSError`` such as a missing file or a full
    disk) print one line and exit 2; Ctrl-C says what was kept and exits 130; SIGTERM says the
    same and exits 143."""
    terminated = [False]
    try:
        with _user_facing(terminated):
            app(args=argv, standalone_mode=True)
    except (ValueError, OSError) as exc:
        typer.secho(f"error: {error_line(exc)}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as exc:
        from .distributed import is_main_process  # torch; loaded by the command already

        if is_main_process():  # under torchrun every rank is interrupted; one says so
            prefix = "terminated (SIGTERM); " if terminated[0] else ""
            typer.secho(prefix + (str(exc) or INTERRUPTED), err=True)
        sys.exit(143 if terminated[0] else 130)


if __name__ == "__main__":  # pragma: no cover
    main()
