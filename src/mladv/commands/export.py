"""``mladv export``: adversarial images as an ImageFolder of 16-bit PNGs."""
from __future__ import annotations

from pathlib import Path

import typer


def export(
    src: Path = typer.Argument(..., help="'mladv augment' output (a shard folder) or 'mladv "
                               "attack' output (its folder or adversarial.pt)."),
    out: Path = typer.Argument(..., help="Output folder: OUT/<class>/*.png, manifest.csv."),
) -> None:
    """Write SRC's images to OUT as 16-bit grayscale PNGs (lossless for an 8/255 perturbation:
    within 0.5/65535), one folder per class, with manifest.csv (patient groups) beside them.
    Rerun the same command to resume an interrupted export."""
    from ..data import export_pngs  # run time only: --help imports no torch

    summary = export_pngs(src, out, progress=True)
    kept = f" ({summary['kept']} already there)" if summary["kept"] else ""
    typer.echo(f"exported {summary['n']} images to {out}{kept}: 16-bit PNGs; read them with "
               f"mladv's loaders or torchvision ImageFolder(loader=mladv.data.read_image_tensor)")


def register(app: typer.Typer) -> None:
    app.command()(export)
