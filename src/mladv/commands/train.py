"""``mladv train``: train a classifier on a folder or the phantoms; checkpoint + metrics JSON."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from ..adversarial_training import check_advprop
from ..attacks import parse_options
from ..data import load_source, split_imageset
from ..distributed import init_from_env, is_main_process
from ..models import (
    IMAGE_SIZE_MAX,
    IMAGE_SIZE_MIN,
    build_model,
    check_arch,
    check_freeze,
    check_image_size,
    check_pretrained,
    save_checkpoint,
)
from ..training import accuracy, adversarial_from_options, train_classifier
from ..utils import atomic_write_json, output_dir, set_determinism
from ._common import DATA_HELP, interrupt_message

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
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
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
    out on any data."""
    check_arch(arch)
    check_image_size(image_size, arch, option="--image-size")
    if not lr > 0:
        raise ValueError(f"--lr must be > 0, got {lr}")
    if not 0 < test_size < 1:
        raise ValueError(f"--test-size must be in (0, 1), got {test_size}")
    check_freeze(weights, freeze_backbone, freeze_name="--freeze-backbone",
                 weights_name="--weights")
    if weights is not None:
        check_pretrained(arch, weights, key="--weights")  # a bad name or file, weights of another
        # architecture, an offline download: now, before the data loads
    flags = {"--adv-attack": adv_attack, "--adv-eps": adv_eps, "--adv-steps": adv_steps,
             "--adv-fraction": adv_fraction, "--option": option or None}
    given = [flag for flag, value in flags.items() if value is not None]
    if given and adv_mode == "offline":  # they would do nothing: say so
        raise ValueError(f"{given[0]} sets the per-batch attack: it needs --adv-mode online or "
                         "advprop")
    per_batch: dict[str, Any] = {"attack": adv_attack, "adv_eps": adv_eps,  # unset: the
                                 "adv_steps": adv_steps,  # defaults of adversarial_from_options
                                 "adv_fraction": adv_fraction}
    adversarial = adversarial_from_options(
        adv_mode, **{k: v for k, v in per_batch.items() if v is not None},
        options=per_batch_options(option, adv_eps), seed=seed)
    if adv_mode == "advprop":
        check_advprop(arch, freeze_backbone)
    set_determinism(seed)
    dev = init_from_env(device)  # under torchrun: DDP process group, cuda:LOCAL_RANK
    with output_dir(out, enabled=is_main_process()):  # rank 0 writes
        _train(data, arch, image_size, weights, freeze_backbone, epochs, batch_size, lr, seed,
               test_size, out, dev, skip_bad, adversarial)


def per_batch_options(option: list[str], adv_eps: float | None) -> dict[str, Any]:
    """``--option KEY=VALUE`` of the per-batch attack; a setting that has its own flag is refused
    (``--option eps=0.01`` next to ``--adv-eps 2`` would mix units), as ``mladv attack`` does,
    and ``--adv-eps`` below 0.5 looks like [0, 1] units, refused as the experiment does."""
    if adv_eps is not None and 0 < adv_eps < 0.5:
        raise ValueError(f"--adv-eps is in 1/255 units (1 means 1/255); {adv_eps:g} looks like "
                         f"[0, 1] units: write {adv_eps * 255:.3g}")
    options = parse_options(option)
    own = {"eps": "--adv-eps", "steps": "--adv-steps", "fraction": "--adv-fraction",
           "seed": "--seed"}
    for key, flag in own.items():
        if key in options:
            raise ValueError(f"--option {key}=...: give it once, as {flag}")
    return options


def _train(data: str, arch: str, image_size: int, weights: str | None, freeze_backbone: bool,
           epochs: int, batch_size: int, lr: float, seed: int, test_size: float, out: Path,
           dev: Any, skip_bad: bool, adversarial: Any) -> None:
    dataset = load_source(data, image_size, skip_bad=skip_bad, seed=seed, progress=True)
    train_set, test_set = split_imageset(dataset, test_size=test_size, seed=seed)
    typer.echo(f"{data}: {len(train_set)} train / {len(test_set)} test images, "
               f"classes {dataset.classes}")
    model = build_model(arch, len(dataset.classes), weights=weights,
                        freeze_backbone=freeze_backbone).to(dev)
    start = time.perf_counter()
    history = train_classifier(model, train_set, epochs=epochs, batch_size=batch_size, lr=lr,
                               seed=seed, adversarial=adversarial)
    if not is_main_process():  # every rank trained the same model; rank 0 evaluates and writes
        return
    metrics = {"test_acc": accuracy(model, test_set.images, test_set.labels),
               "train_acc": history[-1]["train_acc"], "train_seconds": time.perf_counter() - start,
               "n_train": len(train_set), "n_test": len(test_set),
               "skipped": [p for p, _ in dataset.skipped]}
    save_checkpoint(out / "model.pt", model, classes=dataset.classes, image_size=image_size,
                    epoch=epochs, metrics=metrics, data=data, train_images=train_set.images,
                    split={"seed": seed, "test_size": test_size},
                    **(adversarial.checkpoint_extra() if adversarial is not None else {}))
    atomic_write_json({"data": data, "arch": arch, "image_size": image_size, "weights": weights,
                       "freeze_backbone": freeze_backbone, "seed": seed, "history": history,
                       "adversarial": adversarial.describe() if adversarial is not None else None,
                       **metrics}, out / "metrics.json")
    typer.echo(f"test accuracy {metrics['test_acc']:.4f}; wrote {out / 'model.pt'}")


def register(app: typer.Typer) -> None:
    app.command()(train)
