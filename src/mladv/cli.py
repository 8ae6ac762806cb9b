"""The ``mladv`` command line. Sub-commands live in :mod:`mladv.commands` (one file each)."""
from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from . import commands

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Realistic adversarial augmentation of medical images (MLAdv).")

for _info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    importlib.import_module(f"{commands.__name__}.{_info.name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors (``ValueError``, missing files) print one line and exit 2."""
    try:
        app(args=argv, standalone_mode=True)
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted: finished outputs are kept; rerun the same command to resume",
                    err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
