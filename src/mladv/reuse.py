"""Train a model, or reuse the checkpoint a previous run left: the one train-or-reuse step of
both studies (``experiment`` and ``transfer``) and of ``mladv train``; and reuse any other
finished piece saved with its key (:func:`saved_with_key`).

The resume contract (:mod:`mladv.resume`), the same everywhere: a finished piece made with the
same settings is reused; one made with other settings is never thrown away silently: the rerun
is refused with one line naming each differing setting (``KEY: OLD there, NEW now``) and what to
do. A checkpoint records its settings as ``reuse_key`` (settings plus the training data's
fingerprint, see :mod:`mladv.fingerprint`); another piece records them as ``settings`` beside
its ``key`` digest. A missing piece is made from a fresh initialisation seeded with ``seed`` (or
a pretrained backbone with a new head, see :func:`mladv.models.build_model`) and saved
atomically, so an interrupted run never leaves half a checkpoint.

:func:`train_and_save` is ``mladv train``: the flags checked before any data is read, the
checkpoint's own train / test split, training (plain or with a per-batch attack) through
:func:`train_or_reuse`, then ``OUT/model.pt`` and ``OUT/metrics.json``.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adversarial_training import AdversarialBatch, check_advprop
from .attacks import parse_options
from .data import ImageSet, load_source, split_imageset
from .data.dicom import check_dicom_mode
from .distributed import init_from_env, is_main_process
from .fingerprint import data_sha1, weights_sha1
from .logs import Log, run_log, stderr_log
from .models import (
    ImageClassifier,
    build_model,
    check_arch,
    check_freeze,
    check_image_size,
    check_pretrained,
    load_checkpoint,
    predict_logits,
    save_checkpoint,
)
from .resume import differences, refuse_changed
from .training import accuracy, adversarial_from_options, train_classifier
from .units import check_eps_255
from .utils import atomic_write_json, output_dir, set_determinism

Loader = Callable[[Path], tuple[ImageClassifier, dict[str, Any]]]


REMAKE_HINT = "rerun with those settings, choose another output folder, or delete the file"


def reusable(path: Path, key: dict[str, Any] | None, load: Loader
             ) -> tuple[ImageClassifier, dict[str, Any]] | None:
    """``(model in eval mode, checkpoint)`` when ``path`` holds a checkpoint made with ``key``
    (any checkpoint when ``key`` is None); None when there is none. A checkpoint made with
    another key is refused (``ValueError`` naming the differing settings, see
    :func:`mladv.resume.refuse_changed`), never retrained over."""
    if not path.is_file():
        return None
    model, ckpt = load(path)
    if key is not None and ckpt.get("reuse_key") != key:
        refuse_changed(path, differences(ckpt.get("reuse_key"), key),
                       what="a trained model", hint=REMAKE_HINT + " to train it again")
    return model.eval(), ckpt


def saved_with_key(path: Path, key: str, settings: dict[str, Any] | None = None
                   ) -> dict[str, Any] | None:
    """The dict saved at ``path`` (``torch.load(..., weights_only=True)``, on the CPU) when its
    ``key`` field equals ``key``; None when there is no file (the caller makes it and saves it
    with ``key`` and ``settings``, atomically). A piece made another way is refused
    (``ValueError`` naming the settings that differ from its saved ``settings``). Finished
    pieces that are not models (adversarial images, BM3D outputs) are reused this way."""
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(saved, dict) and saved.get("key") == key:
        return dict(saved)
    old = saved.get("settings") if isinstance(saved, dict) else None
    diff = differences(old, settings) if old is not None and settings is not None else []
    refuse_changed(path, diff or [f"key: {_old_key(saved)} there, {key} now"],
                   what="a finished piece", hint=REMAKE_HINT + " to make it again")
    return None


def _old_key(saved: Any) -> str:
    return str(saved.get("key")) if isinstance(saved, dict) else "not a keyed piece"


def train_or_reuse(path: Path, *, arch: str, data: ImageSet, image_size: int, seed: int,
                   device: torch.device, key: dict[str, Any] | None = None,
                   write: bool = True, load: Loader | None = None,
                   extra: dict[str, Any] | None = None,
                   weights: str | os.PathLike[str] | None = None, freeze_backbone: bool = False,
                   **train_kwargs: Any) -> tuple[ImageClassifier, dict[str, Any], bool]:
    """The model at ``path`` if reusable (see :func:`reusable`), else ``arch`` trained on
    ``data`` with ``train_classifier(**train_kwargs)`` from seed ``seed`` and saved there (when
    ``write``: under DDP only rank 0 writes) with ``extra`` checkpoint fields.

    An ``adversarial`` (:class:`mladv.adversarial_training.AdversarialBatch`) among
    ``train_kwargs`` adds its ``checkpoint_extra()`` after training (advprop's twin BatchNorm
    state as trained).

    ``weights`` / ``freeze_backbone`` go to :func:`mladv.models.build_model`: a pretrained
    backbone (torchvision weights name or local state-dict file) under a new head, frozen if
    asked. They do not enter the reuse test by themselves: put them in ``key``.

    Returns ``(model in eval mode, metrics, reused)``; metrics hold ``history`` (one dict per
    epoch), ``n_train``, ``train_wall_s`` and ``train_cpu_s``.
    """
    found = reusable(path, key, load or (lambda p: load_checkpoint(p, map_location=device)))
    if found is not None:
        return found[0], dict(found[1]["metrics"]), True
    wall, cpu = time.perf_counter(), time.process_time()
    set_determinism(seed)
    model = build_model(arch, len(data.classes), weights=weights,
                        freeze_backbone=freeze_backbone).to(device)
    model.task = data.task
    history = train_classifier(model, data, seed=seed, **train_kwargs)
    metrics = {"history": history, "n_train": len(data),
               "train_wall_s": round(time.perf_counter() - wall, 3),
               "train_cpu_s": round(time.process_time() - cpu, 3)}
    if write:
        fields: dict[str, Any] = dict(extra or {})
        adversarial = train_kwargs.get("adversarial")
        if adversarial is not None:  # how it was trained, and advprop's trained twins
            fields.update(adversarial.checkpoint_extra())
        if key is not None:
            fields["reuse_key"] = key
        save_checkpoint(path, model, classes=data.classes, image_size=image_size,
                        epoch=train_kwargs.get("epochs"), metrics=metrics,
                        train_images=data.images, task=data.task, **fields)
    return model.eval(), metrics, False


# -- mladv train --------------------------------------------------------------------------------
def check_train(arch: str, image_size: int, lr: float, test_size: float, weights: str | None,
                freeze_backbone: bool) -> None:
    """The model and schedule flags of ``mladv train``, one ``ValueError`` line each, before any
    data is read (a bad weights name or file, weights of another architecture, an offline
    download: now)."""
    check_arch(arch)
    check_image_size(image_size, arch, option="--image-size")
    if not lr > 0:
        raise ValueError(f"--lr must be > 0, got {lr}")
    if not 0 < test_size < 1:
        raise ValueError(f"--test-size must be in (0, 1), got {test_size}")
    check_freeze(weights, freeze_backbone, freeze_name="--freeze-backbone",
                 weights_name="--weights")
    if weights is not None:
        check_pretrained(arch, weights, key="--weights")


def per_batch_options(option: list[str], adv_eps: float | None) -> dict[str, Any]:
    """``--option KEY=VALUE`` of the per-batch attack; a setting that has its own flag is refused
    (``--option eps=0.01`` next to ``--adv-eps 2`` would mix units), as ``mladv attack`` does,
    and ``--adv-eps`` below 0.5 looks like [0, 1] units, refused as the experiment does."""
    if adv_eps is not None and adv_eps > 0:  # 0: adversarial_from_options names adv_eps
        check_eps_255(adv_eps, "--adv-eps", example=1)
    options = parse_options(option)
    own = {"eps": "--adv-eps", "steps": "--adv-steps", "fraction": "--adv-fraction",
           "seed": "--seed"}
    for key, flag in own.items():
        if key in options:
            raise ValueError(f"--option {key}=...: give it once, as {flag}")
    return options


def per_batch_adversary(adv_mode: str, *, arch: str, freeze_backbone: bool, seed: int,
                        attack: str | None = None, adv_eps: float | None = None,
                        adv_steps: int | None = None, adv_fraction: float | None = None,
                        option: list[str] | None = None) -> AdversarialBatch | None:
    """The per-batch attack of ``--adv-mode online`` / ``advprop`` (None for ``offline``); flags
    left unset keep :func:`~mladv.training.adversarial_from_options`' defaults. A per-batch flag
    with ``offline`` would do nothing and is refused, as is ``advprop`` where it would be plain
    online training (:func:`~mladv.adversarial_training.check_advprop`)."""
    flags = {"--adv-attack": attack, "--adv-eps": adv_eps, "--adv-steps": adv_steps,
             "--adv-fraction": adv_fraction, "--option": option or None}
    given = [flag for flag, value in flags.items() if value is not None]
    if given and adv_mode == "offline":  # they would do nothing: say so
        raise ValueError(f"{given[0]} sets the per-batch attack: it needs --adv-mode online or "
                         "advprop")
    per_batch: dict[str, Any] = {"attack": attack, "adv_eps": adv_eps,  # unset: the defaults
                                 "adv_steps": adv_steps, "adv_fraction": adv_fraction}
    adversarial = adversarial_from_options(
        adv_mode, **{k: v for k, v in per_batch.items() if v is not None},
        options=per_batch_options(option or [], adv_eps), seed=seed)
    if adv_mode == "advprop":
        check_advprop(arch, freeze_backbone)
    return adversarial


def test_metrics(model: nn.Module, test_set: ImageSet) -> dict[str, Any]:
    """What ``mladv train`` reports on the held-out split: ``test_acc`` (multiclass: arg-max
    accuracy); multilabel: ``test_macro_auroc`` (mean of the defined per-finding AUROCs),
    ``test_auroc`` per finding (None where the split holds one class of it) and ``test_acc``, the
    per-finding accuracy at 0.5 over known targets (:mod:`mladv.evaluation.multilabel`)."""
    if test_set.task == "multiclass":
        return {"test_acc": accuracy(model, test_set.images, test_set.labels)}
    from .evaluation.multilabel import macro_auroc, per_finding_auroc
    from .tasks import correct, known_mask

    logits = predict_logits(model, test_set.images)
    aurocs = per_finding_auroc(logits, test_set.labels)
    known = known_mask(test_set.labels)
    hits = correct(logits, test_set.labels, "multilabel")
    return {"test_macro_auroc": macro_auroc(aurocs)[0],
            "test_auroc": {c: None if math.isnan(a) else a
                           for c, a in zip(test_set.classes, aurocs, strict=True)},
            "test_acc": float(hits.sum()) / max(1, int(known.sum()))}


def train_and_save(data: str, out: Path, *, arch: str, image_size: int, weights: str | None,
                   freeze_backbone: bool, epochs: int, batch_size: int, lr: float, seed: int,
                   test_size: float, device: str, skip_bad: bool,
                   adversarial: dict[str, Any], dicom_mode: str = "voi",
                   log: Log = stderr_log) -> dict[str, Any] | None:
    """``mladv train``: ``arch`` trained on ``data``'s train split (patient-aware, ``test_size``
    held out, seeded with ``seed``) through :func:`train_or_reuse`, written to ``out/model.pt``
    (recording its training images and, as ``reuse_key``, every setting and the data's
    fingerprint) and ``out/metrics.json``. Rerunning the same command reuses the finished model;
    other settings on the same ``out`` are refused, naming them. ``adversarial``: the keyword
    arguments of :func:`per_batch_adversary` other than ``arch`` / ``freeze_backbone`` /
    ``seed``. ``dicom_mode`` (``voi`` / ``raw``, :mod:`mladv.data.dicom`) reads DICOM files and
    is recorded in the checkpoint (and in its reuse key when not the default ``voi``, so
    earlier checkpoints keep their key). Under torchrun every rank trains and rank 0 writes.
    Returns the metrics (None on other ranks)."""
    check_train(arch, image_size, lr, test_size, weights, freeze_backbone)
    adv = per_batch_adversary(arch=arch, freeze_backbone=freeze_backbone, seed=seed, **adversarial)
    dev = init_from_env(device)  # under torchrun: DDP process group, cuda:LOCAL_RANK
    with output_dir(out, enabled=is_main_process()):  # rank 0 writes
        log = run_log(log, out, main_process=is_main_process())
        set_determinism(seed)
        dataset = load_source(data, image_size, skip_bad=skip_bad, seed=seed, progress=True,
                              dicom_mode=check_dicom_mode(dicom_mode))
        train_set, test_set = split_imageset(dataset, test_size=test_size, seed=seed)
        log(f"{data}: {len(train_set)} train / {len(test_set)} test images, "
            f"classes {dataset.classes}")
        settings = {"data": data, "arch": arch, "image_size": image_size, "weights": weights,
                    "freeze_backbone": freeze_backbone, "epochs": epochs,
                    "batch_size": batch_size, "lr": lr, "seed": seed, "test_size": test_size,
                    "adversarial": adv.describe() if adv is not None else None}
        if dicom_mode != "voi":  # checkpoints from before --dicom-mode keep their key
            settings["dicom_mode"] = dicom_mode
        key = {**settings, "weights_sha1": weights_sha1(weights),  # a local file's content
               "train_sha1": data_sha1(train_set), "test_sha1": data_sha1(test_set)}
        model, trained, reused = train_or_reuse(
            out / "model.pt", arch=arch, data=train_set, image_size=image_size, seed=seed,
            device=dev, key=key, write=is_main_process(), weights=weights,
            freeze_backbone=freeze_backbone, epochs=epochs, batch_size=batch_size, lr=lr,
            adversarial=adv, extra={"data": data, "split": {"seed": seed, "test_size": test_size},
                                    "dicom_mode": dicom_mode})
        if reused:
            log(f"{out / 'model.pt'}: trained with these settings already; reused")
        if not is_main_process():  # every rank trained the same model; rank 0 evaluates, writes
            return None
        metrics = {**test_metrics(model, test_set),
                   "train_acc": trained["history"][-1]["train_acc"],
                   "train_seconds": trained["train_wall_s"], "reused": reused,
                   "n_train": len(train_set), "n_test": len(test_set),
                   "skipped": [p for p, _ in dataset.skipped]}
        atomic_write_json({**settings, "history": trained["history"], **metrics},
                          out / "metrics.json")
    return metrics
