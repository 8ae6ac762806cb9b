"""The transfer experiment's measurements: success per model, size and realism of delta, what
BM3D denoising leaves of each attack (with its outputs reused across runs) and how much of
|delta| lies in the source model's Grad-CAM region."""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from ..cam import aggregation, grad_cam
from ..data import ImageSet
from ..denoise import bm3d_denoise, energy_removed
from ..evaluation.stats import Statistic, paired_ci, verdict
from ..experiment.metrics import mean_std
from ..fingerprint import data_sha1, key_digest
from ..metrics import perturbation_norms, psnr, ssim, success_rate
from ..models import predict_logits
from ..reuse import saved_with_key
from ..utils import atomic_torch_save
from .claims import BASELINE_NAMES
from .config import TransferConfig


def file_name(name: str) -> str:
    """A row title as a file name (``MI-FGSM`` -> ``MI-FGSM``, ``a b/c`` -> ``a_b_c``)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def predictions(models: dict[str, nn.Module], images: Tensor) -> dict[str, Tensor]:
    """Each model's predicted class. Shape: ``N x C x H x W`` -> ``{key: N}``."""
    return {k: predict_logits(m, images).argmax(1) for k, m in models.items()}


def figure_panels(source: nn.Module, test: ImageSet, advs: dict[str, Tensor], i: int,
                  layer: str | None) -> tuple[Tensor, Tensor]:
    """What Fig. 3 shows of the source model for test image ``i``: the Grad-CAM maps
    (``(1 + A) x H x W``) and predicted classes (``1 + A``) of the clean image, then of each of
    the ``A`` attacks' adversarial copies (in ``advs`` order)."""
    imgs = torch.cat([test.images[i:i + 1]] + [adv[i:i + 1] for adv in advs.values()])
    return grad_cam(source, imgs, layer=layer), predict_logits(source, imgs).argmax(1)


def success_table(clean_pred: dict[str, Tensor], adv_pred: dict[str, Tensor],
                  labels: Tensor) -> dict[str, float]:
    """Success on each model (over its clean-correct images), and the black-box average."""
    out = {k: success_rate(clean_pred[k], adv_pred[k], labels) for k in clean_pred}
    targets = [v for k, v in out.items() if k != "source" and not math.isnan(v)]
    out["blackbox_avg"] = sum(targets) / len(targets) if targets else float("nan")
    return out


