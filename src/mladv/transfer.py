"""The transfer experiment (SPEC "Attack success", Table 1 and Fig. 3), behind ``mladv transfer``.

One source model and several target models are trained on the same training images (or loaded
from checkpoints); every attack is crafted on the source at the same eps; each model's success
rate is counted over the test images it classifies correctly when clean. Per attack it also
measures time, queries (RayS), the norms of delta, SSIM / PSNR, what BM3D denoising leaves of
the attack, and how much of |delta| lies in the source's Grad-CAM region. Finished pieces
(checkpoints, adversarial images, BM3D outputs) are saved under the run folder and reused when
the same command is run again.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import Tensor, nn

from .attacks import ATTACKS, Attack, make_attack
from .cam import aggregation, grad_cam
from .data import ImageSet, load_source, split_imageset
from .denoise import bm3d_denoise, energy_removed, select_for_bm3d
from .metrics import perturbation_norms, psnr, ssim, success_rate
from .models import build_model, check_arch, load_checkpoint, save_checkpoint
from .training import predict_logits, train_classifier
from .utils import (
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    progress_bar,
    resolve_device,
    set_determinism,
)

DISPLAY = {"fgsm": "FGSM", "pgd": "PGD", "mifgsm": "MI-FGSM", "pifgsm": "PI-FGSM",
           "gama": "GAMA", "rays": "RayS", "mladv": "MLAdv"}
# SPEC, Table 1: attack success % crafted on ResNet50 (COVID-19 set, 224 px)
PAPER_TARGETS = ["ResNet101", "VGG16", "ResNet152"]
PAPER_TABLE1 = {"fgsm": (80.9, 29.6, 19.4, 20.3, 23.1), "gama": (100.0, 38.0, 33.1, 33.9, 35.0),
                "rays": (99.8, 54.1, 43.5, 50.9, 49.5), "mladv": (100.0, 73.1, 51.2, 67.4, 63.9)}


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSpec(Strict):
    """A model of the experiment: trained here (``epochs``, ``lr``, ``batch_size``) or loaded
    from ``checkpoint`` (a ``model.pt`` of ``mladv train``)."""

    arch: str
    name: str | None = None
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    checkpoint: str | None = None

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        return check_arch(value)

    @property
    def label(self) -> str:
        return self.name or self.arch


class AttackSpec(Strict):
    """An attack from the registry; ``options`` go to its constructor (eps and seed are the
    run's). ``label`` names its row (default: the usual name, e.g. ``MI-FGSM``)."""

    name: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_attack(cls, value: str) -> str:
        if value.lower() not in ATTACKS:
            raise ValueError(f"unknown attack {value!r}; valid: {', '.join(sorted(ATTACKS))}")
        return value.lower()

    @field_validator("options")
    @classmethod
    def _run_controlled(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in ("eps", "seed", "model"):
            if key in value:
                raise ValueError(f"{key!r} is set by the run (top-level eps / seed), not per attack")
        return value

    @model_validator(mode="after")
    def _constructible(self) -> AttackSpec:
        """Build the attack once on a throw-away model, so bad options (a RayS budget of 0, an
        unknown keyword) are refused when the config is read, not after hours of training."""
        make_attack(self.name, build_model("tiny_cnn", 2), eps=8 / 255, **self.options)
        return self

    @property
    def title(self) -> str:
        return self.label or DISPLAY.get(self.name, self.name)


class BM3DSpec(Strict):
    """BM3D: at most ``max_images`` test images (a seeded sample beyond), noise level ``sigma``
    in 1/255 units (default: the run's eps), ``workers`` processes (default: all cores)."""

    max_images: int = Field(60, ge=1)
    sigma: float | None = Field(None, gt=0, le=255)
    profile: str = "np"
    workers: int | None = Field(None, ge=1)


class CAMSpec(Strict):
    """Grad-CAM of the source model: the ``top`` share of pixels is the attended region;
    ``layer`` a module name (default: the last spatial stage, see ``mladv.cam``)."""

    top: float = Field(0.2, gt=0, le=1)
    layer: str | None = None


def _default_attacks() -> list[AttackSpec]:
    return [AttackSpec(name=n) for n in ("fgsm", "pgd", "mifgsm", "pifgsm", "gama", "rays", "mladv")]


class TransferConfig(Strict):
    """Everything a transfer run depends on. ``eps`` is in 1/255 units, like ``--eps``."""

    name: str = "transfer"
    data: str = "phantoms"
    test_data: str | None = None
    image_size: int = Field(128, ge=16)
    test_size: float = Field(0.15, gt=0, lt=1)
    max_test_images: int | None = Field(None, ge=1)
    seed: int = 0
    eps: float = Field(8.0, gt=0, le=255)
    source: ModelSpec
    targets: list[ModelSpec] = Field(min_length=1)
    attacks: list[AttackSpec] = Field(default_factory=_default_attacks, min_length=1)
    batch_size: int = Field(32, ge=1)
    bm3d: BM3DSpec = Field(default_factory=BM3DSpec)
    cam: CAMSpec = Field(default_factory=CAMSpec)
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    progress: bool = True

    @field_validator("attacks")
    @classmethod
    def _unique_labels(cls, value: list[AttackSpec]) -> list[AttackSpec]:
        titles = [a.title for a in value]
        twice = sorted({t for t in titles if titles.count(t) > 1})
        if twice:
            raise ValueError(f"attack rows named twice: {twice}; give them distinct labels")
        return value

    def model_specs(self) -> list[tuple[str, ModelSpec]]:
        """``(key, spec)`` for the source and every target, keys unique (``source``, ``t1``...)."""
        return [("source", self.source)] + [(f"t{i + 1}", t) for i, t in enumerate(self.targets)]

    def eps_unit(self) -> float:
        return self.eps / 255.0


def _error_line(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (not a setting of this section)"
    more = len(exc.errors()) - 1
    return f"{source}: {loc}: {msg}" + (f" (and {more} more problem(s))" if more else "")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TransferConfig:
    """Read the YAML at ``path`` (``yaml.safe_load``), apply ``overrides`` (flags; ``None``
    values ignored) and validate; ``ValueError`` with one line naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TransferConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(_error_line(exc, str(path))) from None


def dump_config(cfg: TransferConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# data and models
# ---------------------------------------------------------------------------------------------
def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _images_fp(data: ImageSet) -> str:
    """Which images, by class folder and file name (so ``../shared/x`` and ``/work/shared/x``
    are the same data), and their labels."""
    return _fingerprint([["/".join(Path(p).parts[-2:]) for p in data.paths], data.labels.tolist()])


def prepare_data(cfg: TransferConfig) -> tuple[ImageSet, ImageSet]:
    """``(train, test)``: the patient-aware split of ``data``, or all of ``data`` and
    ``test_data``; the test set capped at ``max_test_images`` (a seeded sample)."""
    data = load_source(cfg.data, cfg.image_size, seed=cfg.seed, progress=cfg.progress)
    if cfg.test_data:
        train = data
        test = load_source(cfg.test_data, cfg.image_size, classes=data.classes, seed=cfg.seed + 1)
    else:
        train, test = split_imageset(data, test_size=cfg.test_size, seed=cfg.seed)
    if cfg.max_test_images and len(test) > cfg.max_test_images:
        gen = torch.Generator().manual_seed(cfg.seed)
        test = test.subset(torch.randperm(len(test), generator=gen)[:cfg.max_test_images].sort().values)
    return train, test


def _train_key(cfg: TransferConfig, spec: ModelSpec, train: ImageSet, seed: int) -> dict[str, Any]:
    return {"arch": spec.arch, "epochs": spec.epochs, "lr": spec.lr, "batch_size": spec.batch_size,
            "seed": seed, "image_size": cfg.image_size, "classes": train.classes,
            "train": _images_fp(train), "n_train": len(train)}


def obtain_model(cfg: TransferConfig, key: str, spec: ModelSpec, seed: int, train: ImageSet,
                 folder: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``spec.checkpoint``, or reuse ``folder/<key>-<arch>.pt`` when it was trained with the
    same settings, or train and save it. Returns the model (eval mode) and its info."""
    if spec.checkpoint:
        model, ckpt = load_checkpoint(spec.checkpoint, map_location=device, arch=spec.arch)
        if ckpt.get("image_size", cfg.image_size) != cfg.image_size:
            raise ValueError(f"checkpoint {spec.checkpoint} was trained at {ckpt['image_size']} px, "
                             f"the run uses image_size {cfg.image_size}")
        return model.eval(), {"classes": ckpt["classes"], "checkpoint": spec.checkpoint,
                              "fingerprint": _fingerprint([spec.checkpoint, ckpt.get("metrics")]),
                              "trained_here": False}
    path = folder / f"{key}-{spec.arch}.pt"
    want = _train_key(cfg, spec, train, seed)
    if path.is_file():
        model, ckpt = load_checkpoint(path, map_location=device)
        if ckpt.get("transfer_key") == want:
            return model.eval(), {"classes": ckpt["classes"], "checkpoint": str(path),
                                  "fingerprint": _fingerprint(want), "trained_here": True,
                                  "train_seconds": ckpt["metrics"].get("train_seconds"),
                                  "resumed": True}
    set_determinism(seed)
    model = build_model(spec.arch, len(train.classes)).to(device)
    start = time.perf_counter()
    history = train_classifier(model, train, epochs=spec.epochs, batch_size=spec.batch_size,
                               lr=spec.lr, seed=seed, progress=cfg.progress,
                               desc=f"train {spec.label}")
    seconds = time.perf_counter() - start
    save_checkpoint(path, model, classes=train.classes, image_size=cfg.image_size,
                    epoch=spec.epochs, metrics={"train_seconds": seconds,
                                                "train_acc": history[-1]["train_acc"]},
                    transfer_key=want)
    return model.eval(), {"classes": list(train.classes), "checkpoint": str(path),
                          "fingerprint": _fingerprint(want), "trained_here": True,
                          "train_seconds": seconds, "resumed": False}


def obtain_models(cfg: TransferConfig, train: ImageSet, folder: Path, device: torch.device,
                  log=print
                  ) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]], dict[str, str]]:
    """The source and target models, keyed ``source``, ``t1``, ...; checkpoints are loaded (and
    their classes checked) before anything is trained."""
    specs = cfg.model_specs()
    labels = {k: s.label for k, s in specs}
    order = sorted(range(len(specs)), key=lambda i: specs[i][1].checkpoint is None)
    models, infos = {}, {}
    for i in order:
        key, spec = specs[i]
        log(f"{key} {spec.label}: " + ("loading " + spec.checkpoint if spec.checkpoint else
                                       f"{spec.epochs} epochs (or a finished checkpoint)"))
        models[key], infos[key] = obtain_model(cfg, key, spec, cfg.seed + i, train, folder, device)
        check_classes(infos, labels, train.classes)
    keys = [k for k, _ in specs]
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


