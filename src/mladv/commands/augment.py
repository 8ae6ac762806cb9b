"""``mladv augment``: adversarial copies of a data split, crafted in resumable shards."""
from __future__ import annotations

from pathlib import Path

import typer

from ._attack_flags import AttackFlags, with_attack_flags
from ._common import DATA_HELP, DEVICE_HELP, check_device


@with_attack_flags
def augment(
    checkpoint: Path = typer.Argument(..., help="The crafting model (a model.pt)."),
    data: str = typer.Argument(..., help=DATA_HELP),
    *,
    flags: AttackFlags,
    split: str = typer.Option("train", help="train, test (the checkpoint's split, minus any "
                              "image it was trained on) or all."),
    shard_size: int = typer.Option(256, min=1, help="Images per shard file."),
    batch_size: int = typer.Option(32, min=1),
    seed: int = typer.Option(0, help="Every shard is seeded from (seed, shard index)."),
    out: Path = typer.Option(Path("runs/augment")),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    skip_bad: bool = typer.Option(False),
) -> None:
    """Craft adversarial copies of DATA's SPLIT on CHECKPOINT's model, true labels kept, into
    OUT/shard-*.pt (float32). Rerun the same command to resume an interrupted run."""
    from ..augment import augment_to_folder  # run time only: --help imports no torch

    device = check_device(device)
    if split not in ("train", "test", "all"):
        raise ValueError(f"--split must be 'train', 'test' or 'all', got {split!r}")
    options = flags.options(seed=seed)
    result = augment_to_folder(checkpoint, data, flags.name, options, split=split,
                               shard_size=shard_size, batch_size=batch_size, seed=seed, out=out,
                               device=device, skip_bad=skip_bad)
    if result is not None:
        m = result["metrics"]
        typer.echo(f"{flags.name}: {result['n']} adversarial copies of the {split} split in "
                   f"{out}; success on the crafting model {m['success']:.3f}, SSIM "
                   f"{m['ssim']:.3f}, Linf {m['linf_max'] * 255:.2f}/255")


def register(app: typer.Typer) -> None:
    app.command()(augment)