def measure_attack(adv: Tensor, test: ImageSet, models: dict[str, nn.Module],
                   clean_pred: dict[str, Tensor], cam: Tensor, top: float,
                   adv_pred: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """Success per model, norms of delta (L1 = mean |delta| per pixel), SSIM, PSNR and the
    CAM aggregation for one attack's ``N x C x H x W`` adversarial images (``adv_pred``: the
    models' predictions on them when already made, ``{key: N}``)."""
    if adv_pred is None:
        adv_pred = predictions(models, adv)
    agg = aggregation(adv - test.images, cam, top)
    return {"success": success_table(clean_pred, adv_pred, test.labels),
            **perturbation_norms(test.images, adv), "ssim": ssim(test.images, adv),
            "psnr": psnr_changed(test.images, adv), "cam_aggregation": nanmean(agg)}


def psnr_changed(clean: Tensor, adv: Tensor) -> float:
    """Mean PSNR over the images the attack changed (an unchanged image has infinite PSNR:
    RayS leaves the images the model already gets wrong as they are)."""
    changed = (adv != clean).flatten(1).any(1)
    return psnr(clean[changed], adv[changed]) if changed.any() else float("inf")


def denoise_all(cfg: TransferConfig, test: ImageSet, advs: dict[str, Tensor], index: Tensor,
                keys: dict[str, str], folder: Path) -> dict[str, Tensor]:
    """BM3D of the sampled clean images and of every attack's (``"clean"`` + attack titles),
    reusing saved results; all missing images go through one process pool."""
    sigma = (cfg.bm3d.sigma or cfg.eps) / 255.0
    sources = {"clean": test.images[index], **{t: a[index] for t, a in advs.items()}}
    common = {"sigma": sigma, "profile": cfg.bm3d.profile, "index": index.tolist(),
              "test": data_sha1(test)}
    out, todo = {}, []
    for name, images in sources.items():
        path = folder / f"{file_name(name)}.pt"
        settings = {**common, "of": keys.get(name, "clean")}
        key = key_digest(settings)
        saved = saved_with_key(path, key, settings)
        if saved is not None:
            out[name] = saved["images"]
            continue
        todo.append((name, images, path, settings, key))
    if todo:
        stacked = torch.cat([images for _, images, *_ in todo])
        denoised = bm3d_denoise(stacked, sigma, workers=cfg.bm3d.workers,
                                profile=cfg.bm3d.profile, progress=cfg.progress)
        for (name, _, path, settings, key), chunk in zip(todo, torch.split(denoised, len(index))):
            atomic_torch_save({"images": chunk, "key": key, "settings": settings}, path)
            out[name] = chunk
    return out


def measure_bm3d(denoised: dict[str, Tensor], advs: dict[str, Tensor], test: ImageSet,
                 index: Tensor, models: dict[str, nn.Module]) -> dict[str, Any]:
    """Per attack: success after BM3D (over images each model gets right on the denoised clean
    image) and the share of the perturbation's energy BM3D removed; plus clean accuracies."""
    labels = test.labels[index]
    clean_pred = predictions(models, denoised["clean"])
    out: dict[str, Any] = {"n": int(index.numel()),
                           "clean_acc": {k: (p == labels).float().mean().item()
                                         for k, p in clean_pred.items()}}
    for title, adv in advs.items():
        adv_pred = predictions(models, denoised[title])
        removed = energy_removed(test.images[index], adv[index], denoised["clean"], denoised[title])
        out[title] = {"success": success_table(clean_pred, adv_pred, labels),
                      "energy_removed": nanmean(removed)}
    return out


def nanmean(t: Tensor) -> float:
    """The mean of the non-NaN entries (NaN when there are none)."""
    t = t[~torch.isnan(t)]
    return t.mean().item() if t.numel() else float("nan")


# -- target seeds and the paper's sentence -----------------------------------------------------

CI_BOOT = 1000  # patient-level bootstrap resamples of the black-box CIs


def seed_groups(cfg: TransferConfig) -> list[dict[str, Any]] | None:
    """With ``seeds``: one entry per target, ``{"key": "t1", "label": ..., "models": {"0":
    "t1-seed0", ...}}`` (target seed as a string -> model key); ``None`` without ``seeds``."""
    seeds = cfg.seed_list()
    if seeds is None:
        return None
    return [{"key": f"t{i}", "label": spec.label,
             "models": {str(s): f"t{i}-seed{s}" for s in seeds}}
            for i, spec in enumerate(cfg.targets, start=1)]


def seed_summary(success: dict[str, float], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """One attack's success over target seeds, from its per-model ``success``
    (:func:`success_table`) and :func:`seed_groups`.

    ``per_seed[s]``: each target's success on seed ``s`` (keyed by the target's ``t1`` ...) and
    that seed's black-box average ``b_s = mean_t success(t, s)`` (NaN targets left out);
    ``targets[t]`` and ``blackbox_avg``: ``{"mean", "std", "n"}`` over the seeds of
    ``success(t, s)`` and of ``b_s`` (``std`` the sample standard deviation, ddof = 1;
    :func:`mladv.experiment.metrics.mean_std`)."""
    seeds = list(groups[0]["models"]) if groups else []
    per_seed: dict[str, dict[str, float]] = {}
    for s in seeds:
        row = {g["key"]: success[g["models"][s]] for g in groups}
        vals = [v for v in row.values() if not math.isnan(v)]
        per_seed[s] = {**row, "blackbox_avg": sum(vals) / len(vals) if vals else math.nan}
    return {"per_seed": per_seed,
            "targets": {g["key"]: mean_std([per_seed[s][g["key"]] for s in seeds])
                        for g in groups},
            "blackbox_avg": mean_std([per_seed[s]["blackbox_avg"] for s in seeds])}


def blackbox_statistic(correct: NDArray[np.bool_], hit: NDArray[np.bool_]) -> Statistic:
    """The black-box average as a statistic of image indices: ``correct`` / ``hit`` are
    ``M x N`` (``M`` target models, every target seed; ``correct[m, i]``: model ``m`` gets clean
    image ``i`` right; ``hit[m, i]``: it gets the adversarial image wrong). On indices ``I``
    (repeats counted) ``T(I) = mean_m sum_{i in I} correct[m, i] hit[m, i] / sum_{i in I}
    correct[m, i]`` over the models with a correct image in ``I`` (NaN when none has): on all
    images, the ``blackbox_avg`` of :func:`success_table`."""
    both = correct & hit

    def stat(idx: NDArray[np.intp]) -> float:
        n = correct[:, idx].sum(1)
        rates = both[:, idx].sum(1)[n > 0] / n[n > 0]
        return float(rates.mean()) if rates.size else math.nan
    return stat


def blackbox_cis(correct: dict[str, NDArray[np.bool_]], hits: dict[str, dict[str, NDArray[Any]]],
                 names: dict[str, str], patients: Sequence[Hashable], *, n_boot: int = CI_BOOT,
                 seed: int = 0, level: float = 0.95) -> list[dict[str, Any]]:
    """Paired patient-level bootstrap CIs (:func:`mladv.evaluation.stats.paired_ci`) of the
    black-box average of every MLAdv row minus that of FGSM, GAMA and RayS (their first rows),
    over all target models and seeds (:func:`blackbox_statistic`), both on the same resampled
    patients.

    Args:
        correct: model key -> ``N`` bool, clean prediction right (``source`` is left out).
        hits: attack title -> model key -> ``N`` bool, adversarial prediction wrong.
        names: attack title -> registry name (``mladv``, ``fgsm`` ...).
        patients: one patient id per test image (``ImageSet.groups``).
    Returns one dict per pair: ``attack``, ``baseline`` (titles), ``ours`` / ``theirs`` (the
    averages on all images), ``diff``, ``low``, ``high``, ``level``, ``n_boot``, ``skipped``,
    ``n_patients``, ``n_images`` and ``verdict`` (:func:`mladv.evaluation.stats.verdict`)."""
    keys = [k for k in correct if k != "source"]
    c = np.stack([correct[k] for k in keys]).astype(bool)
    stat = {t: blackbox_statistic(c, np.stack([hits[t][k] for k in keys]).astype(bool))
            for t in names}
    first: dict[str, str] = {}
    for title, name in names.items():
        first.setdefault(name, title)
    everything = np.arange(len(patients), dtype=np.intp)
    out = []
    for title in (t for t, n in names.items() if n == "mladv"):
        for base in (first[b] for b in BASELINE_NAMES if b in first):
            ci = paired_ci(stat[title], stat[base], list(patients), n_boot=n_boot, seed=seed,
                           level=level)
            out.append({"attack": title, "baseline": base, "ours": stat[title](everything),
                        "theirs": stat[base](everything), "diff": ci.estimate, "low": ci.low,
                        "high": ci.high, "level": level, "n_boot": n_boot,
                        "skipped": ci.skipped, "n_patients": ci.n_patients,
                        "n_images": ci.n_images,
                        "verdict": verdict(ci, names=(title, base))})
    return out
