"""What the steps of an experiment run share: the :class:`Run` (config, folder, device, data),
the :class:`Timer`, and the readers of a run folder's progress (:func:`selection_so_far`). Both
``run.py`` and ``report.py`` import it; neither imports the other for it, and the report never
imports the trainers (``selection.py``) to read what they left."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import ImageSet, split_imageset
from ..logs import Log, stderr_log
from ..models import ImageClassifier
from .arm_table import ARMS
from .config import SELECTION_RULES, ExperimentConfig, SelectionConfig

SCORE_KEYS = ("point", "val_accuracy", "val_loss", "train_wall_s")  # a grid point's summary
FLIPS_KEYS = ("val_accuracy", "history", "train_wall_s")  # the flips reference's summary


def val_key(task: str) -> str:
    """The validation score of a grid point on ``task``: ``val_accuracy`` (multiclass) or
    ``val_macro_auroc`` (multilabel)."""
    return "val_macro_auroc" if task == "multilabel" else "val_accuracy"


def score_keys(task: str) -> tuple[str, ...]:
    """:data:`SCORE_KEYS` with the task's validation score (:func:`val_key`)."""
    return tuple(val_key(task) if k == "val_accuracy" else k for k in SCORE_KEYS)


def flips_keys(task: str) -> tuple[str, ...]:
    """:data:`FLIPS_KEYS` with the task's validation score (:func:`val_key`)."""
    return tuple(val_key(task) if k == "val_accuracy" else k for k in FLIPS_KEYS)


@dataclass
class Timer:
    """Wall-clock and process CPU seconds of a block (CPU time sums all threads, so
    ``cpu / threads`` estimates the wall time on an unshared machine)."""

    wall: float = 0.0
    cpu: float = 0.0

    @contextmanager
    def __call__(self) -> Iterator[Timer]:
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            yield self
        finally:
            self.wall += time.perf_counter() - w0
            self.cpu += time.process_time() - c0

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_wall_s": round(self.wall, 3), f"{prefix}_cpu_s": round(self.cpu, 3)}


@dataclass
class Run:
    """One experiment run: its config, folder, device and data."""

    cfg: ExperimentConfig
    out: Path
    device: torch.device
    train: ImageSet
    test: ImageSet
    split_info: dict[str, Any]
    robust_index: list[int]
    log: Log = stderr_log
    bases: dict[int, tuple[ImageClassifier, dict[str, Any]]] = field(default_factory=dict)
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)  # online arm -> grid point

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed-{seed}"


# -- readers of a run folder (reports read progress here, never through the trainers) ---------
def online_arms(cfg: ExperimentConfig) -> list[str]:
    """The arms of ``cfg`` whose settings the validation grid decides, in config order."""
    return [a for a in cfg.arms if ARMS[a].online]


def searched_arms(cfg: ExperimentConfig) -> list[str]:
    """The online arms searched on the grid: all but the matched controls
    (``online.matched``, which take their source's choice)."""
    return [a for a in online_arms(cfg) if a not in cfg.online.matched]


def point_name(point: dict[str, Any]) -> str:
    """``{"eps": 1, "steps": 1, "fraction": None}`` -> ``eps1-steps1-fracall``."""
    frac = "all" if point["fraction"] is None else f"{point['fraction']:g}"
    return f"eps{point['eps']:g}-steps{point['steps']}-frac{frac}"


def selection_dir(run: Run) -> Path:
    return run.out / "selection"


def pick(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``d`` restricted to ``keys``, in that order."""
    return {k: d[k] for k in keys}


def selection_header(sel: SelectionConfig, train: ImageSet, val: ImageSet) -> dict[str, Any]:
    """The fields ``selection.json`` opens with: the rule and the validation split."""
    return {"rule": sel.rule, "rule_text": SELECTION_RULES[sel.rule], "val_size": sel.val_size,
            "seed": sel.seed, "n_train": len(train), "n_val": len(val)}


def selection_so_far(run: Run) -> dict[str, Any] | None:
    """``selection.json`` when the search has finished; while it runs, the same layout built
    from the finished points (``choices`` empty, ``finished`` / ``planned`` point counts); None
    before the flips point has finished."""
    folder = selection_dir(run)
    if (folder / "selection.json").is_file():
        return dict(json.loads((folder / "selection.json").read_text()))
    if not (folder / "none" / "flips.json").is_file():
        return None
    cfg, sel = run.cfg, run.cfg.online.selection
    train, val = split_imageset(run.train, test_size=sel.val_size, seed=sel.seed)
    flips = json.loads((folder / "none" / "flips.json").read_text())
    task = run.train.task
    scores: dict[str, list[dict[str, Any]]] = {}
    for arm in searched_arms(cfg):
        paths = [folder / arm / f"{point_name(p)}.json" for p in cfg.online.grid.points()]
        done = [json.loads(p.read_text()) for p in paths if p.is_file()]
        if done:
            scores[arm] = [pick(d, score_keys(task)) for d in done]
    return {**selection_header(sel, train, val), "choices": {}, "scores": scores,
            "finished": sum(map(len, scores.values())),
            "planned": len(searched_arms(cfg)) * len(cfg.online.grid.points()),
            "flips": pick(flips, flips_keys(task))}
