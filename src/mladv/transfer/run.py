"""The transfer run, resumable: data, train-or-reuse the source and target models, craft every
attack on the source (or reuse it), measure, BM3D, the claims and the report.

Finished pieces (checkpoints, adversarial images, BM3D outputs) are saved under the run folder
with a reuse key (:mod:`mladv.fingerprint`: settings plus the content of the data and models)
and reused when the same command is run again; a piece whose key differs is made again.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import make_attack
from ..attacks.registry import attack_options
from ..cam import grad_cam
from ..crafting import craft
from ..data import ImageSet, load_source, split_imageset
from ..denoise import select_for_bm3d
from ..fingerprint import (
    attack_fingerprint,
    attack_settings,
    data_sha1,
    key_digest,
    model_sha1,
    weights_sha1,
)
from ..logs import Log, run_log, stderr_log
from ..models import check_pretrained, load_checkpoint
from ..reporting import pm
from ..reuse import saved_with_key, train_or_reuse
from ..utils import atomic_torch_save, atomic_write_text, output_dir, resolve_device
from .claims import claims, ranking_claims
from .config import AttackSpec, ModelSpec, TransferConfig, dump_config
from .measure import (
    CI_BOOT,
    blackbox_cis,
    denoise_all,
    figure_panels,
    file_name,
    measure_attack,
    measure_bm3d,
    predictions,
    seed_groups,
    seed_summary,
)
from .report import fig3_grid, pick_figure_image, write_reports


def prepare_data(cfg: TransferConfig) -> tuple[ImageSet, ImageSet]:
    """``(train, test)``: the patient-aware split of ``data``, or all of ``data`` and
    ``test_data``; the test set capped at ``max_images`` (a sample seeded with ``seed``)."""
    data = load_source(cfg.data, cfg.image_size, seed=cfg.seed, progress=cfg.progress,
                       dicom_mode=cfg.dicom_mode)
    if data.task != "multiclass":  # before any model is trained
        raise ValueError(f"data: {cfg.data} is a multilabel set; the transfer study measures "
                         "multiclass (arg-max) attack success")
    if cfg.test_data:
        train = data
        test = load_source(cfg.test_data, cfg.image_size, classes=data.classes, seed=cfg.seed + 1,
                           dicom_mode=cfg.dicom_mode)
    else:
        train, test = split_imageset(data, test_size=cfg.split.test_size, seed=cfg.split_seed())
    if cfg.max_images and len(test) > cfg.max_images:
        gen = torch.Generator().manual_seed(cfg.seed)
        pick = torch.randperm(len(test), generator=gen)[:cfg.max_images].sort().values
        test = test.subset(pick)
    return train, test


def check_weights(cfg: TransferConfig) -> None:
    """Read every pretrained backbone the config names now (a wrong name, a missing or foreign
    file, an offline download), before any data is loaded or model trained; one ``ValueError``
    naming the model."""
    for key, spec in cfg.model_specs():
        if spec.weights and not spec.checkpoint:
            try:
                check_pretrained(spec.arch, spec.weights)
            except ValueError as exc:
                raise ValueError(f"{key} model {spec.label}: {exc}") from None


def train_key(cfg: TransferConfig, spec: ModelSpec, train: ImageSet, seed: int
              ) -> dict[str, Any]:
    """What a model trained here depends on (its reuse key); a pretrained backbone enters by
    its name and, for a local file, its content."""
    key = {"arch": spec.arch, "epochs": spec.epochs, "lr": spec.lr, "batch_size": spec.batch_size,
           "seed": seed, "image_size": cfg.image_size, "classes": train.classes,
           "train": data_sha1(train), "n_train": len(train)}
    if spec.weights:
        key.update(weights=spec.weights, freeze_backbone=spec.freeze_backbone,
                   weights_sha1=weights_sha1(spec.weights))
    if cfg.dicom_mode != "voi":  # models from before dicom_mode keep their key
        key["dicom_mode"] = cfg.dicom_mode
    if spec.precision != "auto":  # models from before precision keep their key
        key["precision"] = spec.precision
    return key


def obtain_model(cfg: TransferConfig, key: str, spec: ModelSpec, seed: int, train: ImageSet,
                 folder: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``spec.checkpoint``, or reuse ``folder/<key>-<arch>.pt`` when it was trained with the
    same settings, or train and save it. Returns the model (eval mode) and its info.

    The ``fingerprint`` that keys the crafted images: a loaded checkpoint has no recipe, so its
    weights identify it (:func:`model_sha1`); a model trained here is identified by its recipe
    (:func:`key_digest` of the training key), so a retrain of the same recipe on another
    thread count (weights equal up to float rounding) keeps the images already crafted."""
    if spec.checkpoint:
        model, ckpt = load_checkpoint(spec.checkpoint, map_location=device, arch=spec.arch)
        if ckpt.get("image_size", cfg.image_size) != cfg.image_size:
            raise ValueError(f"checkpoint {spec.checkpoint} was trained at "
                             f"{ckpt['image_size']} px, "
                             f"the run uses image_size {cfg.image_size}")
        return model.eval(), {"classes": ckpt["classes"], "checkpoint": spec.checkpoint,
                              "fingerprint": model_sha1(model), "trained_here": False}
    want = train_key(cfg, spec, train, seed)
    path = folder / f"{key}-{spec.arch}.pt"
    model, metrics, reused = train_or_reuse(
        path, arch=spec.arch, data=train, image_size=cfg.image_size, seed=seed, device=device,
        key=want, weights=spec.weights, freeze_backbone=spec.freeze_backbone, epochs=spec.epochs,
        batch_size=spec.batch_size, lr=spec.lr, precision=spec.precision, progress=cfg.progress,
        desc=f"train {spec.label}")
    return model, {"classes": list(train.classes), "checkpoint": str(path),
                   "fingerprint": key_digest(want), "trained_here": True,
                   "weights": spec.weights, "freeze_backbone": spec.freeze_backbone,
                   "train_seconds": metrics.get("train_wall_s"), "resumed": reused}