# ---------------------------------------------------------------------------------------------
# attacks
# ---------------------------------------------------------------------------------------------
def craft_with_queries(attack: Attack, images: Tensor, labels: Tensor, batch_size: int,
                       progress: bool, desc: str) -> tuple[Tensor, Tensor | None]:
    """Run ``attack`` in batches; also collect ``last_queries`` when the attack records it
    (RayS). Shape: ``N x C x H x W`` -> same (CPU), queries ``N`` or None."""
    bar = progress_bar(images.shape[0], desc, "img", enabled=progress)
    advs, queries = [], []
    for start in range(0, images.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        advs.append(attack(images[sl], labels[sl]).cpu())
        if hasattr(attack, "last_queries"):
            queries.append(attack.last_queries.cpu())
        bar.update(advs[-1].shape[0])
    bar.close()
    return torch.cat(advs), (torch.cat(queries) if queries else None)


def obtain_attack(cfg: TransferConfig, spec: AttackSpec, source: nn.Module, source_fp: str,
                  test: ImageSet, folder: Path) -> dict[str, Any]:
    """Craft ``spec`` on the source (or reuse ``folder/<label>.pt`` made the same way).
    Returns ``adv`` (``N x C x H x W``), ``seconds`` and ``queries`` (``N`` or None)."""
    attack = make_attack(spec.name, source, eps=cfg.eps_unit(), seed=cfg.seed, **spec.options)
    key = {"attack": repr(attack), "source": source_fp, "test": _images_fp(test),
           "batch_size": cfg.batch_size}
    path = folder / f"{_safe(spec.title)}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == _fingerprint(key):
            return {**saved, "resumed": True}
    start = time.perf_counter()
    adv, queries = craft_with_queries(attack, test.images, test.labels, cfg.batch_size,
                                      cfg.progress, spec.title)
    result = {"adv": adv, "seconds": time.perf_counter() - start, "queries": queries,
              "key": _fingerprint(key), "repr": repr(attack)}
    atomic_torch_save(result, path)
    return {**result, "resumed": False}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------
def predictions(models: dict[str, nn.Module], images: Tensor) -> dict[str, Tensor]:
    return {k: predict_logits(m, images).argmax(1) for k, m in models.items()}


def success_table(clean_pred: dict[str, Tensor], adv_pred: dict[str, Tensor],
                  labels: Tensor) -> dict[str, float]:
    """Success on each model (over its clean-correct images), and the black-box average."""
    out = {k: success_rate(clean_pred[k], adv_pred[k], labels) for k in clean_pred}
    targets = [v for k, v in out.items() if k != "source" and not math.isnan(v)]
    out["blackbox_avg"] = sum(targets) / len(targets) if targets else float("nan")
    return out


def denoise_all(cfg: TransferConfig, test: ImageSet, advs: dict[str, Tensor], index: Tensor,
                keys: dict[str, str], folder: Path) -> dict[str, Tensor]:
    """BM3D of the sampled clean images and of every attack's (``"clean"`` + attack titles),
    reusing saved results; all missing images go through one process pool."""
    sigma = (cfg.bm3d.sigma or cfg.eps) / 255.0
    sources = {"clean": test.images[index], **{t: a[index] for t, a in advs.items()}}
    common = {"sigma": sigma, "profile": cfg.bm3d.profile, "index": index.tolist(),
              "test": _images_fp(test)}
    out, todo = {}, []
    for name, images in sources.items():
        path = folder / f"{_safe(name)}.pt"
        key = _fingerprint({**common, "of": keys.get(name, "clean")})
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                out[name] = saved["images"]
                continue
        todo.append((name, images, path, key))
    if todo:
        stacked = torch.cat([images for _, images, _, _ in todo])
        denoised = bm3d_denoise(stacked, sigma, workers=cfg.bm3d.workers,
                                profile=cfg.bm3d.profile, progress=cfg.progress)
        for (name, _, path, key), chunk in zip(todo, denoised.split(len(index))):
            atomic_torch_save({"images": chunk, "key": key}, path)
            out[name] = chunk
    return out


def measure_attack(adv: Tensor, test: ImageSet, models: dict[str, nn.Module],
                   clean_pred: dict[str, Tensor], cam: Tensor, top: float) -> dict[str, Any]:
    """Success per model, norms of delta (L1 = mean |delta| per pixel), SSIM, PSNR and the
    CAM aggregation for one attack's ``N x C x H x W`` adversarial images."""
    adv_pred = predictions(models, adv)
    agg = aggregation(adv - test.images, cam, top)
    return {"success": success_table(clean_pred, adv_pred, test.labels),
            **perturbation_norms(test.images, adv), "ssim": ssim(test.images, adv),
            "psnr": _psnr_changed(test.images, adv), "cam_aggregation": _nanmean(agg)}


def _psnr_changed(clean: Tensor, adv: Tensor) -> float:
    """Mean PSNR over the images the attack changed (an unchanged image has infinite PSNR:
    RayS leaves the images the model already gets wrong as they are)."""
    changed = (adv != clean).flatten(1).any(1)
    return psnr(clean[changed], adv[changed]) if changed.any() else float("inf")


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
                      "energy_removed": _nanmean(removed)}
    return out


