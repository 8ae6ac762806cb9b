"""The online arms' eps / steps / fraction, chosen on a validation split, never on the test split.

The rule is written in the config (``online.selection.rule``, :data:`~.config.SELECTION_RULES`)
before anything is trained. The validation split is carved from the experiment's training set
(patient-aware and stratified, like the test split: :func:`mladv.data.split_imageset` with
``online.selection.val_size`` and ``.seed``); the test split is not an argument of anything here.
Every grid point of every online arm in the run is trained once on the rest of the training set
with that seed and the experiment's schedule, and scored on the validation split; the flips arm
(``none``) is trained the same way, so its validation learning curve shows whether the schedule
has converged. Each finished point is saved atomically (``selection/ARM/POINT.json``), so an
interrupted search resumes; the choices go to ``selection/selection.json`` and are reused for
every seed, trained then on the full training set.

The validation score follows the data set's task: accuracy (argmax) for a multiclass set, the
macro AUROC (mean of the per-finding AUROCs defined on the validation split,
:func:`mladv.evaluation.multilabel.per_finding_auroc` / ``macro_auroc``) with the masked BCE as
the validation loss for a multilabel one; the rule (``max-val-accuracy`` /
``max-val-macro-auroc``) maximises that score. A matched control (``online.matched``) is not
searched: it takes the point chosen for its source arm, recorded with ``matched_to``.
"""
from __future__ import annotations

import json
import math
from typing import Any

import torch
import torch.nn.functional as F

from ..adversarial_training import AdversarialBatch, adversarial_from_options
from ..data import ImageSet, split_imageset
from ..distributed import barrier, is_main_process
from ..evaluation.multilabel import macro_auroc, per_finding_auroc
from ..fingerprint import data_sha1
from ..models import build_model
from ..tasks import masked_bce
from ..training import BatchTransform, predict_logits, train_classifier
from ..utils import atomic_write_json, set_determinism
from .arms import ARMS, batch_transform, online_options
from .config import RULE_SCORES, SELECTION_RULES, ExperimentConfig
from .state import (
    Run,
    Timer,
    flips_keys,
    pick,
    point_name,
    score_keys,
    searched_arms,
    selection_dir,
    selection_header,
    val_key,
)

TIE = 1e-9


def online_batch(cfg: ExperimentConfig, arm: str, point: dict[str, Any],
                 seed: int) -> AdversarialBatch:
    """The per-batch adversary of an online arm at a grid point (``eps`` in 1/255 units)."""
    spec = ARMS[arm]
    adv = adversarial_from_options(spec.mode, spec.attack or "pgd", adv_eps=point["eps"],
                                   adv_steps=point["steps"], adv_fraction=point["fraction"],
                                   options=online_options(arm, cfg.pgd, cfg.mladv, cfg.chain),
                                   seed=seed)
    if adv is None:  # an online arm's mode is never "offline"
        raise ValueError(f"arm {arm!r} is not an online arm")
    return adv


def choose(scored: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The grid point ``rule`` picks from ``scored`` (grid order, each with the rule's score,
    :data:`~.config.RULE_SCORES`): ``max-val-accuracy``: the highest ``val_accuracy``;
    ``max-val-macro-auroc``: the highest ``val_macro_auroc`` (a NaN score, no finding with both
    classes on the validation split, ranks below every number); a tie (within 1e-9) keeps the
    point listed first."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; valid: {', '.join(SELECTION_RULES)}")
    if not scored:
        raise ValueError("no grid point was scored")
    key = RULE_SCORES[rule]

    def score(item: dict[str, Any]) -> float:
        value = item[key]
        return -math.inf if value is None or math.isnan(value) else float(value)

    best = scored[0]
    for item in scored[1:]:
        if score(item) > score(best) + TIE:
            best = item
    return best


class ValidationCurve:
    """A batch transform that also scores the model on the validation images once per epoch.

    ``train_classifier`` calls the transform at the start of every batch; at the first batch of
    epochs 2, 3, ... (and once more by :meth:`record` after training) the model's accuracy and
    cross-entropy on ``val`` are recorded in eval mode (mode restored; no generator is drawn
    from, so the training itself is unchanged).
    """

    def __init__(self, transform: BatchTransform, model: torch.nn.Module, val: ImageSet,
                 steps_per_epoch: int) -> None:
        self.transform, self.model, self.val = transform, model, val
        self.steps_per_epoch, self.calls = steps_per_epoch, 0
        self.curve: list[dict[str, float]] = []

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.calls and self.calls % self.steps_per_epoch == 0:
            self.record()
        self.calls += 1
        return self.transform(x, y, gen)

    def record(self) -> None:
        logits = predict_logits(self.model, self.val.images)
        labels = self.val.labels
        if self.val.task == "multilabel":  # macro AUROC; masked BCE over the known findings
            macro = macro_auroc(per_finding_auroc(logits, labels))[0]
            self.curve.append({"val_macro_auroc": macro,
                               "val_loss": float(masked_bce(logits, labels))})
            return
        self.curve.append({"val_accuracy": float((logits.argmax(1) == labels).float().mean()),
                           "val_loss": float(F.cross_entropy(logits, labels))})


