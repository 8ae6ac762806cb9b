"""``mladv attack``: craft adversarial images with any attack and save them losslessly."""
from __future__ import annotations

import warnings
from pathlib import Path

import typer

from ..attacks import make_attack
from ..crafting import attack_metrics, craft, save_adversarial
from ..data import load_source, split_imageset
from ..figures import to_uint8
from ..models import load_checkpoint
from ..utils import atomic_path, atomic_write_json, resolve_device, set_determinism


def attack(
    checkpoint: Path = typer.Argument(..., help="A model.pt written by 'mladv train'."),
    data: str = typer.Argument(..., help="ImageFolder root, or 'phantoms'."),
    name: str = typer.Option("mladv", "--attack", help="mladv, pgd, fgsm, mifgsm, pifgsm, ..."),
    eps: float = typer.Option(8.0, help="L-inf budget in 1/255 units."),
    steps: int = typer.Option(10, min=1),
    split: str = typer.Option("test", help="'test' (the checkpoint's held-out split) or 'all'."),
    beta: float = typer.Option(10.0, help="MLAdv amplification factor."),
    tau: float = typer.Option(0.5, help="MLAdv realism weight (grad-norm) / eq. 2's tau (literal)."),
    style_weight: float = typer.Option(1.0), origin_weight: float = typer.Option(1.0),
    detail_weight: float = typer.Option(1.0),
    projection: bool = typer.Option(True, help="MLAdv heuristic projection (eq. 9)."),
    balance: str = typer.Option("grad-norm", help="MLAdv: grad-norm or literal."),
    targeted: bool = typer.Option(False, help="Random other class as the target (seeded)."),
    batch_size: int = typer.Option(32, min=1),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/attack")),
    png_previews: int = typer.Option(0, help="Also write this many 8-bit PNG previews (lossy)."),
    device: str = typer.Option("auto"),
    skip_bad: bool = typer.Option(False),
) -> None:
    """Attack CHECKPOINT's model on DATA; write OUT/adversarial.pt (float32) and OUT/metrics.json."""
    if not 0 < eps <= 255:
        raise ValueError(f"--eps must be in (0, 255] (1/255 units), got {eps}")
    if split not in ("test", "all"):
        raise ValueError(f"--split must be 'test' or 'all', got {split!r}")
    set_determinism(seed)
    dev = resolve_device(device)
    model, ckpt = load_checkpoint(checkpoint, map_location=dev)
    dataset = load_source(data, ckpt["image_size"], skip_bad=skip_bad, classes=ckpt["classes"],
                          seed=ckpt.get("split", {}).get("seed", 0))
    if split == "test":
        sp = ckpt.get("split", {"seed": 0, "test_size": 0.15})
        _, dataset = split_imageset(dataset, test_size=sp["test_size"], seed=sp["seed"])
    options = {"eps": eps / 255, "seed": seed, "targeted": targeted}
    if name.lower() in ("mladv", "pgd", "mifgsm", "pifgsm"):
        options["steps"] = steps
    if name.lower() == "mladv":
        options.update(beta=beta, tau=tau, style_weight=style_weight, origin_weight=origin_weight,
                       detail_weight=detail_weight, projection=projection, balance=balance)
    atk = make_attack(name, model, **options)
    adv = craft(atk, dataset.images, dataset.labels, batch_size=batch_size, desc=name)
    metrics = attack_metrics(model, dataset.images, adv, dataset.labels)
    meta = {"attack": name, "options": {k: v for k, v in options.items()},
            "checkpoint": str(checkpoint), "data": data, "split": split}
    save_adversarial(out / "adversarial.pt", adv, dataset.labels, paths=dataset.paths,
                     classes=dataset.classes, meta=meta)
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