def _nanmean(t: Tensor) -> float:
    t = t[~torch.isnan(t)]
    return t.mean().item() if t.numel() else float("nan")


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def run_transfer(cfg: TransferConfig, out: str | Path, *, log=print) -> dict[str, Any]:
    """Run (or resume) the transfer experiment into ``out``; returns the results dict also
    written as ``transfer.json`` (and ``transfer.csv``, ``transfer.md``, ``transfer.html``)."""
    out = Path(out)
    wall = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    atomic_write_text(dump_config(cfg), out / "config.yaml")
    train, test = prepare_data(cfg)
    log(f"data {cfg.data}: {len(train)} train / {len(test)} test images, classes {train.classes}")

    models, infos, labels = obtain_models(cfg, train, out / "models", device, log)
    clean_pred = predictions(models, test.images)
    for key in models:
        infos[key]["clean_acc"] = (clean_pred[key] == test.labels).float().mean().item()
        log(f"{key} {labels[key]}: clean test accuracy {infos[key]['clean_acc']:.3f}")

    cam = grad_cam(models["source"], test.images, layer=cfg.cam.layer)
    advs, attacks = {}, {}
    for spec in cfg.attacks:
        log(f"{spec.title}: crafting on {len(test)} images (or reusing a finished run)")
        res = obtain_attack(cfg, spec, models["source"], infos["source"]["fingerprint"], test,
                            out / "attacks")
        advs[spec.title] = res["adv"]
        attacks[spec.title] = {"name": spec.name, "options": spec.options, "repr": res["repr"],
                               "key": res["key"], "seconds": res["seconds"],
                               "seconds_per_image": res["seconds"] / max(1, len(test)),
                               "resumed": res["resumed"],
                               **measure_attack(res["adv"], test, models, clean_pred, cam,
                                                cfg.cam.top)}
        if res["queries"] is not None:
            q = res["queries"].float()
            attacks[spec.title]["queries"] = {"mean": q.mean().item(), "median": q.median().item(),
                                              "max": int(q.max().item())}
        log(f"{spec.title}: white-box {attacks[spec.title]['success']['source']:.3f}, "
            f"black-box avg {attacks[spec.title]['success']['blackbox_avg']:.3f}, "
            f"{attacks[spec.title]['seconds_per_image']:.3f} s/img")

    index = select_for_bm3d(len(test), cfg.bm3d.max_images, cfg.seed)
    log(f"BM3D on {len(index)} images x {1 + len(advs)} versions")
    t0 = time.perf_counter()
    denoised = denoise_all(cfg, test, advs, index,
                           {t: a["key"] for t, a in attacks.items()}, out / "bm3d")
    bm3d = measure_bm3d(denoised, advs, test, index, models)
    bm3d["seconds"] = time.perf_counter() - t0

    results = assemble(cfg, train, test, infos, labels, attacks, bm3d)
    fig = out / "transfer_fig3.png"
    figure_image = pick_figure_image(clean_pred["source"], test.labels, index)
    fig3_grid(fig, models["source"], test, advs, denoised, index, figure_image, cfg)
    results["figure"] = {"path": fig.name, "test_index": figure_image,
                         "image": test.paths[figure_image]}
    results["wall_seconds"] = time.perf_counter() - wall
    write_reports(results, out, fig)
    return results