def obtain_models(cfg: TransferConfig, train: ImageSet, folder: Path, device: torch.device,
                  log: Log = stderr_log
                  ) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]], dict[str, str]]:
    """The source and target models, keyed ``source``, ``t1``, ... (with ``seeds``:
    ``t1-seed0``, ``t1-seed1``, ..., labelled ``<label> seed <s>``; see
    :meth:`TransferConfig.trained_models`); checkpoints are loaded (and their classes checked)
    before anything is trained."""
    specs = cfg.trained_models()
    labels = {k: spec.label if s is None else f"{spec.label} seed {s}" for k, spec, _, s in specs}
    order = sorted(range(len(specs)), key=lambda i: specs[i][1].checkpoint is None)
    models, infos = {}, {}
    for i in order:
        key, spec, seed, target_seed = specs[i]
        log(f"{key} {labels[key]}: " + ("loading " + spec.checkpoint if spec.checkpoint else
                                        f"{spec.epochs} epochs (or a finished checkpoint)"))
        models[key], infos[key] = obtain_model(cfg, key, spec, seed, train, folder, device)
        infos[key].update(train_seed=seed, target_seed=target_seed)
        check_classes(infos, labels, train.classes)
    keys = [k for k, *_ in specs]
    return ({k: models[k] for k in keys}, {k: infos[k] for k in keys}, labels)


def check_classes(infos: dict[str, dict[str, Any]], labels: dict[str, str],
                  data_classes: list[str]) -> None:
    """Refuse models whose classes differ from the source's, naming both (a source trained
    here has the data's classes)."""
    src = infos["source"]["classes"] if "source" in infos else data_classes
    if list(src) != list(data_classes):
        raise ValueError(f"source model {labels['source']} has classes {list(src)}, the data has "
                         f"{list(data_classes)}")
    for key, info in infos.items():
        if key != "source" and list(info["classes"]) != list(src):
            raise ValueError(f"target model {labels[key]} has classes {list(info['classes'])} but "
                             f"the source model {labels['source']} has {list(src)}")


