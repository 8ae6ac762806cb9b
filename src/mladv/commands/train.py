"""``mladv train``: train a classifier on a folder or the phantoms; checkpoint + metrics JSON."""
from __future__ import annotations

from pathlib import Path

import typer

from ..defaults import IMAGE_SIZE_MAX, IMAGE_SIZE_MIN
from ._common import (
    DATA_HELP,
    DEVICE_HELP,
    DICOM_MODE_HELP,
    check_device,
    check_dicom_mode,
    interrupt_message,
)

INTERRUPTED = ("interrupted: no checkpoint was written (mladv train does not resume); rerun "
               "the same command to start again")


@interrupt_message(INTERRUPTED)
def train(
    data: str = typer.Argument(..., help=DATA_HELP),
    arch: str = typer.Option("resnet18", help="Architecture (see mladv.models.ARCHITECTURES)."),
    image_size: int = typer.Option(128, min=IMAGE_SIZE_MIN, max=IMAGE_SIZE_MAX,
                                   help="Images are resized/cropped to this square size."),
    weights: str | None = typer.Option(
        None, help="Pretrained backbone: a torchvision weights name (IMAGENET1K_V1, DEFAULT; "
        "from torch hub's cache, downloaded with internet) or a local state-dict file. The "
        "classifier head is new."),
    freeze_backbone: bool = typer.Option(False, help="Train the head only (needs --weights)."),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(32, min=1),
    lr: float = typer.Option(1e-3),
    seed: int = typer.Option(0, help="Seeds the split, the initialisation and the batches."),
    test_size: float = typer.Option(0.15, help="Held-out share (patient-aware, stratified)."),
    out: Path = typer.Option(Path("runs/train"), help="Output folder."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dicom_mode: str = typer.Option("voi", help=DICOM_MODE_HELP),
    skip_bad: bool = typer.Option(False,
                                  help="Skip unreadable images (listed) instead of failing."),
    adv_mode: str = typer.Option(
        "offline", help="offline (no per-batch attack: plain training; adversarial copies come "
        "from 'mladv augment'), online (each batch's copies crafted against the current model) "
        "or advprop (online + a twin BatchNorm for adversarial inputs)."),
    adv_attack: str | None = typer.Option(None, help="Attack crafted per batch (online/advprop; "
                                          "default pgd)."),
    adv_eps: float | None = typer.Option(None, help="Per-batch attack budget, 1/255 units "
                                         "(default 1)."),
    adv_steps: int | None = typer.Option(None, help="Per-batch attack steps (default 1)."),
    adv_fraction: float | None = typer.Option(
        None, help="Replace this share of each batch by its adversarial copy (default: train on "
        "the batch plus a copy of every image)."),
    option: list[str] = typer.Option([], "--option", help="Option of the per-batch attack, "
                                     "KEY=VALUE (repeatable), e.g. --option style_weight=1."),
) -> None:
    """Train ARCH on DATA's train split; write OUT/model.pt and OUT/metrics.json. The checkpoint
    records the training images (fingerprints), so 'mladv attack --split test' can leave them
    out on any data. Rerunning the same command reuses the finished model; other settings on
    the same OUT are refused, naming them (use another --out)."""
    from ..reuse import train_and_save  # run time only: --help imports no torch

    device = check_device(device)
    dicom_mode = check_dicom_mode(dicom_mode)
    adversarial = {"adv_mode": adv_mode, "attack": adv_attack, "adv_eps": adv_eps,
                   "adv_steps": adv_steps, "adv_fraction": adv_fraction, "option": option}
    metrics = train_and_save(data, out, arch=arch, image_size=image_size, weights=weights,
                             freeze_backbone=freeze_backbone, epochs=epochs,
                             batch_size=batch_size, lr=lr, seed=seed, test_size=test_size,
                             device=device, skip_bad=skip_bad, adversarial=adversarial,
                             dicom_mode=dicom_mode)
    if metrics is not None:
        typer.echo(f"test accuracy {metrics['test_acc']:.4f}; wrote {out / 'model.pt'}")


def register(app: typer.Typer) -> None:
    app.command()(train)
