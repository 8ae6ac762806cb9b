"""The augmentation experiment loop (SPEC section 2.1), resumable per (seed, arm).

For each seed: train the base model on ``x_train`` (flips only); for each arm, build its training
set (a batch transform, or ``x_train ∪ x'_train`` with ``x'_train`` crafted on the base model,
true labels kept), retrain from scratch with the same schedule and the same initialisation seed,
and score it on the clean test set and for robustness (MLAdv and PGD crafted on the arm's own
model; Gaussian noise; see :mod:`.evaluation`). Online arms (:mod:`.selection`) first get
their eps / steps / fraction from a grid searched on a validation split of ``x_train`` (seed
``online.selection.seed``), before any test image is scored. The ``none`` arm IS the base
model: its recipe (flips, same seed, same schedule) is the base model's, so training it again
would give the same weights.

Run folder::

    config.yaml  run.json                         resolved config; what finished pieces used
    seed-S/models/{base,ARM}.pt                   checkpoints (atomic)
    seed-S/adv/ARM/shard-*.pt, manifest.json      x'_train of the adversarial arms (atomic shards)
    seed-S/results/ARM.json                       one finished (seed, arm) (atomic)
    selection/ARM/POINT.json, selection.json      online arms: the validation grid, the choices
    results.json  results.csv  report.md  report.html  figures/

A rerun of the same command skips every finished (seed, arm), reuses checkpoints and shards, and
gives the same numbers as an uninterrupted run. A rerun with changed settings goes on when no
finished piece depends on the change (a config fixed after a failure keeps the trained base
models, which depend only on the architecture, size, schedule, split and data); otherwise it is
refused in one line naming the differences, a finished piece, and what to delete.

Under ``torchrun --nproc_per_node N -m mladv experiment ...`` every rank walks the same loop:
training is data-parallel (DDP, :func:`mladv.training.train_classifier`), each rank crafts its own
shards of ``x'_train`` (:func:`mladv.augment.craft_shards`), and rank 0 alone writes checkpoints,
results and the report, with a barrier after each write so that every rank sees the same files
(the run folder must be on a file system all ranks share). After training, every rank loads rank
0's checkpoint, so all ranks craft and score with the same weights and buffers.

The data's task (``ImageSet.task``) decides the primary metric (:func:`.claims.primary_metric`):
a multiclass set is scored by accuracy, a multilabel one (``nih:ROOT``, a multilabel ``csv:``)
by the macro AUROC, per-finding AUROC and the multilabel robustness columns
(:mod:`.measure`); settings that do not apply to the task are refused before any training
(:func:`.measure.check_task_settings`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..adversarial_training import AdversarialBatch
from ..augment import craft_shards, load_shards, union
from ..crafting import attack_metrics
from ..data import ImageSet, load_source, split_imageset
from ..distributed import barrier, init_from_env, is_distributed, is_main_process, rank_and_world
from ..fingerprint import attack_settings, data_sha1
from ..logs import Log, run_log, stderr_log
from ..models import ImageClassifier, check_pretrained, load_checkpoint
from ..resume import differences, refuse_changed
from ..reuse import train_or_reuse
from ..training import predict_logits
from ..utils import atomic_write_json, atomic_write_text, output_dir
from .arms import ARMS, batch_transform, make_adversary
from .claims import primary_metric
from .config import ExperimentConfig, dump_config
from .measure import (
    calibration,
    check_task_settings,
    multilabel_clean,
    multilabel_robustness,
    robust_subset,
    robustness,
)
from .metrics import classification_metrics
from .report import collect_results, write_report
from .selection import online_batch, select_online
from .state import Run, Timer, online_arms


# -- data ---------------------------------------------------------------------------------------
def load_data(cfg: ExperimentConfig) -> tuple[ImageSet, ImageSet, dict[str, Any]]:
    """``(x_train, x_test, info)``: the patient-aware split of ``data``, or all of ``data`` for
    training and ``test_data`` for testing (its classes must equal the training classes)."""
    if not cfg.data:
        raise ValueError("no data: set 'data' in the config or pass --data PATH (or 'phantoms')")
    data = load_source(cfg.data, cfg.image_size, seed=cfg.split.seed, dicom_mode=cfg.dicom_mode)
    if cfg.test_data:
        test = load_source(cfg.test_data, cfg.image_size, seed=cfg.split.seed + 1,
                           dicom_mode=cfg.dicom_mode)
        if test.classes != data.classes:
            raise ValueError(f"--test-data {cfg.test_data}: its classes {test.classes} differ from "
                             f"the training classes {data.classes} of {cfg.data}")
        return data, test, {"mode": "test-data", "data": cfg.data, "test_data": cfg.test_data}
    train, test = split_imageset(data, test_size=cfg.split.test_size, seed=cfg.split.seed)
    shared = set(train.groups) & set(test.groups)
    if shared:  # split_imageset guarantees this; checked because a leak would void every number
        raise RuntimeError(f"patient groups on both sides of the split: {sorted(shared)[:5]}")
    return train, test, {"mode": "split", "data": cfg.data, "test_size": cfg.split.test_size,
                         "seed": cfg.split.seed, "patient_aware": True}


def prepare(cfg: ExperimentConfig, out: str | Path, log: Log = stderr_log) -> Run:
    """Load the data, check the run folder against a previous run, save the resolved config."""
    out = Path(out)
    device = init_from_env(cfg.device)  # also joins the torchrun process group, if any
    train, test, info = load_data(cfg)
    check_task_settings(cfg, train.task, str(cfg.data))
    log = run_log(log, out, main_process=is_main_process())  # also OUT/log.txt
    run = Run(cfg, out, device, train, test, info, robust_subset(test, cfg), log)
    key = {"config": cfg.resume_key(), "classes": train.classes,
           "train_sha1": data_sha1(train), "test_sha1": data_sha1(test)}
    marker, diff = out / "run.json", []
    if marker.is_file():
        diff = differences(json.loads(marker.read_text()), key)
        if diff:
            check_rerun(out, diff)
            log(f"{out}: settings changed since the last run ({'; '.join(diff[:4])}); nothing "
                f"finished depends on them, so the finished base models are kept")
    if is_main_process() and (not marker.is_file() or diff):
        atomic_write_json(key, marker)
    if is_main_process():
        atomic_write_text(dump_config(cfg), out / "config.yaml")
    barrier()
    return run


# what the base model (flips only) depends on; the other settings only affect later stages
BASE_KEYS = ("config.arch:", "config.image_size:", "config.train.", "config.split.", "classes:",
             "train_sha1:", "test_sha1:")


# settings the online grid search never uses (it trains and validates on x_train only)
SELECTION_FREE_KEYS = ("config.robustness.", "config.eps:", "config.augment.", "test_sha1:")


def finished_pieces(out: Path, diff: list[str]) -> list[Path]:
    """What a run folder holds that was made with the old settings in ``diff``: every result,
    arm model and x'_train folder, the base models too when a setting in ``diff`` is one of
    :data:`BASE_KEYS`, and the online grid's points unless every setting in ``diff`` is one of
    :data:`SELECTION_FREE_KEYS`."""
    base_changed = any(d.startswith(BASE_KEYS) for d in diff)
    pieces = sorted(out.glob("seed-*/results/*.json")) + sorted(out.glob("seed-*/adv/*"))
    if any(not d.startswith(SELECTION_FREE_KEYS) for d in diff):
        pieces += sorted(out.glob("selection/*/*.json"))
    pieces += [p for p in sorted(out.glob("seed-*/models/*.pt"))
               if base_changed or p.name != "base.pt"]
    return pieces


def check_rerun(out: Path, diff: list[str]) -> None:
    """A rerun with changed settings goes on when nothing finished depends on the change (a
    config fixed after a failure keeps its trained base models); otherwise one ``ValueError``
    line says what differs and what to do."""
    pieces = finished_pieces(out, diff)
    if pieces:
        refuse_changed(out, diff, what=f"{len(pieces)} finished piece(s) (e.g. "
                       f"{pieces[0].relative_to(out)})",
                       hint="rerun with those settings, choose another --out, or delete those "
                       "pieces to redo them with the new settings")


# -- models -------------------------------------------------------------------------------------
def load_model(run: Run, path: Path) -> tuple[ImageClassifier, dict[str, Any]]:
    """A finished checkpoint of this run and its metadata; one of another architecture or class
    count is refused, naming both shapes."""
    model, ckpt = load_checkpoint(path, map_location=run.device)
    want = (run.cfg.arch, len(run.classes))
    have = (ckpt["arch"], len(ckpt["classes"]))
    if have != want or list(ckpt["classes"]) != run.classes:
        raise ValueError(f"{path}: checkpoint holds a {have[0]} with {have[1]} classes "
                         f"{ckpt['classes']}; this experiment needs a {want[0]} with {want[1]} "
                         f"classes {run.classes}")
    return model.eval(), ckpt


def train_model(run: Run, seed: int, data: ImageSet, arm: str, path: Path,
                adversarial: AdversarialBatch | None = None
                ) -> tuple[ImageClassifier, dict[str, Any]]:
    """Train (or reuse) the model of ``arm``: fresh init from ``seed``, the config's schedule;
    an online arm crafts per batch with ``adversarial`` (its twin BatchNorm state, for
    ``advprop``, and how it was trained are added to the checkpoint after training)."""
    cfg = run.cfg
    model, meta, reused = train_or_reuse(
        path, arch=cfg.arch, data=data, image_size=cfg.image_size, seed=seed, device=run.device,
        weights=cfg.weights, freeze_backbone=cfg.freeze_backbone, write=is_main_process(),
        load=lambda p: load_model(run, p),
        extra={"arm": arm, "seed": seed,
               "split": run.split_info if run.split_info["mode"] == "split" else None},
        epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay, precision=cfg.train.precision,
        channels_last=cfg.train.channels_last,
        transform=batch_transform(arm, cfg.arm_options, len(run.classes)),
        progress=cfg.progress and is_main_process(), desc=f"seed {seed} {arm}: train",
        adversarial=adversarial)
    if not reused and is_distributed():  # every rank goes on with rank 0's weights and buffers
        barrier()
        model, ckpt = load_model(run, path)
        return model, dict(ckpt["metrics"])
    return model, meta


def base_model(run: Run, seed: int) -> tuple[ImageClassifier, dict[str, Any]]:
    """The model trained on ``x_train`` with flips only (cached per seed)."""
    path = run.seed_dir(seed) / "models" / "base.pt"
    if seed not in run.bases:
        if not path.is_file():
            run.log(f"[seed {seed}] base model: {run.cfg.arch}, {len(run.train)} images, "
                    f"{run.cfg.train.epochs} epochs")
        run.bases[seed] = train_model(run, seed, run.train, "none", path)
    return run.bases[seed]


# -- one (seed, arm) ----------------------------------------------------------------------------
def adversarial_copies(run: Run, seed: int, arm: str) -> tuple[ImageSet, dict[str, Any]]:
    """``x'_train`` of an adversarial arm, crafted on the base model in resumable shards."""
    cfg = run.cfg
    base, _ = base_model(run, seed)
    attack = make_adversary(arm, base, eps=cfg.eps_unit(), seed=seed, pgd_options=cfg.pgd,
                            mladv_options=cfg.mladv)
    folder = run.seed_dir(seed) / "adv" / arm
    rank, world = rank_and_world()
    timer = Timer()
    before = set(folder.glob("shard-*.pt"))
    with timer():
        craft_shards(attack, run.train, folder, shard_size=cfg.augment.shard_size, seed=seed,
                     batch_size=cfg.augment.batch_size, progress=cfg.progress and rank == 0,
                     info={"arm": arm, "seed": seed}, desc=f"seed {seed} {arm}: craft x'_train",
                     rank=rank, world_size=world)
        barrier()  # every rank's shards are on disk
        adv = load_shards(folder)
    settings = made_settings(folder, attack_settings(attack),
                             crafted_now=set(folder.glob("shard-*.pt")) != before)
    quality = attack_metrics(base, run.train.images, adv.images, run.train.labels)
    keep = ("success", "ssim", "psnr", "l1", "linf_max")
    return adv, {"settings": settings, **{k: quality[k] for k in keep},
                 **timer.as_dict("craft")}