def obtain_attack(cfg: TransferConfig, spec: AttackSpec, source: nn.Module, source_fp: str,
                  test: ImageSet, folder: Path) -> dict[str, Any]:
    """Craft ``spec`` on the source (or reuse ``folder/<label>.pt`` made the same way).
    Returns ``adv`` (``N x C x H x W``), ``seconds`` and ``queries`` (``N`` or None)."""
    options = attack_options(spec.name, eps=cfg.eps, seed=cfg.seed, options=spec.options)
    attack = make_attack(spec.name, source, **options)
    common = {"source": source_fp, "test": data_sha1(test), "batch_size": cfg.batch_size}
    key = key_digest({"attack": attack_fingerprint(attack), **common})
    settings = {"attack": {"name": spec.name, **attack_settings(attack),
                           "seed": getattr(attack, "seed", None)}, **common}
    path = folder / f"{file_name(spec.title)}.pt"
    saved = saved_with_key(path, key, settings)
    if saved is not None:
        return {**saved, "resumed": True}
    start = time.perf_counter()
    adv, queries = craft(attack, test.images, test.labels, batch_size=cfg.batch_size,
                         progress=cfg.progress, desc=spec.title, record_queries=True)
    result = {"adv": adv, "seconds": time.perf_counter() - start, "queries": queries,
              "key": key, "settings": settings, "repr": repr(attack)}
    atomic_torch_save(result, path)
    return {**result, "resumed": False}


def attack_row(spec: AttackSpec, res: dict[str, Any], measured: dict[str, Any],
               n_test: int) -> dict[str, Any]:
    """One attack's entry of ``transfer.json``."""
    row = {"name": spec.name, "options": spec.options, "repr": res["repr"], "key": res["key"],
           "seconds": res["seconds"], "seconds_per_image": res["seconds"] / max(1, n_test),
           "resumed": res["resumed"], **measured}
    if res["queries"] is not None:
        q = res["queries"].float()
        row["queries"] = {"mean": q.mean().item(), "median": q.median().item(),
                          "max": int(q.max().item())}
    return row


def run_transfer(cfg: TransferConfig, out: str | Path, *, log: Log = stderr_log
                 ) -> dict[str, Any]:
    """Run (or resume) the transfer experiment into ``out``; returns the results dict also
    written as ``transfer.json`` (and ``transfer.csv``, ``transfer.md``, ``transfer.html``)."""
    # before any work: a file or a read-only folder is one line, and one run per folder (a
    # second one is refused naming the first: pid, host, command, start time)
    with output_dir(out) as folder:
        return _run_locked(cfg, folder, log)


