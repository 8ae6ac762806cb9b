"""``mladv augment``: adversarial copies of a data split, crafted in resumable shards."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from ..attacks import make_attack
from ..augment import craft_shards, load_shards
from ..crafting import attack_metrics
from ..data import load_source, split_imageset
from ..distributed import barrier, init_from_env, is_main_process, rank_and_world
from ..models import load_checkpoint
from ..utils import atomic_write_json, set_determinism


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["steps=5", "balance=literal"]`` -> ``{"steps": 5, "balance": "literal"}`` (values read
    as YAML scalars)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option steps=5")
        options[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return options


def attack_options(name: str, *, eps: float, seed: int, steps: int | None,
                   switches: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments for :func:`~mladv.attacks.make_attack`: only what was given, so the
    attack's own defaults apply to everything else. MLAdv switches on another attack are refused."""
    given = {k: v for k, v in switches.items() if v is not None}
    if given and name.lower() != "mladv":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"{flags} only apply to --attack mladv, not {name!r}")
    options: dict[str, Any] = {"eps": eps / 255, "seed": seed, **given, **extra}
    if steps is not None:
        options["steps"] = steps
    return options


def augment(
    checkpoint: Path = typer.Argument(..., help="The crafting model (a model.pt)."),
    data: str = typer.Argument(..., help="ImageFolder root, or 'phantoms'."),
    name: str = typer.Option("mladv", "--attack", help="mladv, pgd, fgsm, mifgsm, pifgsm, ..."),
    eps: float = typer.Option(8.0, help="L-inf budget in 1/255 units."),
    steps: int | None = typer.Option(None, min=1, help="Iterations (default: the attack's)."),
    split: str = typer.Option("train", help="train, test (the checkpoint's split) or all."),
    shard_size: int = typer.Option(256, min=1, help="Images per shard file."),
    batch_size: int = typer.Option(32, min=1),
    style_weight: float | None = typer.Option(None, help="MLAdv w_s (0 = off)."),
    origin_weight: float | None = typer.Option(None, help="MLAdv w_o (0 = off)."),
    detail_weight: float | None = typer.Option(None, help="MLAdv w_d (0 = off)."),
    tau: float | None = typer.Option(None, help="MLAdv realism weight."),
    beta: float | None = typer.Option(None, help="MLAdv amplification factor."),
    projection: bool | None = typer.Option(None, "--projection/--no-projection",
                                              help="MLAdv heuristic projection (eq. 9)."),
    option: list[str] = typer.Option([], "--option", help="Any other attack option, KEY=VALUE "
                                     "(repeatable), e.g. --option balance=literal."),
    seed: int = typer.Option(0, help="Every shard is seeded from (seed, shard index)."),
    out: Path = typer.Option(Path("runs/augment")),
    device: str = typer.Option("auto"),
    skip_bad: bool = typer.Option(False),
) -> None:
    """Craft adversarial copies of DATA's SPLIT on CHECKPOINT's model, true labels kept, into
    OUT/shard-*.pt (float32). Rerun the same command to resume an interrupted run."""
    if not 0 < eps <= 255:
        raise ValueError(f"--eps must be in (0, 255] (1/255 units), got {eps}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"--split must be 'train', 'test' or 'all', got {split!r}")
    switches = {"style_weight": style_weight, "origin_weight": origin_weight,
                "detail_weight": detail_weight, "tau": tau, "beta": beta, "projection": projection}
    options = attack_options(name, eps=eps, seed=seed, steps=steps, switches=switches,
                             extra=parse_options(option))
    set_determinism(seed)
    # under torchrun each rank crafts its own shards; rank 0 merges and writes the metrics
    model, ckpt = load_checkpoint(checkpoint, map_location=init_from_env(device))
    rank, world = rank_and_world()
    sp = ckpt.get("split") or {"seed": 0, "test_size": 0.15}
    dataset = load_source(data, ckpt["image_size"], skip_bad=skip_bad, classes=ckpt["classes"],
                          seed=sp.get("seed", 0))
    if split != "all":
        train_set, test_set = split_imageset(dataset, test_size=sp["test_size"], seed=sp["seed"])
        dataset = train_set if split == "train" else test_set
    atk = make_attack(name, model, **options)
    info = {"checkpoint": str(checkpoint), "data": data, "split": split, "options": options}
    craft_shards(atk, dataset, out, shard_size=shard_size, seed=seed, batch_size=batch_size,
                 info=info, desc=f"{name} {split}", rank=rank, world_size=world,
                 progress=is_main_process())
    barrier()
    if not is_main_process():
        return
    adv = load_shards(out)
    metrics = attack_metrics(model, dataset.images, adv.images, dataset.labels)
    atomic_write_json({**info, "n": len(adv), "metrics": metrics}, out / "metrics.json")
    typer.echo(f"{name}: {len(adv)} adversarial copies of the {split} split in {out}; success on "
               f"the crafting model {metrics['success']:.3f}, SSIM {metrics['ssim']:.3f}, "
               f"Linf {metrics['linf_max'] * 255:.2f}/255")


def register(app: typer.Typer) -> None:
    app.command()(augment)
