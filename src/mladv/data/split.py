"""A seeded, stratified, patient-aware train/test split (SPEC section 2.1: 0.85 / 0.15) for
multiclass and multilabel sets, and the choice of a checkpoint's split that leaves out the images
the checkpoint was trained on."""
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
                     test_size: float = 0.15, seed: int = 0,
                     classes: Sequence[str] | None = None,
                     refuse_one_patient: bool = True) -> tuple[list[int], list[int]]:
    """Indices ``(train, test)``: about ``test_size`` of each class goes to test, and every group
    (patient) lies wholly on one side.

    A group's class is its most frequent label; per class, groups are shuffled with ``seed`` and
    moved to the test side until the class's quota ``round(test_size * n_class)`` is reached.

    A class whose images come from one patient only cannot be on both sides: that patient
    would go to test and the model would train without the class. It is refused (one
    ``ValueError`` naming the class, from ``classes`` when given, and its patient count) before
    anything is split, unless ``refuse_one_patient`` is False (re-cutting the split a finished
    checkpoint was trained with, :func:`choose_split`: the refusal is for training).
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
    if refuse_one_patient:
        _refuse_one_patient_classes(labels, groups, classes)
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


def _refuse_one_patient_classes(labels: list[int], groups: list[str],
                                classes: Sequence[str] | None) -> None:
    """One ``ValueError`` for the first class held by a single patient (see
    :func:`stratified_split`)."""
    patients: dict[int, set[str]] = defaultdict(set)
    for label, group in zip(labels, groups, strict=True):
        patients[label].add(group)
    for c in sorted(patients):
        if len(patients[c]) < 2:
            name = classes[c] if classes is not None and 0 <= c < len(classes) else str(c)
            n_img = labels.count(c)
            raise ValueError(f"class {name!r} has images of 1 patient only ({n_img} image(s)): "
                             "a patient-aware split would train without it; add images of "
                             "other patients of that class, or leave the class out")


def _patient_vectors(targets: np.ndarray, members: dict[str, list[int]], order: list[str]
                     ) -> np.ndarray:
    """``P x K`` 0/1: a patient's finding vector, the max over its images (NaN counted 0)."""
    known = np.nan_to_num(targets, nan=0.0)
    return np.stack([known[members[g]].max(axis=0) for g in order]).astype(np.int64)


def _both_sides(vectors: np.ndarray, test: np.ndarray) -> np.ndarray:
    """``K`` bool: the finding has a positive patient on each side."""
    both: np.ndarray = (vectors[test].sum(axis=0) > 0) & (vectors[~test].sum(axis=0) > 0)
    return both


def _repair(vectors: np.ndarray, test: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Move positive patients so that every finding with >= 2 positive patients has one on each
    side: for each finding missing from a side (rarest first), the smallest positive patient on
    the other side whose move leaves every finding that had both sides with both sides."""
    test = test.copy()
    need = vectors.sum(axis=0) >= 2
    for k in np.argsort(vectors.sum(axis=0), kind="stable"):
        if not need[k] or _both_sides(vectors, test)[k]:
            continue
        empty_is_test = not bool((vectors[test, k] > 0).any())
        candidates = np.flatnonzero((vectors[:, k] > 0) & (test != empty_is_test))
        before = _both_sides(vectors, test) | ~need
        for p in candidates[np.argsort(sizes[candidates], kind="stable")]:
            moved = test.copy()
            moved[p] = empty_is_test
            after = _both_sides(vectors, moved)
            if (after | ~before | ~need).all() and after[k]:
                test = moved
                break
    return test


def multilabel_split(targets: Tensor | np.ndarray, groups: Sequence[str] | None = None, *,
                     test_size: float = 0.15, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices ``(train, test)`` of a multilabel set (``targets`` ``N x K``, 1 / 0 / NaN): about
    ``test_size`` of the patients go to test, every patient wholly on one side, and each
    finding's positives spread over both sides in about the same share.

    Iterative stratification (Sechidis, Tsoumakas, Vlahavas, "On the Stratification of
    Multi-Label Data", ECML PKDD 2011) from the maintained ``iterative-stratification`` package
    (``iterstrat.MultilabelStratifiedShuffleSplit``), run on *patient-level* label vectors --
    a patient's vector is the max over its images, unknown (NaN) counted 0 -- so no patient
    crosses the split. The algorithm hands out the rarest finding's positives first, each to the
    side that still wants most of that finding, which is what keeps the rare findings (NIH's
    Hernia) on both sides; a plain shuffle does not. It still puts both positives of a finding
    with two positive patients on one side (0.15 x 2 < 1), so a last pass moves the smallest
    suitable positive patient across for every finding with >= 2 positive patients that has
    none on a side, never emptying another finding's side. Deterministic in ``seed``; the test
    share is counted in patients, so in images it is near, not at, ``test_size``.
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    # imported here, not at the top: it pulls in scikit-learn, which `import mladv` avoids
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    y = (targets.detach().cpu().numpy() if isinstance(targets, Tensor)
         else np.asarray(targets)).astype(np.float64)
    if y.ndim != 2:
        raise ValueError(f"multilabel targets must have shape N x K, got {y.shape}")
    groups = list(groups) if groups is not None else [str(i) for i in range(len(y))]
    if len(groups) != len(y):
        raise ValueError(f"{len(groups)} groups for {len(y)} label rows")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    order = sorted(members)
    if len(order) < 2:
        raise ValueError(f"a split needs at least two patients, got {len(order)}")
    vectors = _patient_vectors(y, members, order)
    # iterstrat wants a multilabel indicator (>= 2 columns): a lone finding gets its complement
    strat = vectors if vectors.shape[1] >= 2 else np.hstack([vectors, 1 - vectors])
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=test_size,
                                                random_state=seed)
    _, test_patients = next(splitter.split(np.zeros((len(order), 1)), strat))
    test = np.zeros(len(order), dtype=bool)
    test[test_patients] = True
    sizes = np.array([len(members[g]) for g in order])
    test = _repair(vectors, test, sizes)
    test_idx = sorted(i for g, t in zip(order, test) if t for i in members[g])
    test_set = set(test_idx)
    return [i for i in range(len(y)) if i not in test_set], test_idx


def split_imageset(data: ImageSet, *, test_size: float = 0.15, seed: int = 0,
                   for_training: bool = True) -> tuple[ImageSet, ImageSet]:
    """The patient-aware split of an :class:`ImageSet` (groups = patients), by its task:
    :func:`stratified_split` (multiclass) or :func:`multilabel_split` (multilabel).
    ``for_training=False`` re-cuts a finished model's split without the one-patient-class
    refusal (it only matters before training)."""
    if data.task == "multilabel":
        train, test = multilabel_split(data.labels, data.groups, test_size=test_size, seed=seed)
    else:
        train, test = stratified_split(data.labels, data.groups, test_size=test_size, seed=seed,
                                       classes=data.classes, refuse_one_patient=for_training)
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
        train, test = split_imageset(dataset, test_size=sp["test_size"], seed=sp["seed"],
                                     for_training=False)
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
