"""Adversarial copies of an :class:`~mladv.data.ImageSet`, crafted in resumable shards.

``x'_i = attack(x_i, y_i)`` for every image of the set, with the TRUE label ``y_i`` kept (SPEC
section 2.1: the copies augment the training set). The set is cut into shards of ``shard_size``
images; shard ``k`` is written to ``out/shard-{k:05d}.pt`` atomically (temp name, then rename),
so a run that is interrupted and started again skips the finished shards. Every batch is
crafted with a seed drawn from ``(seed, shard, batch)`` alone, so the output does not depend on
what ran before it: a resumed run gives exactly what an uninterrupted one gives.

Sharding is a function of ``(rank, world_size)`` (defaults ``0, 1``): under ``torchrun`` each
rank can call :func:`craft_shards` with its own rank and write its own shards.

:func:`augment_to_folder` is ``mladv augment``: a checkpoint's split crafted into shards on its
model, then ``out/metrics.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .attacks import Attack, make_attack
from .crafting import attack_metrics, checkpoint_and_split, craft
from .data import AdversarialDataset, ImageSet
from .data.adversarial import SHARD_MANIFEST, WRITERS, shard_file
from .distributed import barrier, init_from_env, is_main_process, rank_and_world
from .fingerprint import attack_settings as attack_settings  # its old home
from .fingerprint import data_sha1, model_sha1
from .resume import differences, refuse_changed
from .utils import atomic_torch_save, atomic_write_json, output_dir, progress_bar, set_determinism

FORMAT_VERSION = 1


def derive_seed(*keys: int) -> int:
    """A 31-bit seed that depends only on ``keys`` (NumPy ``SeedSequence``), e.g.
    ``derive_seed(seed, shard, batch)``."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` image ranges of each shard: ``ceil(n / shard_size)`` shards."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def shards_for_rank(num_shards: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The shards rank ``rank`` of ``world_size`` writes: ``rank, rank + world_size, ...``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(range(rank, num_shards, world_size))


def _manifest(data: ImageSet, attack: Attack, *, shard_size: int, seed: int, batch_size: int,
              info: dict[str, Any] | None) -> dict[str, Any]:
    n = len(data)
    return {"format": FORMAT_VERSION, "n": n, "shard_size": shard_size,
            "num_shards": len(shard_ranges(n, shard_size)), "seed": seed,
            "batch_size": batch_size, "classes": list(data.classes),
            "data_sha1": data_sha1(data),
            "model_sha1": model_sha1(attack.model), "attack": attack_settings(attack),
            "info": info or {}}


def _check_or_write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``out/manifest.json``, or check that the one there describes the same job.

    Raises ``ValueError`` naming each differing key (nested ones dotted, ``attack.eps``; see
    :func:`mladv.reuse.refuse_changed`); ``info`` is free-form and not compared.
    """
    path = out / SHARD_MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        diff = differences({k: v for k, v in old.items() if k != "info"},
                           {k: v for k, v in manifest.items() if k != "info"})
        refuse_changed(out, diff, what="shards of a different job")
        return
    atomic_write_json(manifest, path)


def craft_shard(attack: Attack, images: Tensor, labels: Tensor, *, seed: int, shard: int,
                batch_size: int, bar: Any = None) -> Tensor:
    """Craft one shard batch by batch; batch ``b`` runs with ``attack.seed = derive_seed(seed,
    shard, b)`` (the attack's own seed is restored afterwards).

    Shape: images ``n x C x H x W`` in [0, 1], labels ``n`` -> ``n x C x H x W`` on the CPU.
    """
    return craft(attack, images, labels, batch_size=batch_size, progress=False,
                 batch_seed=lambda b: derive_seed(seed, shard, b), bar=bar)


def craft_shards(attack: Attack, data: ImageSet, out: str | Path, *, shard_size: int = 256,
                 seed: int = 0, batch_size: int = 32, rank: int = 0, world_size: int = 1,
                 info: dict[str, Any] | None = None, progress: bool = True,
                 desc: str = "augment") -> list[Path]:
    """Craft adversarial copies of ``data`` (true labels kept) into ``out/shard-*.pt``.

    This rank writes shards ``rank, rank + world_size, ...`` (see :func:`shards_for_rank`);
    shards already on disk are skipped. ``out/manifest.json`` records the job (data and model
    fingerprints, attack settings, seed, shard and batch size); a folder holding another job's
    shards is refused. Each shard holds ``images`` (float32, lossless), ``labels``, ``indices``
    (positions in ``data``), ``paths``, ``groups``, ``classes`` and ``shard``.

    Returns the paths of this rank's shards.
    """
    out = Path(out)
    ranges = shard_ranges(len(data), shard_size)
    mine = shards_for_rank(len(ranges), rank, world_size)
    _check_or_write_manifest(out, _manifest(data, attack, shard_size=shard_size, seed=seed,
                                            batch_size=batch_size, info=info))
    todo = [k for k in mine if not (out / shard_file(k)).is_file()]
    bar = progress_bar(sum(ranges[k][1] - ranges[k][0] for k in todo), desc, "img",
                       enabled=progress)
    try:
        for k in todo:
            start, stop = ranges[k]
            adv = craft_shard(attack, data.images[start:stop], data.labels[start:stop],
                              seed=seed, shard=k, batch_size=batch_size, bar=bar)
            atomic_torch_save({"images": adv.float().contiguous(),
                               "labels": data.labels[start:stop].clone(),
                               "indices": torch.arange(start, stop),
                               "paths": list(data.paths[start:stop]),
                               "groups": list(data.groups[start:stop]),
                               "classes": list(data.classes), "shard": k}, out / shard_file(k))
    finally:
        bar.close()
    return [out / shard_file(k) for k in mine]


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of a shard folder; ``ValueError`` naming the folder if there is none."""
    path = Path(out) / SHARD_MANIFEST
    if not path.is_file():
        raise ValueError(f"{out}: no {SHARD_MANIFEST} (not a folder written by {WRITERS})")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def load_shards(out: str | Path) -> ImageSet:
    """Merge a finished shard folder back into one :class:`ImageSet`, in the source order.

    The one reader of shard folders is :class:`mladv.data.AdversarialDataset`: a ``ValueError``
    (``DataError``) names the folder when shards are missing (rerun the same command to finish
    them) and names the shard when one is damaged (delete it and rerun the same command).
    """
    return AdversarialDataset(out).to_imageset()


def union(*sets: ImageSet) -> ImageSet:
    """``x_train ∪ x'_train``: the sets concatenated (same task, classes and image shape
    required; the task is kept)."""
    if not sets:
        raise ValueError("union() needs at least one ImageSet")
    first = sets[0]
    for s in sets[1:]:
        if (s.classes != first.classes or s.images.shape[1:] != first.images.shape[1:]
                or s.task != first.task):
            raise ValueError(f"cannot join image sets with classes {first.classes} / "
                             f"{tuple(first.images.shape[1:])} / {first.task} and "
                             f"{s.classes} / {tuple(s.images.shape[1:])} / {s.task}")
    return ImageSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]),
                    list(first.classes), [p for s in sets for p in s.paths],
                    [g for s in sets for g in s.groups], task=first.task)