MADE_FILE = "made.json"


def made_settings(folder: Path, now: dict[str, Any], *, crafted_now: bool) -> dict[str, Any]:
    """The attack settings of a shard folder as recorded when its shards were crafted: an
    attack's counters (MLAdv's ``backward_passes``, the passes of its last batch) are set by
    crafting, so a folder reused whole on resume would report 0 from the fresh attack. When
    shards were crafted now, ``now`` is recorded in ``folder/made.json`` (rank 0) and returned;
    otherwise the recorded settings are returned (``now`` for a folder from before the record)."""
    path = folder / MADE_FILE
    if crafted_now or not path.is_file():
        if crafted_now and is_main_process():
            atomic_write_json({"settings": now}, path)
        return now
    recorded: dict[str, Any] = json.loads(path.read_text())["settings"]
    return recorded


def run_arm(run: Run, seed: int, arm: str) -> dict[str, Any]:
    """Train and score one (seed, arm); returns its result (also written to
    ``seed-S/results/ARM.json`` by the caller)."""
    spec = ARMS[arm]
    result: dict[str, Any] = {"arm": arm, "seed": seed}
    if arm == "none":
        model, meta = base_model(run, seed)
        result["model"] = "models/base.pt (the none arm's recipe is the base model's)"
    else:
        data, online = run.train, None
        if spec.adversarial:
            adv, result["augment"] = adversarial_copies(run, seed, arm)
            data = union(run.train, adv)  # keeps the task
        if spec.online:
            point = run.choices[arm]["point"]
            online = online_batch(run.cfg, arm, point, seed)
            result["online"] = online.describe() | {"chosen_on_validation": point}
        run.log(f"[seed {seed}] {arm}: training on {len(data)} images"
                + (f", {spec.mode} {spec.attack} {point}" if online is not None else ""))
        path = run.seed_dir(seed) / "models" / f"{arm}.pt"
        model, meta = train_model(run, seed, data, arm, path, online)
        result["model"] = f"models/{arm}.pt"
    timer = Timer()
    with timer():
        if run.train.task == "multilabel":
            logits = predict_logits(model, run.test.images)
            probs = torch.sigmoid(logits).numpy()
            result["clean"] = multilabel_clean(logits, run.test.labels, run.classes)
            result["robust"], result["robust_per_finding"] = multilabel_robustness(
                run, model, seed)
        else:
            probs = torch.softmax(predict_logits(model, run.test.images), 1).numpy()
            result["clean"] = classification_metrics(run.test.labels.numpy(), probs,
                                                     run.classes)
            result["clean"]["ece"] = calibration(probs, run.test.labels,
                                                 run.cfg.robustness.ece_bins)
            result["robust"] = robustness(run, model, seed)
    result.update(n_train=meta["n_train"], history=meta["history"],
                  probs=[[round(float(v), 6) for v in row] for row in probs],
                  timings={k: meta[k] for k in ("train_wall_s", "train_cpu_s")}
                  | {k: v for k, v in result.get("augment", {}).items() if k.startswith("craft_")}
                  | timer.as_dict("eval") | {"torch_threads": torch.get_num_threads()})
    metric = primary_metric(run.train.task)
    run.log(f"[seed {seed}] {arm}: {metric} {result['clean'][metric]:.4f}, "
            + ", ".join(f"{k} {v:.3f}" for k, v in result["robust"].items()))
    return result