def train_point(run: Run, arm: str, point: dict[str, Any] | None, train: ImageSet,
                val: ImageSet) -> dict[str, Any]:
    """Train ``arm`` (at grid ``point``; ``None`` for a non-online arm) on ``train`` from the
    selection seed with the experiment's schedule; its per-epoch history with the validation
    accuracy and loss, and the final validation accuracy."""
    cfg, seed = run.cfg, cfg_seed(run.cfg)
    set_determinism(seed)
    model = build_model(cfg.arch, len(train.classes), weights=cfg.weights,
                        freeze_backbone=cfg.freeze_backbone).to(run.device)
    adv = online_batch(cfg, arm, point, seed) if point is not None else None
    steps = (len(train) + cfg.train.batch_size - 1) // cfg.train.batch_size
    curve = ValidationCurve(batch_transform(arm, cfg.arm_options, len(train.classes)), model,
                            val, steps)
    timer = Timer()
    with timer():
        history = train_classifier(
            model, train, epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
            lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, seed=seed, transform=curve,
            precision=cfg.train.precision, channels_last=cfg.train.channels_last,
            progress=cfg.progress and is_main_process(), adversarial=adv,
            desc=f"select {arm} {point_name(point) if point else ''}".rstrip())
    curve.record()
    for row, val_row in zip(history, curve.curve, strict=True):
        row.update(val_row)
    key = val_key(train.task)
    return {"arm": arm, "point": point, key: curve.curve[-1][key],
            "val_loss": curve.curve[-1]["val_loss"], "history": history,
            **timer.as_dict("train")}


def matched_choices(matched: dict[str, str], choices: dict[str, dict[str, Any]]
                    ) -> dict[str, dict[str, Any]]:
    """The choice of each matched control (``{control: source}``): its source's chosen grid
    point (eps, steps, fraction: the same budget), with ``matched_to`` naming the source and no
    validation score of its own (it was not searched)."""
    missing = [s for s in matched.values() if s not in choices]
    if missing:
        raise ValueError(f"online.matched: no choice for source arm(s) {missing}")
    return {control: {"point": dict(choices[source]["point"]), "matched_to": source}
            for control, source in matched.items()}


def cfg_seed(cfg: ExperimentConfig) -> int:
    return cfg.online.selection.seed


def scored_point(run: Run, arm: str, point: dict[str, Any] | None, train: ImageSet,
                 val: ImageSet) -> dict[str, Any]:
    """A finished grid point from its file, or trained now and saved atomically."""
    name = point_name(point) if point is not None else "flips"
    path = selection_dir(run) / arm / f"{name}.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    run.log(f"[selection] {arm} {name}: training on {len(train)} images, validating on "
            f"{len(val)}")
    result = train_point(run, arm, point, train, val)
    key = val_key(train.task)
    run.log(f"[selection] {arm} {name}: validation {key[4:].replace('_', ' ')} "
            f"{result[key]:.4f}")
    if is_main_process():
        atomic_write_json(result, path)
    barrier()
    return result


def select_online(run: Run) -> dict[str, Any]:
    """Search the grid for every online arm of the run (resumable), choose by the config's rule,
    write ``selection/selection.json`` and return it. Reads only ``run.train``."""
    cfg = run.cfg
    sel = cfg.online.selection
    train, val = split_imageset(run.train, test_size=sel.val_size, seed=sel.seed)
    flips = scored_point(run, "none", None, train, val)
    key = val_key(train.task)
    grid: dict[str, list[dict[str, Any]]] = {}
    choices: dict[str, dict[str, Any]] = {}
    for arm in searched_arms(cfg):
        scored = [scored_point(run, arm, p, train, val) for p in cfg.online.grid.points()]
        grid[arm] = [pick(s, score_keys(train.task)) for s in scored]
        best = choose(scored, sel.rule)
        choices[arm] = {"point": best["point"], key: best[key]}
    choices.update(matched_choices(cfg.online.matched, choices))
    choices = {a: choices[a] for a in cfg.arms if a in choices}  # config order
    out = {**selection_header(sel, train, val), "train_sha1": data_sha1(train),
           "val_sha1": data_sha1(val),
           "grid": cfg.online.grid.model_dump(mode="json"), "choices": choices, "scores": grid,
           "flips": pick(flips, flips_keys(train.task))}
    if cfg.online.matched:  # runs from before matched controls keep their selection.json
        out["matched"] = dict(cfg.online.matched)
    if is_main_process():
        atomic_write_json(out, selection_dir(run) / "selection.json")
    barrier()
    return out