def _run_locked(cfg: TransferConfig, out: Path, log: Log) -> dict[str, Any]:
    """:func:`run_transfer` once its folder is locked. ``config.yaml`` is written at the start
    only into a folder that has none; a rerun rewrites it once every finished piece has been
    checked (reused or made again), so a rerun refused for changed settings leaves the config
    of the run that made the folder's pieces."""
    wall = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    check_weights(cfg)
    config_path = out / "config.yaml"
    if not config_path.is_file():
        atomic_write_text(dump_config(cfg), config_path)
    train, test = prepare_data(cfg)
    log = run_log(log, out)  # also OUT/log.txt, as the experiment's
    log(f"data {cfg.data}: {len(train)} train / {len(test)} test images, classes {train.classes}")

    models, infos, labels = obtain_models(cfg, train, out / "models", device, log)
    clean_pred = predictions(models, test.images)
    for key in models:
        infos[key]["clean_acc"] = (clean_pred[key] == test.labels).float().mean().item()
        log(f"{key} {labels[key]}: clean test accuracy {infos[key]['clean_acc']:.3f}")

    cam = grad_cam(models["source"], test.images, layer=cfg.cam.layer)
    advs, attacks, hits = {}, {}, {}
    groups = seed_groups(cfg)
    for spec in cfg.attacks:
        log(f"{spec.title}: crafting on {len(test)} images (or reusing a finished run)")
        res = obtain_attack(cfg, spec, models["source"], infos["source"]["fingerprint"], test,
                            out / "attacks")
        advs[spec.title] = res["adv"]
        adv_pred = predictions(models, res["adv"])
        hits[spec.title] = {k: (p != test.labels).numpy() for k, p in adv_pred.items()}
        measured = measure_attack(res["adv"], test, models, clean_pred, cam, cfg.cam.top,
                                  adv_pred=adv_pred)
        if groups is not None:
            measured["seeds"] = seed_summary(measured["success"], groups)
        row = attacks[spec.title] = attack_row(spec, res, measured, len(test))
        log(f"{spec.title}: white-box {row['success']['source']:.3f}, black-box avg "
            f"{row['success']['blackbox_avg']:.3f}" +
            ("" if groups is None else f" ({pm(row['seeds']['blackbox_avg'])} over target "
                                       f"seeds)") + f", {row['seconds_per_image']:.3f} s/img")

    index = select_for_bm3d(len(test), cfg.bm3d.max_images, cfg.seed)
    log(f"BM3D on {len(index)} images x {1 + len(advs)} versions")
    t0 = time.perf_counter()
    denoised = denoise_all(cfg, test, advs, index,
                           {t: a["key"] for t, a in attacks.items()}, out / "bm3d")
    bm3d = measure_bm3d(denoised, advs, test, index, models)
    bm3d["seconds"] = time.perf_counter() - t0
    atomic_write_text(dump_config(cfg), config_path)  # every piece now agrees with cfg

    results = assemble(cfg, train, test, infos, labels, attacks, bm3d)
    correct = {k: (p == test.labels).numpy() for k, p in clean_pred.items()}
    results["blackbox_ci"] = blackbox_cis(correct, hits, {t: a["name"] for t, a in
                                                          attacks.items()},
                                          test.groups, n_boot=CI_BOOT, seed=cfg.seed)
    ranking = ranking_claims(results)
    results["claims"] = ranking + results["claims"]
    for claim in ranking:
        log(claim["sentence"])
    fig = out / "transfer_fig3.png"
    figure_image = pick_figure_image(clean_pred["source"], test.labels, index)
    cam_pred = figure_panels(models["source"], test, advs, figure_image, cfg.cam.layer)
    fig3_grid(fig, cam_pred, test, advs, denoised, index, figure_image, cfg)
    results["figure"] = {"path": fig.name, "test_index": figure_image,
                         "image": test.paths[figure_image]}
    results["wall_seconds"] = time.perf_counter() - wall
    write_reports(results, out)
    return results


def assemble(cfg: TransferConfig, train: ImageSet, test: ImageSet, infos: dict[str, Any],
             labels: dict[str, str], attacks: dict[str, Any], bm3d: dict[str, Any]
             ) -> dict[str, Any]:
    """The results dict of ``transfer.json`` (tensors dropped), with the claims."""
    specs = {key: spec for key, spec, *_ in cfg.trained_models()}
    results: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "data": {"source": cfg.data, "test_source": cfg.test_data or "split",
                 "n_train": len(train), "n_test": len(test), "classes": train.classes,
                 "image_size": cfg.image_size},
        "eps": cfg.eps_unit(), "eps_255": cfg.eps,
        "models": {k: {"label": labels[k], "arch": specs[k].arch,
                       **{f: infos[k].get(f) for f in ("clean_acc", "checkpoint", "trained_here",
                                                       "train_seconds", "resumed", "weights",
                                                       "freeze_backbone")},
                       "clean_acc_bm3d": bm3d["clean_acc"][k]} for k in infos},
        "attacks": attacks,
        "bm3d": {"n": bm3d["n"], "sigma": (cfg.bm3d.sigma or cfg.eps) / 255.0,
                 "profile": cfg.bm3d.profile, "seconds": bm3d["seconds"],
                 "attacks": {t: bm3d[t] for t in attacks}},
        "cam": {"top": cfg.cam.top, "layer": cfg.cam.layer or "default (last spatial stage)"},
    }
    groups = seed_groups(cfg)
    if groups is not None:
        results["seeds"] = {"seeds": cfg.seed_list(), "targets": groups}
        for k in infos:
            results["models"][k]["target_seed"] = infos[k].get("target_seed")
    results["claims"] = claims(results)
    return results
