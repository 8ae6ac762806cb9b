"""``mladv demo``: the offline demo (what ``make demo`` runs)."""
from __future__ import annotations

from pathlib import Path

import typer


def demo(out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
         epochs: int = typer.Option(15, min=1), seed: int = typer.Option(0),
         n_per_class: int = typer.Option(250, min=10, help="Phantoms per class.")) -> None:
    """Synthetic phantoms -> small CNN -> MLAdv vs PGD: a table, summary.json and grid.png."""
    from ..demo import run_demo  # run time only: --help imports no torch
    from ..utils import output_dir

    with output_dir(out):  # one run per folder, as every command that writes an --out
        run_demo(out, epochs=epochs, seed=seed, n_per_class=n_per_class)


def register(app: typer.Typer) -> None:
    app.command()(demo)