def assemble(cfg: TransferConfig, train: ImageSet, test: ImageSet, infos: dict[str, Any],
             labels: dict[str, str], attacks: dict[str, Any], bm3d: dict[str, Any]
             ) -> dict[str, Any]:
    """The results dict of ``transfer.json`` (tensors dropped), with the claims."""
    results = {
        "config": cfg.model_dump(mode="json"),
        "data": {"source": cfg.data, "test_source": cfg.test_data or "split",
                 "n_train": len(train), "n_test": len(test), "classes": train.classes,
                 "image_size": cfg.image_size},
        "eps": cfg.eps_unit(), "eps_255": cfg.eps,
        "models": {k: {"label": labels[k], "arch": (cfg.source if k == "source" else
                                                     cfg.targets[int(k[1:]) - 1]).arch,
                       **{f: infos[k].get(f) for f in ("clean_acc", "checkpoint", "trained_here",
                                                       "train_seconds", "resumed")},
                       "clean_acc_bm3d": bm3d["clean_acc"][k]} for k in infos},
        "attacks": attacks,
        "bm3d": {"n": bm3d["n"], "sigma": (cfg.bm3d.sigma or cfg.eps) / 255.0,
                 "profile": cfg.bm3d.profile, "seconds": bm3d["seconds"],
                 "attacks": {t: bm3d[t] for t in attacks}},
        "cam": {"top": cfg.cam.top, "layer": cfg.cam.layer or "default (last spatial stage)"},
    }
    results["claims"] = claims(results)
    return results