def choice_note(choice: dict[str, Any]) -> str:
    """How a grid point was chosen, for the log: its validation score, or its source arm."""
    if "matched_to" in choice:
        return f"matched to {choice['matched_to']}"
    if "val_macro_auroc" in choice:
        return f"val macro AUROC {choice['val_macro_auroc']:.4f}"
    return f"val acc {choice['val_accuracy']:.4f}"


def finished_result(run: Run, seed: int, arm: str) -> dict[str, Any] | None:
    path = run.seed_dir(seed) / "results" / f"{arm}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def report_experiment(cfg: ExperimentConfig, out: str | Path, *,
                      log: Log = stderr_log) -> dict[str, Any]:
    """Write the report of a run from its finished (seed, arm) results only, training nothing
    (a run in progress gets a report marked partial). Returns the ``results.json`` content."""
    run = prepare(cfg, out, log)
    results, probs = collect_results(run)
    if is_main_process():
        write_report(run, results, probs)
    barrier()
    return results


def run_experiment(cfg: ExperimentConfig, out: str | Path, *,
                   log: Log = stderr_log) -> dict[str, Any]:
    """Run (or resume) every (seed, arm) of ``cfg`` into ``out``; write results and the report.

    Returns the content of ``results.json``.
    """
    if cfg.weights is not None:  # a bad name, file or offline download: now, before any data
        check_pretrained(cfg.arch, cfg.weights)  # also weights of another architecture
    # one run per folder: a second one is refused naming the first (pid, host, command, start)
    with output_dir(out, enabled=is_main_process()):
        return _run_locked(cfg, out, log)


def _run_locked(cfg: ExperimentConfig, out: str | Path, log: Log) -> dict[str, Any]:
    """:func:`run_experiment` once its folder is locked."""
    run = prepare(cfg, out, log)
    log = run.log
    log(f"{cfg.name}: {len(run.train)} train / {len(run.test)} test images, classes "
        f"{run.classes}; arms {cfg.arms}; seeds {cfg.seed_list()}; out {run.out}")
    start = time.perf_counter()
    if online_arms(cfg):
        run.choices = select_online(run)["choices"]
        log("online arms, chosen on validation: " + "; ".join(
            f"{a} {c['point']} ({choice_note(c)})" for a, c in run.choices.items()))
    for seed in cfg.seed_list():
        for arm in cfg.arms:
            if finished_result(run, seed, arm) is not None:
                continue
            result = run_arm(run, seed, arm)
            if is_main_process():
                atomic_write_json(result, run.seed_dir(seed) / "results" / f"{arm}.json")
            barrier()
        run.bases.clear()  # free this seed's base model
    results, probs = collect_results(run)
    results["this_invocation_wall_s"] = round(time.perf_counter() - start, 1)
    if is_main_process():
        write_report(run, results, probs)
    barrier()
    return results
