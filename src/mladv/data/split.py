"""A seeded, stratified, patient-aware train/test split (SPEC section 2.1: 0.85 / 0.15), and the
choice of a checkpoint's split that leaves out the images the checkpoint was trained on."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ..fingerprint import unseen_indices
from .folder import ImageSet


def stratified_split(labels: Sequence[int] | Tensor, groups: Sequence[str] | None = None, *,
                     test_size: float = 0.15, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices ``(train, test)``: about ``test_size`` of each class goes to test, and every group
    (patient) lies wholly on one side.

    A group's class is its most frequent label; per class, groups are shuffled with ``seed`` and
    moved to the test side until the class's quota ``round(test_size * n_class)`` is reached.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    labels = [int(v) for v in (labels.tolist() if isinstance(labels, Tensor) else labels)]
    groups = list(groups) if groups is not None else [str(i) for i in range(len(labels))]
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    group_class = {g: Counter(labels[i] for i in idx).most_common(1)[0][0]
                   for g, idx in members.items()}
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for c in sorted(set(labels)):
        class_groups = sorted(g for g, gc in group_class.items() if gc == c)
        rng.shuffle(class_groups)
        quota = max(1, round(test_size * sum(len(members[g]) for g in class_groups)))
        taken = 0
        for g in class_groups:
            if taken >= quota:
                break
            test.extend(members[g])
            taken += len(members[g])
    test_set = set(test)
    train = [i for i in range(len(labels)) if i not in test_set]
    return train, sorted(test)


def split_imageset(data: ImageSet, *, test_size: float = 0.15, seed: int = 0
                   ) -> tuple[ImageSet, ImageSet]:
    """:func:`stratified_split` applied to an :class:`ImageSet` (groups = patients)."""
    train, test = stratified_split(data.labels, data.groups, test_size=test_size, seed=seed)
    return data.subset(train), data.subset(test)


def choose_split(dataset: ImageSet, ckpt: dict[str, Any], split: str, *, checkpoint: str | Path,
                 data: str) -> tuple[ImageSet, dict[str, Any]]:
    """``split`` (``train``, ``test`` or ``all``) of ``dataset`` as the checkpoint's own split
    (seed, test share) cuts it, and a record of what was done.

    ``test`` leaves out every image the checkpoint records having trained on (``trained_on``):
    on the training data that changes nothing, on other data (a copy, an overlapping folder) it
    keeps the evaluation honest; a note names how many were left out, and a test split with
    nothing unseen is refused. ``all`` keeps them and the note counts them.
    """
    sp = ckpt.get("split") or {"seed": 0, "test_size": 0.15}
    if split == "all":
        chosen = dataset
    else:
        train, test = split_imageset(dataset, test_size=sp["test_size"], seed=sp["seed"])
        chosen = train if split == "train" else test
    record: dict[str, Any] = {"split": split, "n_seen_in_training": None, "note": None}
    seen = ckpt.get("trained_on")
    if split == "train":
        return chosen, record
    if seen is None:
        record["note"] = (f"{checkpoint} does not record its training images (written before "
                          "mladv recorded them): cannot check that they are left out")
        return chosen, record
    keep = unseen_indices(chosen.images, seen)
    n_seen = len(chosen) - len(keep)
    record["n_seen_in_training"] = n_seen
    if n_seen and split == "test":
        if not keep:
            raise ValueError(f"--split test: all {len(chosen)} images of {data}'s test split "
                             f"were used to train {checkpoint}; nothing unseen to attack")
        record["note"] = (f"--split test: left out {n_seen} of {len(chosen)} images that "
                          f"{checkpoint} was trained on ({data} is not the data it was "
                          "trained on)")
        chosen = chosen.subset(keep)
    elif n_seen:
        record["note"] = (f"--split all: {n_seen} of {len(chosen)} images were used to train "
                          f"{checkpoint}; --split test leaves them out")
    return chosen, record
