"""``mladv augment``: adversarial copies of a data split, crafted in resumable shards."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..attacks import make_attack
from ..augment import craft_shards, load_shards
from ..crafting import attack_metrics
from ..distributed import barrier, init_from_env, is_main_process, rank_and_world
from ..utils import atomic_write_json, output_dir, set_determinism
from ._common import DATA_HELP, AttackFlags, checkpoint_and_split, with_attack_flags


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
    device: str = typer.Option("auto"),
    skip_bad: bool = typer.Option(False),
) -> None:
    """Craft adversarial copies of DATA's SPLIT on CHECKPOINT's model, true labels kept, into
    OUT/shard-*.pt (float32). Rerun the same command to resume an interrupted run."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"--split must be 'train', 'test' or 'all', got {split!r}")
    options = flags.options(seed=seed)
    name = flags.name
    set_determinism(seed)
    # under torchrun each rank crafts its own shards; rank 0 merges and writes the metrics
    model_device = init_from_env(device)
    # before any rank writes, rank 0 checks OUT, locks it (a second run on it is refused) and
    # cleans the stale .tmp files of an interrupted run
    with output_dir(out, enabled=is_main_process()):
        barrier()
        _augment(checkpoint, data, split, name, options, shard_size, batch_size, seed, out,
                 model_device, skip_bad)


def _augment(checkpoint: Path, data: str, split: str, name: str, options: dict[str, Any],
             shard_size: int, batch_size: int, seed: int, out: Path, model_device: Any,
             skip_bad: bool) -> None:
    model, dataset, record = checkpoint_and_split(checkpoint, data, split, device=model_device,
                                                  skip_bad=skip_bad)
    rank, world = rank_and_world()
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
    atomic_write_json({**info, "n": len(adv), "n_seen_in_training": record["n_seen_in_training"],
                       "metrics": metrics}, out / "metrics.json")
    typer.echo(f"{name}: {len(adv)} adversarial copies of the {split} split in {out}; success on "
               f"the crafting model {metrics['success']:.3f}, SSIM {metrics['ssim']:.3f}, "
               f"Linf {metrics['linf_max'] * 255:.2f}/255")


def register(app: typer.Typer) -> None:
    app.command()(augment)
