"""``mladv attack``: craft adversarial images with any attack and save them losslessly."""
from __future__ import annotations

from pathlib import Path

import typer

from ._attack_flags import AttackFlags, with_attack_flags
from ._common import DATA_HELP, DEVICE_HELP, check_device, interrupt_message

INTERRUPTED = ("interrupted: adversarial.pt is written only when crafting ends (mladv attack "
               "does not resume); rerun the same command to start again")


@interrupt_message(INTERRUPTED)
@with_attack_flags
def attack(
    checkpoint: Path = typer.Argument(..., help="A model.pt written by 'mladv train'."),
    data: str = typer.Argument(..., help=DATA_HELP),
    *,
    flags: AttackFlags,
    targeted: bool = typer.Option(False, help="Random other class as the target (seeded)."),
    split: str = typer.Option("test", help="'test' (the checkpoint's held-out split, minus any "
                              "image it was trained on) or 'all'."),
    batch_size: int = typer.Option(32, min=1),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/attack")),
    png_previews: int = typer.Option(0, min=0,
                                     help="Also write this many 8-bit PNG previews (lossy)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    skip_bad: bool = typer.Option(False),
) -> None:
    """Attack CHECKPOINT's model on DATA; write OUT/adversarial.pt (float32) and OUT/metrics.json
    (strict JSON: an infinite PSNR, an image left unchanged, is null there and 'inf' here).
    Attack options not given keep the attack's defaults (for mladv: the measured default)."""
    from ..crafting import attack_to_folder  # run time only: --help imports no torch
    from ..reporting import fmt

    device = check_device(device)
    if split not in ("test", "all"):
        raise ValueError(f"--split must be 'test' or 'all', got {split!r}")
    options = flags.options(seed=seed, targeted=targeted or None)
    metrics = attack_to_folder(checkpoint, data, flags.name, options, split=split,
                               batch_size=batch_size, seed=seed, out=out,
                               png_previews=png_previews, device=device, skip_bad=skip_bad)
    typer.echo(f"{flags.name}: success {fmt(metrics['success'])}, SSIM {fmt(metrics['ssim'])}, "
               f"PSNR {fmt(metrics['psnr'], 1)} dB, Linf {fmt(metrics['linf_max'] * 255, 2)}/255; "
               f"wrote {out / 'adversarial.pt'}")


def register(app: typer.Typer) -> None:
    app.command()(attack)