def augment_to_folder(checkpoint: Path, data: str, name: str, options: dict[str, Any], *,
                      split: str, shard_size: int, batch_size: int, seed: int, out: Path,
                      device: str, skip_bad: bool) -> dict[str, Any] | None:
    """``mladv augment``: adversarial copies (attack ``name`` with ``options``) of DATA's
    ``split`` on CHECKPOINT's model, true labels kept, into ``out/shard-*.pt``
    (:func:`craft_shards`: a rerun resumes), then ``out/metrics.json``. Under torchrun each rank
    crafts its own shards and rank 0 merges them and measures. Returns ``metrics.json``'s
    content (None on other ranks)."""
    set_determinism(seed)
    model_device = init_from_env(device)
    # before any rank writes, rank 0 checks OUT, locks it (a second run on it is refused) and
    # cleans the stale .tmp files of an interrupted run
    with output_dir(out, enabled=is_main_process()):
        barrier()
        model, dataset, record = checkpoint_and_split(checkpoint, data, split,
                                                      device=model_device, skip_bad=skip_bad)
        rank, world = rank_and_world()
        atk = make_attack(name, model, **options)
        info = {"checkpoint": str(checkpoint), "data": data, "split": split, "options": options}
        craft_shards(atk, dataset, out, shard_size=shard_size, seed=seed, batch_size=batch_size,
                     info=info, desc=f"{name} {split}", rank=rank, world_size=world,
                     progress=is_main_process())
        barrier()
        if not is_main_process():
            return None
        adv = load_shards(out)
        metrics = attack_metrics(model, dataset.images, adv.images, dataset.labels)
        result = {**info, "n": len(adv), "n_seen_in_training": record["n_seen_in_training"],
                  "metrics": metrics}
        atomic_write_json(result, out / "metrics.json")
    return result