# ---------------------------------------------------------------------------------------------
# the paper's claims
# ---------------------------------------------------------------------------------------------
def _by_name(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The first attack row of each registry name (``mladv``, ``fgsm``, ``gama``, ``rays`` ...)."""
    rows: dict[str, dict[str, Any]] = {}
    for title, a in results["attacks"].items():
        rows.setdefault(a["name"], {**a, "title": title})
    return rows


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per claim of the paper: what it said, what we measured, held or not, and one
    plain sentence saying so and by how much."""
    rows = _by_name(results)
    out: list[dict[str, Any]] = []
    ml = rows.get("mladv")
    if ml is None:
        return [{"claim": "all", "held": None,
                 "sentence": "MLAdv was not among the attacks, so none of the paper's claims was tested."}]
    ml_bb = ml["success"]["blackbox_avg"]
    bm = results["bm3d"]["attacks"]
    for base in ("rays", "gama", "fgsm"):
        if base not in rows:
            continue
        b = rows[base]
        diff = ml_bb - b["success"]["blackbox_avg"]
        paper = PAPER_TABLE1["mladv"][4] - PAPER_TABLE1[base][4]
        held = bool(diff > 0)
        out.append({"claim": f"transfer: MLAdv > {DISPLAY[base]}", "held": held,
                    "paper": paper, "ours": 100 * diff, "sentence":
                    f"Paper: MLAdv's black-box average beats {DISPLAY[base]}'s by {paper:.1f} points "
                    f"({PAPER_TABLE1['mladv'][4]}% vs {PAPER_TABLE1[base][4]}%). Ours: "
                    f"{_pct(ml_bb)} vs {_pct(b['success']['blackbox_avg'])}, "
                    f"{'held' if held else 'not held'} (MLAdv {'ahead' if diff > 0 else 'behind'} "
                    f"by {abs(100 * diff):.1f} points)."})
    gap = 100 * ml_bb - PAPER_TABLE1["mladv"][4]
    out.append({"claim": "transfer level: MLAdv black-box average 63.9%", "held": bool(gap >= 0),
                "paper": PAPER_TABLE1["mladv"][4], "ours": 100 * ml_bb, "sentence":
                f"Paper: MLAdv reaches {PAPER_TABLE1['mladv'][4]}% on unseen models. Ours: "
                f"{_pct(ml_bb)}, {'held' if gap >= 0 else 'not held'} "
                f"({abs(gap):.1f} points {'above' if gap >= 0 else 'below'})."})
    white = ml["success"]["source"]
    out.append({"claim": "white-box: MLAdv 100%", "held": bool(white >= 0.99), "paper": 100.0,
                "ours": 100 * white, "sentence":
                f"Paper: MLAdv fools the source model on 100% of images. Ours: {_pct(white)}, "
                f"{'held' if white >= 0.99 else 'not held'} ({100 - 100 * white:.1f} points short)."
                if white < 1 else
                "Paper: MLAdv fools the source model on 100% of images. Ours: 100.0%, held."})
    out += (_bm3d_claim(rows, bm) + _cam_claim(rows, results['cam']['top'], results['eps'])
            + _realism_claim(rows))
    return out


def _others(rows: dict[str, Any]) -> list[str]:
    return [b for b in ("fgsm", "gama") if b in rows]


def _bm3d_claim(rows: dict[str, Any], bm: dict[str, Any]) -> list[dict[str, Any]]:
    others = _others(rows)
    if not others:
        return []
    ml = bm[rows["mladv"]["title"]]
    diffs = {b: ml["success"]["source"] - bm[rows[b]["title"]]["success"]["source"] for b in others}
    held = all(d > 0 for d in diffs.values())
    parts = [f"{DISPLAY[b]} {_pct(bm[rows[b]['title']]['success']['source'])} (energy removed "
             f"{_pct(bm[rows[b]['title']]['energy_removed'])})" for b in others]
    worst = min(diffs, key=diffs.get)
    how = (f"MLAdv ahead of {DISPLAY[worst]} by {100 * diffs[worst]:.1f} points" if held else
           f"tied with {DISPLAY[worst]}" if diffs[worst] == 0 else
           f"MLAdv behind {DISPLAY[worst]} by {-100 * diffs[worst]:.1f} points")
    return [{"claim": "BM3D: MLAdv survives denoising better than FGSM/GAMA", "held": bool(held),
             "sentence":
             f"Paper (Fig. 3): BM3D wipes out FGSM's and GAMA's noise but not MLAdv's. Ours, "
             f"white-box success after BM3D: MLAdv {_pct(ml['success']['source'])} (energy "
             f"removed {_pct(ml['energy_removed'])}) vs " + ", ".join(parts) +
             f"; {'held' if held else 'not held'} ({how})."}]


def _cam_claim(rows: dict[str, Any], top: float, eps: float) -> list[dict[str, Any]]:
    """Held when MLAdv puts at least 1 point more of |delta| than uniform noise (``top``) into
    the top CAM region, and more than FGSM and GAMA do."""
    ml = rows["mladv"]["cam_aggregation"]
    others = _others(rows)
    held = ml >= top + 0.01 and all(ml > rows[b]["cam_aggregation"] for b in others)
    vs = ", ".join(f"{DISPLAY[b]} {100 * rows[b]['cam_aggregation']:.1f}%" for b in others)
    note = (" MLAdv's noise fills almost the whole eps box (mean |delta| "
            f"{rows['mladv']['l1'] / eps:.0%} of eps), so it cannot concentrate anywhere."
            if rows["mladv"]["l1"] >= 0.9 * eps else "")
    return [{"claim": "CAM: MLAdv's noise gathers in the attended region", "held": bool(held),
             "ours": ml, "sentence":
             f"Paper (Fig. 3): MLAdv's noise gathers where the class-activation map is high. "
             f"Ours: {100 * ml:.1f}% of MLAdv's |delta| lies in the top-{100 * top:.0f}% CAM "
             f"region (uniform noise: {100 * top:.0f}%)" + (f", vs {vs}" if vs else "") +
             f"; {'held' if held else 'not held'} ({round(100 * (ml - top), 1):+.1f} points vs "
             f"uniform)." + note}]


def _realism_claim(rows: dict[str, Any]) -> list[dict[str, Any]]:
    others = [b for b in ("fgsm", "gama", "rays") if b in rows]
    if not others:
        return []
    ml = rows["mladv"]["ssim"]
    best_other = max(others, key=lambda b: rows[b]["ssim"])
    diff = ml - rows[best_other]["ssim"]
    return [{"claim": "realism: MLAdv's images are closer to the clean ones", "held": bool(diff > 0),
             "ours": ml, "sentence":
             f"Paper: MLAdv's samples are more realistic than the baselines'. Ours, SSIM to the "
             f"clean image: MLAdv {ml:.3f} vs " +
             ", ".join(f"{DISPLAY[b]} {rows[b]['ssim']:.3f}" for b in others) +
             f"; {'held' if diff > 0 else 'not held'} ({diff:+.3f} vs the best baseline, "
             f"{DISPLAY[best_other]})."}]


# ---------------------------------------------------------------------------------------------
# the figure
# ---------------------------------------------------------------------------------------------
def pick_figure_image(source_pred: Tensor, labels: Tensor, index: Tensor) -> int:
    """The first BM3D-sampled test image the source classifies correctly (else the first)."""
    for i in index.tolist():
        if source_pred[i] == labels[i]:
            return int(i)
    return int(index[0])


def fig3_grid(path: Path, source: nn.Module, test: ImageSet, advs: dict[str, Tensor],
              denoised: dict[str, Tensor], index: Tensor, i: int, cfg: TransferConfig) -> None:
    """Fig. 3: one column per attack (and the clean image first); rows: the image, its noise
    amplified so that eps fills the grey range, its BM3D-denoised version, and the source
    model's Grad-CAM of it overlaid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = int((index == i).nonzero()[0]) if (index == i).any() else None
    clean = test.images[i:i + 1]
    names = ["clean", *advs]
    imgs = [clean] + [advs[t][i:i + 1] for t in advs]
    cams = grad_cam(source, torch.cat(imgs), layer=cfg.cam.layer)
    preds = predict_logits(source, torch.cat(imgs)).argmax(1)
    gain = 0.5 / cfg.eps_unit()
    fig, axes = plt.subplots(4, len(names), figsize=(1.9 * len(names), 8.2), squeeze=False)
    for c, (name, img) in enumerate(zip(names, imgs)):
        noise = (0.5 + gain * (img - clean)).clamp(0, 1)
        dn = denoised[name][pos:pos + 1] if pos is not None else None
        panels = [img, noise, dn, None]
        for r, panel in enumerate(panels):
            ax = axes[r][c]
            ax.axis("off")
            if r == 3:
                ax.imshow(img[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
                ax.imshow(cams[c].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            elif panel is not None:
                ax.imshow(panel[0, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0][c].set_title(f"{name}\n-> {test.classes[int(preds[c])]}", fontsize=8)
    for r, row in enumerate(["image", f"noise x{gain:.0f}", "BM3D", "Grad-CAM"]):
        axes[r][0].text(-0.08, 0.5, row, transform=axes[r][0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=8)
    fig.suptitle(f"true class: {test.classes[int(test.labels[i])]}  (eps = {cfg.eps:g}/255)",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def _f(v: Any, scale: float = 1.0, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v * scale:.{digits}f}"


def main_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Ours, as Table 1 plus cost and size columns (success in %, norms in 1/255 units)."""
    models = results["models"]
    targets = [k for k in models if k != "source"]
    head = (["attack", f"white-box ({models['source']['label']})"]
            + [models[k]["label"] for k in targets]
            + ["black-box avg", "s / image", "queries (mean)", "L1: mean abs δ ×255", "L2",
               "L∞ ×255", "SSIM", "PSNR dB"])
    rows = []
    for title, a in results["attacks"].items():
        s = a["success"]
        rows.append([title, _f(s["source"], 100)] + [_f(s[k], 100) for k in targets]
                    + [_f(s["blackbox_avg"], 100), _f(a["seconds_per_image"], 1, 3),
                       _f(a["queries"]["mean"], 1, 0) if "queries" in a else "—",
                       _f(a["l1"], 255, 2), _f(a["l2"], 1, 2), _f(a["linf_max"], 255, 2),
                       _f(a["ssim"], 1, 3), _f(a["psnr"], 1, 1)])
    return head, rows


def bm3d_cam_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["attack", "white-box after BM3D", "black-box avg after BM3D",
            "energy removed by BM3D", f"share of abs δ in top-{100 * results['cam']['top']:.0f}% CAM"]
    rows = []
    for title, a in results["attacks"].items():
        b = results["bm3d"]["attacks"][title]
        rows.append([title, _f(b["success"]["source"], 100), _f(b["success"]["blackbox_avg"], 100),
                     _f(b["energy_removed"], 100), _f(a["cam_aggregation"], 100)])
    return head, rows


def paper_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows_by = _by_name(results)
    head = ["attack", "paper: white-box (ResNet50)"] + [f"paper: {t}" for t in PAPER_TARGETS] + [
        "paper: black-box avg", "ours: white-box", "ours: black-box avg", "ours − paper (avg)"]
    rows = []
    for name, vals in PAPER_TABLE1.items():
        ours = rows_by.get(name)
        w = ours["success"]["source"] if ours else float("nan")
        bb = ours["success"]["blackbox_avg"] if ours else float("nan")
        rows.append([DISPLAY[name]] + [f"{v:.1f}" for v in vals]
                    + [_f(w, 100), _f(bb, 100), _f(100 * bb - vals[4], 1) if ours else "n/a"])
    return head, rows


def models_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["role", "model", "clean test accuracy", "clean accuracy after BM3D", "train s"]
    rows = [["source" if k == "source" else "target", m["label"], _f(m["clean_acc"], 100),
             _f(m["clean_acc_bm3d"], 100), _f(m.get("train_seconds"), 1, 0)]
            for k, m in results["models"].items()]
    return head, rows


def report_blocks(results: dict[str, Any]) -> list[tuple]:
    """The report as blocks (``h``, ``p``, ``table``, ``img``) rendered to Markdown and HTML."""
    d = results["data"]
    b = results["bm3d"]
    return [
        ("h", "Transfer of adversarial noise (Table 1), BM3D and class-activation maps"),
        ("p", f"Data: {d['source']} ({d['n_train']} training / {d['n_test']} test images, "
              f"{d['image_size']} px, classes {', '.join(d['classes'])}); test images from "
              f"{d['test_source']}. eps = {results['eps_255']:g}/255 for every attack, crafted on "
              f"the source model. Success = share of the images a model classifies correctly "
              f"when clean that it misclassifies after the attack (%). Wall time "
              f"{results['wall_seconds']:.0f} s."),
        ("table", *models_table(results)),
        ("h2", "Attack success (%), cost and size"),
        ("table", *main_table(results)),
        ("h2", "The paper's Table 1 beside ours"),
        ("p", "Paper: COVID-19 radiography set, 224 px, ResNet50 → ResNet101 / VGG16 / ResNet152. "
              "Ours: the models and data above, so only the ranking and the gaps compare."),
        ("table", *paper_table(results)),
        ("h2", "BM3D denoising and Grad-CAM aggregation"),
        ("p", f"BM3D (sigma = {255 * b['sigma']:.1f}/255, profile '{b['profile']}') on {b['n']} "
              f"test images; success after BM3D is counted over the images each model gets "
              f"right on the denoised clean image. Energy removed = 1 − ‖D(x_a) − D(x)‖² / "
              f"‖x_a − x‖². CAM column: share of |δ| inside the top-{100 * results['cam']['top']:.0f}% "
              f"Grad-CAM region of the clean image on the source model "
              f"({100 * results['cam']['top']:.0f}% = uniform noise)."),
        ("table", *bm3d_cam_table(results)),
        ("h2", "The paper's claims"),
        ("ul", [c["sentence"] for c in results["claims"]]),
        ("h2", "Fig. 3"),
        ("img", results["figure"]["path"],
         "Per attack: adversarial image, amplified noise, BM3D-denoised image, Grad-CAM overlay"),
    ]


def _md(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            head, rows = block[1], block[2]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
    return "\n".join(lines)


def _html(blocks: list[tuple], images: dict[str, bytes]) -> str:
    from html import escape

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mladv transfer</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
             "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>",
             "</head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h", "h2"):
            tag = "h1" if kind == "h" else "h2"
            parts.append(f"<{tag}>{escape(block[1])}</{tag}>")
        elif kind == "p":
            parts.append(f"<p>{escape(block[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head, rows = block[1], block[2]
            parts.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>"
                                   for r in rows) + "</table>")
        elif kind == "img":
            data = base64.b64encode(images[block[1]]).decode()
            parts.append(f"<img alt='{escape(block[2])}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def csv_rows(results: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per attack, every number of the report (success as fractions, norms in [0, 1])."""
    models = results["models"]
    rows = []
    for title, a in results["attacks"].items():
        b = results["bm3d"]["attacks"][title]
        row = {"attack": title, "name": a["name"], "white_box": a["success"]["source"]}
        row.update({f"success_{models[k]['label']}": a["success"][k] for k in models if k != "source"})
        row.update({"black_box_avg": a["success"]["blackbox_avg"],
                    "seconds_per_image": a["seconds_per_image"],
                    "queries_mean": a.get("queries", {}).get("mean", ""),
                    "l1": a["l1"], "l2": a["l2"], "linf": a["linf_max"], "ssim": a["ssim"],
                    "psnr": a["psnr"], "bm3d_white_box": b["success"]["source"],
                    "bm3d_black_box_avg": b["success"]["blackbox_avg"],
                    "bm3d_energy_removed": b["energy_removed"],
                    "cam_aggregation": a["cam_aggregation"]})
        rows.append(row)
    return list(rows[0]) if rows else [], rows


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> None, so ``transfer.json`` is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_reports(results: dict[str, Any], out: Path, fig: Path) -> None:
    """``transfer.json``, ``transfer.csv``, ``transfer.md`` and self-contained ``transfer.html``."""
    atomic_write_json(_json_safe(results), out / "transfer.json")
    head, rows = csv_rows(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=head)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out / "transfer.csv")
    blocks = report_blocks(results)
    atomic_write_text(_md(blocks), out / "transfer.md")
    atomic_write_text(_html(blocks, {fig.name: fig.read_bytes()}), out / "transfer.html")
