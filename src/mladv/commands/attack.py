"""``mladv attack``: craft adversarial images with any attack and save them losslessly."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import typer

from ..attacks import make_attack
from ..crafting import attack_metrics, craft, save_adversarial
from ..figures import to_uint8
from ..utils import (
    atomic_path,
    atomic_write_json,
    output_dir,
    resolve_device,
    set_determinism,
)
from ._common import (
    DATA_HELP,
    AttackFlags,
    checkpoint_and_split,
    interrupt_message,
    with_attack_flags,
)

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
    device: str = typer.Option("auto"),
    skip_bad: bool = typer.Option(False),
) -> None:
    """Attack CHECKPOINT's model on DATA; write OUT/adversarial.pt (float32) and OUT/metrics.json.
    Attack options not given keep the attack's defaults (for mladv: the measured default)."""
    if split not in ("test", "all"):
        raise ValueError(f"--split must be 'test' or 'all', got {split!r}")
    options = flags.options(seed=seed, targeted=targeted or None)
    name = flags.name
    with output_dir(out):
        _attack(checkpoint, data, name, options, split, batch_size, seed, out, png_previews,
                device, skip_bad)


def _attack(checkpoint: Path, data: str, name: str, options: dict[str, Any], split: str,
            batch_size: int, seed: int, out: Path, png_previews: int, device: str,
            skip_bad: bool) -> None:
    set_determinism(seed)
    model, dataset, record = checkpoint_and_split(checkpoint, data, split,
                                                  device=resolve_device(device), skip_bad=skip_bad)
    atk = make_attack(name, model, **options)
    adv = craft(atk, dataset.images, dataset.labels, batch_size=batch_size, desc=name)
    metrics = attack_metrics(model, dataset.images, adv, dataset.labels)
    meta = {"attack": name, "options": options, "checkpoint": str(checkpoint), "data": data,
            **record}
    save_adversarial(out / "adversarial.pt", adv, dataset.labels, paths=dataset.paths,
                     groups=dataset.groups, classes=dataset.classes, meta=meta)
    atomic_write_json({**meta, "metrics": metrics}, out / "metrics.json")
    if png_previews:
        warnings.warn("PNG previews are 8-bit: rounding destroys much of an 8/255 perturbation; "
                      "use adversarial.pt for anything but looking", stacklevel=1)
        from PIL import Image
        for i in range(min(png_previews, adv.shape[0])):
            with atomic_path(out / "previews" / f"{i:05d}.png") as tmp:
                Image.fromarray(to_uint8(adv[i]).numpy()).save(tmp, format="PNG")
    typer.echo(f"{name}: success {metrics['success']:.3f}, SSIM {metrics['ssim']:.3f}, "
               f"Linf {metrics['linf_max'] * 255:.2f}/255; wrote {out / 'adversarial.pt'}")


def register(app: typer.Typer) -> None:
    app.command()(attack)
