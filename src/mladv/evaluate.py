"""The robustness report card of any classifier (``mladv evaluate``): one JSON, one Markdown /
HTML page, its figures. Every number comes from :func:`mladv.robustness.robustness_report` with
one :class:`~mladv.robustness.RobustnessOptions` (the schema and key vocabulary of the
experiment's robustness columns, the same seeding), so ``mladv evaluate`` and ``mladv
experiment`` give identical numbers for the same model, images and options; this module adds
only the clean metrics a card shows beside them (macro-F1, AUROC, per class) and renders.

The card, for a model on labelled images (``N x C x H x W`` in [0, 1], labels ``N``):

- clean on every image: ``accuracy``, ``macro_f1`` (unweighted mean of per-class F1), ``ece``
  (Guo et al. 2017), ``auroc`` (binary: of the positive class' probability; ``K > 2``: one-vs-
  rest macro, scikit-learn), and per class its one-vs-rest AUROC, sensitivity
  ``P(pred = c | y = c)`` and specificity ``P(pred != c | y != c)`` at the arg-max operating
  point;
- the robustness columns (:func:`mladv.robustness.robustness_columns`): ``acc_pgd_<E>`` over
  the curve's budgets, ``acc_mladv``, ``acc_chain``, ``acc_autoattack_<E>`` (official, with
  its label), ``acc_noise_<sigma>``, ``shift_<transform>_<severity>`` and ``acc_shift_mean``,
  ``acc_bm3d_*``, ``median_min_eps``;
- ``ci``: patient-level bootstrap 95 % CIs (``--bootstrap`` resamples,
  :mod:`mladv.evaluation.stats`) of the accuracy, the AUROC and every accuracy column;
  ``sizes``: the images behind each column; ``gradient_masking``: AutoAttack <= PGD check.

Examples::
    >>> card = report_card(model, images, labels, classes, RobustnessOptions(max_images=64))
    >>> write_card(card, "runs/evaluate")   # report.json / .md / .html, curve.png, shift.png

``mladv evaluate`` is :func:`evaluate_to_folder` (a checkpoint, ``--arch`` / ``--state-dict``, or
a practitioner's model, ``--model SPEC``: a :class:`~mladv.adapters.ModelAdapter`, every image of
DATA scored with DATA's labels in the model's class order, :func:`adapter_imageset`).
"""
from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score
from torch import Tensor, nn

from .adapters import ModelAdapter, _finding_key, align_targets, xrv_weights_path
from .attacks import check_attack_options, make_attack
from .data import ImageSet, choose_split, load_source, split_imageset
from .figures import adversarial_grid, save_figure
from .models import (
    ImageClassifier,
    check_arch,
    check_image_size,
    head_name,
    load_checkpoint,
    predict_logits,
    pretrained_state_dict,
)
from .reporting import Block, fmt, write_report
from .robustness import (
    SHIFT_TRANSFORMS,
    RobustnessOptions,
    autoattack_label,
    robustness_report,
)
from .utils import (
    atomic_write_json,
    prepare_output_dir,
    resolve_device,
    set_determinism,
)

CURVE_EPS = (0.5, 1.0, 2.0, 4.0, 8.0)  # the card's PGD budgets (1/255): the robustness curve
# the corruption families the adversarial chain's transforms cover (window = brightness and
# contrast, gamma), in mladv.evaluation.corruptions' names; its noise transform (off by default)
# covers Gaussian noise
CHAIN_FAMILIES = ("brightness_up", "brightness_down", "contrast_up", "contrast_down",
                  "gamma_corr_up", "gamma_corr_down")
CHAIN_ARMS = ("chain-random", "chain-online", "chain-advprop")


def trained_families(record: dict[str, Any]) -> list[str]:
    """The corruption families a checkpoint's augmentation covered, from its record: the
    chain's (:data:`CHAIN_FAMILIES`, plus ``gaussian_noise`` where its ``noise`` option is > 0)
    for the experiment's chain arms (``arm``) and for ``mladv train --adv-attack chain``
    (``adversarial.attack``); brightness and contrast for the ``trivialaugment`` arm
    (TrivialAugmentWide's Brightness / Contrast ops); none otherwise (flips, PGD, MLAdv, MixUp,
    CutMix and rotation leave every family unseen)."""
    arm, adv = record.get("arm"), record.get("adversarial") or {}
    if arm in CHAIN_ARMS or adv.get("attack") == "chain":
        noise = float((adv.get("options") or {}).get("noise", 0) or 0)
        return [*CHAIN_FAMILIES, *(["gaussian_noise"] if noise > 0 else [])]
    if arm == "trivialaugment":
        return ["brightness_up", "brightness_down", "contrast_up", "contrast_down"]
    return []


def check_card_options(opts: RobustnessOptions) -> None:
    """:meth:`RobustnessOptions.check` and the chain's options, one line each (before any
    compute); the card's PGD budgets are named as the CLI names them."""
    if any(not 0 < e <= 255 for e in opts.pgd_eps):
        raise ValueError(f"--pgd-eps are in 1/255 units, each in (0, 255], got "
                         f"{list(opts.pgd_eps)}")
    opts.check()
    if opts.with_chain:
        check_attack_options("chain", dict(opts.chain_options))


def macro_f1(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """Unweighted mean over the ``num_classes`` classes of per-class F1 (a class never predicted
    nor present counts 0). Shape: pred, labels ``N``."""
    return float(f1_score(labels.numpy(), pred.numpy(), labels=list(range(num_classes)),
                          average="macro", zero_division=0))


def auroc(probs: Tensor, labels: Tensor) -> float:
    """AUROC of class probabilities ``N x K`` against labels ``N`` (scikit-learn's
    ``roc_auc_score``): ``K = 2`` the positive class' probability, ``K > 2`` the one-vs-rest
    macro average; NaN when a class is absent."""
    y, p = labels.numpy(), probs.double().numpy()
    k = p.shape[1]
    if len(np.unique(y)) < k:
        return float("nan")
    if k == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))))


def per_class(probs: Tensor, labels: Tensor, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per class ``c``: one-vs-rest ``auroc`` of ``probs[:, c]``, ``sensitivity``
    ``P(argmax = c | y = c)`` and ``specificity`` ``P(argmax != c | y != c)`` (NaN where the
    denominator is empty). Shape: probs ``N x K``, labels ``N``."""
    pred, y, p = probs.argmax(1).numpy(), labels.numpy(), probs.double().numpy()
    out: dict[str, dict[str, float]] = {}
    for c, name in enumerate(classes):
        pos, neg = y == c, y != c
        out[name] = {
            "auroc": (float(roc_auc_score(pos, p[:, c])) if pos.any() and neg.any()
                      else float("nan")),
            "sensitivity": float((pred[pos] == c).mean()) if pos.any() else float("nan"),
            "specificity": float((pred[neg] != c).mean()) if neg.any() else float("nan")}
    return out


def report_card(model: nn.Module, images: Tensor, labels: Tensor, classes: list[str],
                opts: RobustnessOptions | None = None, *, seed: int = 0,
                patients: Sequence[str] | None = None, trained: Sequence[str] = ()
                ) -> dict[str, Any]:
    """Every number of the module docstring for ``model`` on ``images`` (``N x C x H x W`` in
    [0, 1]) with ``labels`` (``N``), attack seed ``seed``, ``patients`` one id per image (for
    the CIs; None: images are their own patients): ``{"n", "n_robust", "n_autoattack",
    "classes", "seed", "options", "metrics", "per_class", "sizes", "ci", "gradient_masking"}``
    and, with ``opts.corruptions``, ``corruption``
    (:func:`mladv.robustness.corruption_summary`, ``trained``: the families the model's
    augmentation covered, :func:`trained_families`).
    ``metrics`` holds :func:`mladv.robustness.robustness_report`'s numbers unchanged."""
    opts = opts or RobustnessOptions()
    check_card_options(opts)
    labels = labels.cpu()
    report = robustness_report(model, images, labels, opts, seed=seed, n_classes=len(classes),
                               patients=patients)
    probs = predict_logits(model, images).softmax(1)
    card: dict[str, Any] = {key: report.pop(key) for key in ("n", "n_robust", "n_autoattack")}
    sizes, ci = report.pop("sizes"), report.pop("ci", {})
    masking = report.pop("gradient_masking", None)
    metrics = {"accuracy": report.pop("accuracy"),
               "macro_f1": macro_f1(probs.argmax(1), labels, len(classes)),
               "ece": report.pop("ece"), "auroc": auroc(probs, labels), **report}
    if opts.bootstrap:
        from .evaluation.stats import auroc_ci
        ids = list(patients) if patients is not None else [str(i) for i in range(len(labels))]
        if not math.isnan(metrics["auroc"]):
            scores = probs[:, 1] if probs.shape[1] == 2 else probs
            a = auroc_ci(labels.numpy(), scores.double().numpy(), ids, n_boot=opts.bootstrap,
                         seed=seed, level=opts.ci_level)
            ci["auroc"] = {"low": a.low, "high": a.high, "n": a.n_images,
                           "n_patients": a.n_patients}
    card.update({"classes": classes, "seed": seed, "options": options_record(opts),
                 "metrics": metrics, "per_class": per_class(probs, labels, classes),
                 "sizes": {**sizes, "auroc": len(labels), "macro_f1": len(labels),
                           "ece": len(labels)},
                 "ci": ci, "gradient_masking": masking})
    if opts.corruptions:
        from .robustness import corruption_summary
        card["corruption"] = corruption_summary(metrics, opts.corruptions,
                                                opts.corruption_severities, trained)
    return card


def options_record(opts: RobustnessOptions) -> dict[str, Any]:
    """The options as JSON (mappings as dicts, tuples as lists)."""
    return {k: dict(v) if hasattr(v, "items") else v for k, v in asdict(opts).items()}


# -- the model: our checkpoint, or a torchvision architecture with a local state dict -----------
def model_from_state_dict(arch: str, path: str | os.PathLike[str]) -> ImageClassifier:
    """A torchvision ``arch`` holding the state dict in ``path`` (any head size: the number of
    classes is read from the head's weight). The wrapper repeats grey images to 3 channels and
    normalises with ImageNet's mean / std, as torchvision models expect. One ``ValueError``
    naming the file when it does not fit ``arch``."""
    check_arch(arch)
    state = pretrained_state_dict(arch, Path(path))
    head = head_name(ImageClassifier(arch, 2).net)
    weight = state.get(f"{head}.weight")
    if weight is None:
        raise ValueError(f"{path}: no {head}.weight in the state dict: not a {arch}")
    model = ImageClassifier(arch, int(weight.shape[0]))
    try:
        model.net.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit a {arch}: "
                         f"{str(exc).splitlines()[-1].strip() or exc}") from None
    return model.eval()


def evaluate_imageset(model: nn.Module, data: ImageSet, opts: RobustnessOptions | None = None,
                      *, seed: int = 0, trained: Sequence[str] = ()) -> dict[str, Any]:
    """:func:`report_card` on an :class:`~mladv.data.ImageSet` (its number of classes must be
    the model's; its ``groups`` are the patients of the CIs)."""
    k = getattr(model, "num_classes", None)
    if isinstance(k, int) and k != len(data.classes):
        raise ValueError(f"the model has {k} classes, the data {len(data.classes)} "
                         f"({data.classes})")
    return report_card(model, data.images, data.labels, list(data.classes), opts, seed=seed,
                       patients=list(data.groups), trained=trained)


# -- writing it -----------------------------------------------------------------------------
def column_labels(card: dict[str, Any]) -> dict[str, str]:
    """What the card calls each key of ``card["metrics"]`` (the robustness vocabulary)."""
    o, m = card["options"], card["metrics"]
    steps = (o["pgd_options"] or {}).get("steps")
    pgd = f"PGD-{steps}" if steps else "PGD (registry defaults)"
    aa_key = f"acc_autoattack_{o['autoattack_eps']:g}"
    labels = {"accuracy": "accuracy (clean)", "macro_f1": "macro-F1",
              "ece": f"ECE ({o['ece_bins']} bins)", "auroc": "AUROC",
              **{f"acc_{a}": f"{'MLAdv' if a == 'mladv' else 'PGD'} at {o['eps']:g}/255"
                 for a in o["attacks"]},
              **{f"acc_pgd_{e:g}": f"{pgd} at {e:g}/255" for e in o["pgd_eps"]},
              "acc_chain": "adversarial chain (default bounds, 1 step)",
              aa_key: f"{autoattack_label(card['seed'], o['square_queries'])} at "
                      f"{o['autoattack_eps']:g}/255",
              **{f"acc_noise_{s:g}": f"Gaussian noise sigma {s:g}" for s in o["noise_sigmas"]},
              "acc_shift_mean": "acquisition shift, mean over transforms and severities",
              "acc_bm3d_clean": f"BM3D-denoised clean (sigma {o['bm3d_sigma']:g})",
              f"acc_bm3d_pgd_{max(o['pgd_eps'], default=8.0):g}":
                  "BM3D-denoised PGD (largest eps)",
              "median_min_eps": f"median smallest flipping eps, 1/255 ({pgd}, bisection; "
                                f"those right when clean of {o['min_eps_images']} images)"}
    return {k: v for k, v in labels.items() if k in m}


def corruption_blocks(card: dict[str, Any]) -> list[Block]:
    """The corruption protocol's section: per family the error (1 - accuracy, mean over the
    severities) and its increase over clean, whether the model trained on it; the mean
    corruption error of all, trained and unseen families."""
    from .evaluation.corruptions import CORRUPTIONS

    c, o = card["corruption"], card["options"]
    trained = set(c["trained"]["families"])
    rows = [[f, CORRUPTIONS[f].kind, fmt(v["error"], 4), fmt(v["relative"], 4, sign=True),
             "trained" if f in trained else "unseen"] for f, v in c["families"].items()]
    groups = [[name, ", ".join(c[key]["families"]) or "(none)", fmt(c[key]["mce"], 4),
               fmt(c[key]["relative_mce"], 4, sign=True)]
              for key, name in (("all", "all"), ("trained", "trained on"),
                                ("unseen", "unseen"))]
    return [("h2", "Common corruptions (ImageNet-C / MedMNIST-C protocol)"),
            ("p", f"On the {card['n_robust']} images of the robustness subset, severities "
                  f"{o['corruption_severities']}; clean error there "
                  f"{fmt(c['clean_error'], 4)}. Unnormalised mCE (no baseline model); the "
                  "families the model's augmentation covered are reported apart."),
            ("table", ["family", "kind", "error", "vs clean", "in training"], rows),
            ("table", ["families", "which", "mCE", "relative mCE"], groups)]


def _ci_text(ci: dict[str, Any] | None) -> str:
    return "" if not ci else f"[{fmt(ci['low'], 3)}, {fmt(ci['high'], 3)}]"


def card_blocks(card: dict[str, Any], title: str = "Robustness report card",
                figures: tuple[str, ...] = ()) -> list[Block]:
    """The card as report blocks (:mod:`mladv.reporting`): the scored-images line, provenance,
    the headline table (value, 95 % CI, images), per class, shift table, the ``figures``."""
    m, o = card["metrics"], card["options"]
    ci, sizes = card.get("ci") or {}, card.get("sizes") or {}
    rows = [[label, fmt(m[key], 4), _ci_text(ci.get(key)), str(sizes.get(key, ""))]
            for key, label in column_labels(card).items()]
    first = card.get("scored") or f"{card['n']} images scored."
    blocks: list[Block] = [
        ("h", title), ("p", first),
        ("p", f"Classes {card['classes']}; white-box attacks on {card['n_robust']} of them "
              f"(class-stratified subset, seed {o['subset_seed']}), crafted on the model "
              f"itself, attack seed {card['seed']}." +
              (f" CIs: patient-level bootstrap, {o['bootstrap']} resamples, "
               f"{o['ci_level']:.0%}." if o["bootstrap"] else ""))]
    if card.get("gradient_masking"):
        blocks.append(("p", f"**Warning:** {card['gradient_masking']}"))
    prov = card.get("provenance")
    if prov:
        blocks += [("h2", "Provenance"),
                   ("ul", [f"{k}: {v}" for k, v in prov.items() if v is not None])]
    blocks += [("table", ["metric", "value", f"{o['ci_level']:.0%} CI", "images"], rows)]
    if card.get("per_class"):
        blocks += [("h2", "Per class (arg-max operating point)"),
                   ("table", ["class", "AUROC", "sensitivity", "specificity"],
                    [[c, fmt(v["auroc"], 4), fmt(v["sensitivity"], 4), fmt(v["specificity"], 4)]
                     for c, v in card["per_class"].items()])]
    if card.get("corruption"):
        blocks += corruption_blocks(card)
    shifts = [t for t in SHIFT_TRANSFORMS if any(k.startswith(f"shift_{t}_") for k in m)]
    if shifts:
        sev = o["shift_severities"]
        blocks += [("h2", "Acquisition shift"),
                   ("p", "Accuracy under each transform alone, parameters drawn at random inside "
                         "severity x its default bounds (mladv.attacks.chain.ChainBounds)."),
                   ("table", ["transform", *[f"severity {s:g}" for s in sev]],
                    [[t, *[fmt(m[f"shift_{t}_{s:g}"], 4) for s in sev]] for t in shifts])]
    captions = {"curve.png": "robust accuracy against the PGD budget eps (1/255), clean at 0",
                "shift.png": "accuracy under acquisition shift, by severity",
                "corruption.png": "accuracy under each common corruption, by severity",
                "examples.png": "one test image per class: clean, random chain, adversarial "
                                "chain, and each chain's difference from the clean image"}
    blocks += [("figure", f, captions.get(f, f), figure_alt(card, f)) for f in figures]
    return blocks


def figure_alt(card: dict[str, Any], name: str) -> str:
    """The alt text of the card's figure ``name``: what it plots and the numbers a reader who
    cannot see it needs (the curve's points, the lowest shift / corruption accuracy);
    ``""`` (the caption then) for a figure the card does not know."""
    m, o = card["metrics"], card["options"]
    if name == "curve.png":
        eps = sorted(o["pgd_eps"])
        points = ", ".join([f"{fmt(m['accuracy'], 3)} clean",
                            *[f"{fmt(m[f'acc_pgd_{e:g}'], 3)} at {e:g}/255" for e in eps]])
        return f"Line chart of accuracy under own-model PGD against eps: {points}."
    if name in ("shift.png", "corruption.png"):
        if name == "shift.png":
            what, clean = "acquisition-shift transform", m["accuracy"]
            keys = {(t, f"{s:g}"): f"shift_{t}_{s:g}" for t in SHIFT_TRANSFORMS
                    for s in o["shift_severities"]}
        else:
            what, clean = "common corruption", m.get("corr_clean")
            keys = {(f, str(s)): f"corr_{f}_{s}" for f in o.get("corruptions") or ()
                    for s in o["corruption_severities"]}
        cells = {cell: m[k] for cell, k in keys.items() if m.get(k) is not None}
        text = (f"Line chart of accuracy against severity, one line per {what}; clean accuracy "
                f"{fmt(clean, 3)}")
        if cells:
            worst = min(cells, key=lambda c: cells[c])
            text += f"; lowest {fmt(cells[worst], 3)} ({worst[0]} at severity {worst[1]})"
        if name == "shift.png" and "acc_chain" in m:
            text += f"; adversarial chain {fmt(m['acc_chain'], 3)}"
        return text + "."
    if name == "examples.png":
        return (f"Grid of one test X-ray per class ({', '.join(card['classes'])}): the clean "
                "image, the image under a random chain and under the adversarial chain, and "
                "each chain's difference from the clean image in grey (mid-grey = unchanged).")
    return ""


def curve_figure(card: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Robust accuracy against the PGD budget (the ``acc_pgd_<E>`` columns; eps 0: clean), with
    the CIs as error bars where measured."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, ci = card["metrics"], card.get("ci") or {}
    eps = sorted(card["options"]["pgd_eps"])
    keys = ["accuracy", *[f"acc_pgd_{e:g}" for e in eps]]
    xs, ys = [0.0, *eps], [m[k] for k in keys]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if all(k in ci for k in keys):
        err = [[y - ci[k]["low"] for k, y in zip(keys, ys)],
               [ci[k]["high"] - y for k, y in zip(keys, ys)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3)
    else:
        ax.plot(xs, ys, marker="o")
    ax.set(xlabel="PGD eps (1/255)", ylabel="accuracy", ylim=(0, 1.02), xticks=xs)
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def shift_figure(card: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Accuracy against severity, one line per transform; clean and adversarial-chain
    accuracy as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, sev = card["metrics"], card["options"]["shift_severities"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for t in SHIFT_TRANSFORMS:
        if f"shift_{t}_{sev[0]:g}" in m:
            ax.plot(sev, [m[f"shift_{t}_{s:g}"] for s in sev], marker="o", label=t)
    ax.axhline(m["accuracy"], color="k", lw=1, label="clean")
    if "acc_chain" in m:
        ax.axhline(m["acc_chain"], color="r", lw=1, ls="--", label="adversarial chain")
    ax.set(xlabel="severity (x default bounds)", ylabel="accuracy", ylim=(0, 1.02),
           xticks=list(sev))
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def corruption_figure(card: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Accuracy against severity, one line per corruption family; clean accuracy on the same
    images as a horizontal line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, o = card["metrics"], card["options"]
    sev = o["corruption_severities"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for f in o["corruptions"]:
        ax.plot(sev, [m[f"corr_{f}_{s}"] for s in sev], marker="o", label=f)
    ax.axhline(m["corr_clean"], color="k", lw=1, label="clean")
    ax.set(xlabel="severity", ylabel="accuracy", ylim=(0, 1.02), xticks=list(sev))
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def example_figure(model: nn.Module, images: Tensor, labels: Tensor, classes: list[str],
                   path: str | os.PathLike[str], *, seed: int = 0, **chain_options: Any) -> None:
    """One image per class: clean, random chain, adversarial chain (and their differences)."""
    rows = [int(i) for c in range(len(classes)) for i in (labels == c).nonzero().flatten()[:1]]
    x, y = images[rows], labels[rows]
    chains = {name: make_attack("chain", model, steps=steps, seed=seed, **chain_options)(x, y)
              for name, steps in (("random chain", 0), ("adversarial chain", 1))}
    adversarial_grid(x, {k: v.cpu() for k, v in chains.items()}, y, classes, path)


def write_card(card: dict[str, Any], out: str | os.PathLike[str],
               title: str = "Robustness report card", figures: tuple[str, ...] = ()
               ) -> list[Path]:
    """``out/report.json``, ``out/report.md``, ``out/report.html`` (figures embedded), with
    two or more PGD budgets ``out/curve.png``, with shift numbers ``out/shift.png``;
    ``figures``: other PNGs already in ``out`` to show."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(card, folder / "report.json")  # strict JSON: NaN / inf -> null
    shown: tuple[str, ...] = ()
    if len(card["options"]["pgd_eps"]) >= 2:
        curve_figure(card, folder / "curve.png")
        shown += ("curve.png",)
    if any(k.startswith("shift_") for k in card["metrics"]):
        shift_figure(card, folder / "shift.png")
        shown += ("shift.png",)
    if card.get("corruption"):
        corruption_figure(card, folder / "corruption.png")
        shown += ("corruption.png",)
    shown += figures
    write_report(card_blocks(card, title, shown), title, folder / "report.md",
                 folder / "report.html")
    return [folder / n for n in ("report.json", "report.md", "report.html", *shown)]


# -- mladv evaluate ---------------------------------------------------------------------------
def command_inputs(inputs: list[str], arch: str | None, state_dict: Path | None,
                   model: str | None = None, split: str | None = None
                   ) -> tuple[str | None, str | None, str]:
    """``(checkpoint, checkpoint_b, data)`` from ``mladv evaluate``'s positional arguments
    (``CHECKPOINT DATA``, ``A.pt B.pt DATA`` for an A/B comparison, or ``DATA`` with ``--arch``
    / ``--state-dict`` or with ``--model SPEC``); one line for a bad combination (with
    ``--model``: a checkpoint, ``--arch`` / ``--state-dict`` or ``--split``)."""
    if model is not None:
        if arch is not None or state_dict is not None:
            raise ValueError("--model and --arch / --state-dict exclude each other (one model)")
        if len(inputs) != 1:
            raise ValueError(f"--model and a CHECKPOINT exclude each other: with --model give "
                             f"DATA only, got {len(inputs)} arguments ({' '.join(inputs)})")
        if split is not None:
            raise ValueError("--split does not apply to --model: mladv does not know which "
                             "images it trained on, so every image of DATA is scored")
        return None, None, inputs[0]
    if (arch is None) != (state_dict is None):
        raise ValueError("--arch and --state-dict go together (a torchvision architecture "
                         "name and a local state-dict file of it)")
    if state_dict is not None:
        if len(inputs) != 1:
            raise ValueError(f"with --state-dict give DATA only, got {len(inputs)} arguments")
        return None, None, inputs[0]
    if len(inputs) == 3:
        return inputs[0], inputs[1], inputs[2]
    if len(inputs) != 2:
        raise ValueError(f"expected CHECKPOINT DATA, A.pt B.pt DATA (A/B), or --arch NAME "
                         f"--state-dict FILE DATA, got {len(inputs)} argument(s)")
    return inputs[0], None, inputs[1]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the file's bytes (hex): :func:`mladv.fingerprint.file_digest`."""
    from .fingerprint import file_digest
    return file_digest(path, "sha256")


def checkpoint_images(checkpoint: Path, data: str, split: str | None, *, device: torch.device,
                      skip_bad: bool) -> tuple[ImageClassifier, ImageSet, dict[str, Any]]:
    """CHECKPOINT's model and the images of DATA to score, with a record (``split``, ``n``,
    ``n_total``, ``scored``: the card's first line, ``note``).

    ``split`` None (the default): when DATA holds no image the checkpoint records having trained
    on (``trained_on``, :func:`mladv.fingerprint.image_hashes`), every image: an external test
    set is scored whole; where it trained on part of DATA, the checkpoint's own held-out split
    minus its training images (:func:`mladv.data.choose_split` ``test``); a checkpoint without
    the record gets that split too. ``test`` / ``all``: as :func:`~mladv.data.choose_split`.
    DICOM files are read in the checkpoint's ``dicom_mode`` (its input pipeline)."""
    model, ckpt = load_checkpoint(checkpoint, map_location=device)
    dataset = load_source(data, ckpt["image_size"], skip_bad=skip_bad, classes=ckpt["classes"],
                          seed=(ckpt.get("split") or {}).get("seed", 0),
                          dicom_mode=ckpt.get("dicom_mode", "voi"))
    total = len(dataset)
    if split is None:
        seen = ckpt.get("trained_on")
        from .fingerprint import unseen_indices
        if seen is not None and len(unseen_indices(dataset.images, seen)) == total:
            chosen, record = dataset, {"split": "all", "n_seen_in_training": 0, "note": None}
            why = (f"{data} holds no image {checkpoint} was trained on (by image fingerprint), "
                   "so every image is scored")
        else:
            chosen, record = choose_split(dataset, ckpt, "test", checkpoint=checkpoint,
                                          data=data)
            why = ("the checkpoint's held-out test split of the data it was trained on"
                   if seen is not None else
                   "the default test split: the checkpoint does not record its training images")
            if record["n_seen_in_training"]:
                why += f", minus {record['n_seen_in_training']} images it trained on"
    else:
        chosen, record = choose_split(dataset, ckpt, split, checkpoint=checkpoint, data=data)
        why = f"--split {split}"
    record.update(n=len(chosen), n_total=total,
                  scored=f"{len(chosen)} of {total} images scored: {why}.")
    return model, chosen, {**record, "image_size": ckpt["image_size"], "arch": ckpt["arch"],
                           "dicom_mode": ckpt.get("dicom_mode", "voi"),
                           "trained on": ckpt.get("data"),
                           "checkpoint_split": ckpt.get("split"), "arm": ckpt.get("arm"),
                           "adversarial": ckpt.get("adversarial")}


# -- a practitioner's model: mladv evaluate --model SPEC DATA ---------------------------------
def adapter_imageset(adapter: ModelAdapter, data: ImageSet, source: str, n_logits: int
                     ) -> ImageSet:
    """``data`` with its labels in ``adapter``'s class order.

    - multilabel (``N x F`` over the data's findings): :func:`mladv.adapters.align_targets`,
      ``N x K`` over the model's classes, NaN (unknown: masked out of every loss and metric)
      for a finding the data does not label; data findings the model does not predict are left
      out; refused when none is shared (the message names both lists);
    - multiclass (``N`` indices): each data class mapped to the model's class of that name
      (names compared as :func:`~mladv.adapters.align_targets` does); refused when a data class
      is not among the model's;
    - a model without class names: its ``n_logits`` must be the data's number of classes
      (columns taken in the data's order).

    The model's and the data's task must agree. Shape: ``data.labels`` ``N`` or ``N x F`` ->
    ``N`` or ``N x K``."""
    if adapter.task != data.task:
        kind = ("one class per image" if data.task == "multiclass" else
                "several findings per image")
        raise ValueError(f"{adapter.source} is a {adapter.task} model but {source} is "
                         f"{data.task} data ({kind}); use data of the model's task")
    names = None if adapter.classes is None else list(adapter.classes)
    if names is None:
        if n_logits != len(data.classes):
            raise ValueError(f"{adapter.source} returns {n_logits} logits per image but "
                             f"{source} has {len(data.classes)} classes {list(data.classes)}")
        return data
    if data.task == "multilabel":
        try:
            labels = align_targets(data.labels, data.classes, names)
        except ValueError as exc:
            raise ValueError(f"{source} and {adapter.source}: {exc}") from None
        return replace(data, labels=labels, classes=names)
    index = {_finding_key(c): k for k, c in enumerate(names)}
    missing = [c for c in data.classes if _finding_key(c) not in index]
    if missing:
        raise ValueError(f"classes {missing} of {source} {list(data.classes)} are not among "
                         f"the classes of {adapter.source} {names}")
    mapping = torch.tensor([index[_finding_key(c)] for c in data.classes], dtype=torch.long)
    return replace(data, labels=mapping[data.labels], classes=names)


def adapter_images(adapter: ModelAdapter, data: str, image_size: int | None, *,
                   device: torch.device, skip_bad: bool
                   ) -> tuple[ModelAdapter, ImageSet, dict[str, Any]]:
    """A practitioner's model and every image of DATA, read at ``image_size`` (default: the
    adapter's input size, 224 without one), labels in the model's class order
    (:func:`adapter_imageset`), with a record (``split`` all, ``image_size``, ``scored``).
    One zero-image probe (:meth:`~mladv.adapters.ModelAdapter.probe`) checks the model's
    output width before DATA is read."""
    size = image_size or adapter.input_size or 224
    check_image_size(size, option="--image-size")
    n_logits = adapter.probe(size)
    dataset = adapter_imageset(adapter, load_source(data, size, skip_bad=skip_bad), data,
                               n_logits)
    n = len(dataset)
    why = ("a --model records no training images, so every image is scored (do not score "
           "images the model trained on)")
    record = {"split": "all", "image_size": size, "arch": adapter.source,
              "scored": f"{n} of {n} images scored: {why}."}
    return adapter.to(device).eval(), dataset, record


def eps_translation(adapter: ModelAdapter, opts: RobustnessOptions) -> str:
    """Each budget of the card (the PGD curve's and, with an attack, ``opts.eps``; 1/255 units)
    in the model's own pixel units: ``e/255 x (hi - lo)``, e.g. ``8/255 of [0, 1] = 64.25 in
    the model's [-1024, 1024]`` (4 significant digits)."""
    lo, hi = adapter.input_range
    budgets = sorted({*opts.pgd_eps, *((opts.eps,) if opts.attacks else ())})
    return "; ".join(f"{e:g}/255 of [0, 1] = {adapter.model_units(e / 255):.4g} in the "
                     f"model's [{lo:g}, {hi:g}]" for e in budgets)


def adapter_weights(adapter: ModelAdapter, weights_file: str | os.PathLike[str] | None
                    ) -> Path | None:
    """The file the adapter's weights came from: ``weights_file``, else an ``xrv:`` model's
    file in torchxrayvision's cache, a ``torchscript:`` archive itself; None for a factory
    without one."""
    if weights_file is not None:
        return Path(weights_file)
    kind, _, rest = adapter.source.partition(":")
    if kind == "xrv":
        return xrv_weights_path(rest)[0]
    return Path(rest) if kind == "torchscript" else None


def adapter_provenance(adapter: ModelAdapter, weights_file: str | os.PathLike[str] | None,
                       opts: RobustnessOptions, image_size: int) -> dict[str, Any]:
    """The provenance entries of a practitioner's model: its spec, weights file and SHA-256,
    task, input pipeline (range, channels, size), decision thresholds and the eps translation
    into its units (:func:`eps_translation`)."""
    lo, hi = adapter.input_range
    path = adapter_weights(adapter, weights_file)
    size = (f"; resized to {adapter.input_size} px inside the adapter"
            if adapter.input_size and adapter.input_size != image_size else "")
    thresholds = ("argmax" if adapter.task == "multiclass" else "0.5 per finding"
                  if adapter.thresholds is None else ", ".join(
                      f"{c} {t:.4g}" for c, t in zip(adapter.classes or (), adapter.thresholds)))
    return {"model": adapter.source,
            "weights file": str(path) if path is not None else "(the factory's own)",
            "weights sha256": file_sha256(path) if path is not None and path.is_file() else None,
            "task": adapter.task,
            "input": f"{image_size} px, 1 channel in [0, 1]; the adapter maps it to the model's "
                     f"[{lo:g}, {hi:g}], {adapter.channels} channel(s){size}",
            "input range": f"[{lo:g}, {hi:g}]", "channels": adapter.channels,
            "thresholds": thresholds,
            "eps in the model's units": eps_translation(adapter, opts)}


def provenance(checkpoint: str | None, state_dict: Path | None, data: ImageSet, source: str,
               record: dict[str, Any], opts: RobustnessOptions, seed: int, dev: torch.device,
               seconds: float, model: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card's provenance header: model file and its SHA-256, architecture, input pipeline
    (``model``: these entries for a practitioner's model, :func:`adapter_provenance`), data
    source and fingerprint, split and seed, the attack options, versions, device, wall time."""
    import mladv

    from .fingerprint import data_sha1

    path = checkpoint if checkpoint is not None else state_dict
    head = model if model is not None else {
        "model file": str(path), "model sha256": file_sha256(path) if path else None,
        "architecture": record.get("arch"), "arm": record.get("arm"),
        "input": f"{record.get('image_size')} px, 1 channel in [0, 1]; the model wrapper "
                 "repeats channels and normalises"
                 + (f"; DICOM mode {record['dicom_mode']}" if record.get("dicom_mode") else "")}
    return {**head,
            "training data": record.get("trained on"),
            "data": source, "data sha1": data_sha1(data), "split": record.get("split"),
            "checkpoint split": record.get("checkpoint_split"), "seed": seed,
            "attack options": {k: v for k, v in options_record(opts).items()
                               if k not in ("ece_bins", "batch_size")},
            "AutoAttack": autoattack_label(seed, opts.square_queries)
            if opts.autoattack_images else None,
            "versions": f"mladv {getattr(mladv, '__version__', '?')}, torch "
                        f"{torch.__version__}, Python {platform.python_version()}",
            "device": str(dev), "wall time": f"{seconds:.1f} s"}


def evaluate_to_folder(checkpoint: str | None, data: str, out: Path, opts: RobustnessOptions,
                       *, seed: int = 0, arch: str | None = None, state_dict: Path | None = None,
                       image_size: int | None = None, split: str | None = None,
                       device: str = "auto", skip_bad: bool = False,
                       adapter: ModelAdapter | None = None,
                       weights_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``mladv evaluate``: the report card (:func:`evaluate_imageset`, attack seed ``seed``) of
    CHECKPOINT's model on DATA's images chosen by :func:`checkpoint_images`, or of ``arch``
    loaded from ``state_dict`` on DATA at ``image_size`` (default 224; split default ``all``,
    ``test``: the default 0.85 / 0.15 split's test part), or of a practitioner's ``adapter``
    (``--model SPEC``, its ``weights_file``) on every image of DATA (:func:`adapter_images`;
    the provenance states the adapter and the eps in its units, :func:`adapter_provenance`);
    written to ``out`` (:func:`write_card`, with ``examples.png`` when the chain is measured).
    Returns the card."""
    if adapter is not None and (checkpoint is not None or arch is not None
                                or state_dict is not None or split is not None):
        raise ValueError("--model goes with DATA only: not with a CHECKPOINT, --arch / "
                         "--state-dict or --split")
    if split not in (None, "test", "all"):
        raise ValueError(f"--split must be 'test' or 'all', got {split!r}")
    if arch is not None:
        check_arch(arch)
    if image_size is not None:
        check_image_size(image_size, arch, option="--image-size")
    check_card_options(opts)
    prepare_output_dir(out)
    start = time.perf_counter()
    set_determinism(seed)
    dev = resolve_device(device)
    model: nn.Module
    if checkpoint is not None:
        model, dataset, record = checkpoint_images(Path(checkpoint), data, split, device=dev,
                                                   skip_bad=skip_bad)
        source = {"checkpoint": checkpoint, **{k: v for k, v in record.items()
                                               if k in ("split", "n_seen_in_training", "note")}}
    elif adapter is not None:
        model, dataset, record = adapter_images(adapter, data, image_size, device=dev,
                                                skip_bad=skip_bad)
        source = {"model": adapter.source, "split": "all"}
        record["model"] = adapter_provenance(adapter, weights_file, opts, record["image_size"])
    else:
        if arch is None or state_dict is None:
            raise ValueError("--arch and --state-dict go together (a torchvision architecture "
                             "name and a local state-dict file of it)")
        model = model_from_state_dict(arch, state_dict).to(dev)
        dataset = load_source(data, image_size or 224, skip_bad=skip_bad)
        total = len(dataset)
        if (split or "all") == "test":
            dataset = split_imageset(dataset, seed=0)[1]
        why = ("--split test: the default 0.85 / 0.15 split's test part" if split == "test"
               else "a state dict records no training images, so every image is scored")
        record = {"split": split or "all", "arch": arch, "image_size": image_size or 224,
                  "scored": f"{len(dataset)} of {total} images scored: {why}."}
        source = {"arch": arch, "state_dict": str(state_dict), "split": split or "all"}
    if dataset.task == "multilabel":
        from .evaluation.multilabel_report import multilabel_report
        card = {"task": "multilabel", "findings": list(dataset.classes), "seed": seed,
                "options": options_record(opts),
                **multilabel_report(model, dataset.images, dataset.labels, opts, seed=seed,
                                    patients=list(dataset.groups))}
        card["scored"] = record["scored"]
        card["not_measured"] = multilabel_not_measured(opts)
        card["source"] = {**source, "data": data}
        card["provenance"] = provenance(checkpoint, state_dict, dataset, data, record, opts,
                                        seed, dev, time.perf_counter() - start,
                                        model=record.get("model"))
        atomic_write_json(card, out / "report.json")
        write_report(multilabel_blocks(card), "Multilabel report card", out / "report.md",
                     out / "report.html")
        return card
    card = evaluate_imageset(model, dataset, opts, seed=seed, trained=trained_families(record))
    card["scored"] = record["scored"]
    card["source"] = {**source, "data": data}
    card["provenance"] = provenance(checkpoint, state_dict, dataset, data, record, opts, seed,
                                    dev, time.perf_counter() - start, model=record.get("model"))
    if opts.with_chain:
        example_figure(model, dataset.images, dataset.labels, list(dataset.classes),
                       out / "examples.png", seed=seed, **opts.chain_options)
    write_card(card, out, figures=("examples.png",) if opts.with_chain else ())
    return card


def multilabel_not_measured(opts: RobustnessOptions) -> list[str]:
    """The options set for a multiclass card that the multilabel card does not measure (yet):
    said on the card and in report.json rather than silently dropped."""
    unmeasured = {"acquisition shift": opts.acquisition_shift, "adversarial chain":
                  opts.with_chain, "corruptions": bool(opts.corruptions),
                  "AutoAttack": opts.autoattack_images > 0,
                  "smallest flipping eps": opts.min_eps_images > 0,
                  "BM3D": opts.bm3d_images > 0}
    return [name for name, asked in unmeasured.items() if asked]


def multilabel_blocks(card: dict[str, Any], title: str = "Multilabel report card"
                      ) -> list[Block]:
    """The multilabel card: scored-images line, provenance, macro AUROC per column with its CI,
    drop and images; per finding AUROC clean and under each column, sensitivity / specificity at
    the thresholds and flip rate per column."""
    o, ci = card["options"], card.get("ci") or {}
    cols = [k for k in card["auroc"] if k not in ("clean", "clean_subset")]
    label = {"clean": "clean (every image)", "clean_subset": "clean (attack subset)",
             **{f"auroc_{a}": f"{'MLAdv' if a == 'mladv' else 'PGD'} at {o['eps']:g}/255"
                for a in o["attacks"]},
             **{f"auroc_pgd_{e:g}": f"PGD at {e:g}/255" for e in o["pgd_eps"]},
             **{f"auroc_noise_{s:g}": f"Gaussian noise sigma {s:g}" for s in o["noise_sigmas"]}}
    rows = [[label.get(k, k), fmt(card["macro"][k], 4), _ci_text(ci.get(k)),
             fmt(card["drop"].get(k), 4, sign=True) if k in card["drop"] else "",
             str(card["sizes"][k]), str(card["n_defined"][k])]
            for k in ("clean", "clean_subset", *cols)]
    opp = card["operating_point"]
    per = [[f, fmt(card["auroc"]["clean"][i], 3),
            *[fmt(card["auroc"][k][i], 3) for k in cols],
            fmt(opp["sensitivity"][i], 3), fmt(opp["specificity"][i], 3),
            *[fmt(card["flip_rate"][k][i], 3) for k in cols]]
           for i, f in enumerate(card["findings"])]
    missing = card.get("not_measured") or []
    blocks: list[Block] = [("h", title), ("p", card["scored"]),
                           *([("p", "Not measured for a multilabel model (yet): "
                               + ", ".join(missing) + ".")] if missing else []),
                           ("p", f"{len(card['findings'])} findings; attacks crafted on the "
                                 f"model itself on {card['n_robust']} images (seeded subset "
                                 f"{o['subset_seed']}), attack seed {card['seed']}.")]
    prov = card.get("provenance")
    if prov:
        blocks += [("h2", "Provenance"),
                   ("ul", [f"{k}: {v}" for k, v in prov.items() if v is not None])]
    blocks += [("table", ["column", "macro AUROC", f"{o['ci_level']:.0%} CI", "drop vs clean",
                          "images", "findings defined"], rows),
               ("h2", "Per finding"),
               ("p", "AUROC clean and under each column; sensitivity / specificity at the "
                     "model's thresholds (0.5 unless it brings its own); flip rate: share of "
                     "images whose decision at the threshold changed."),
               ("table", ["finding", "AUROC clean", *[f"AUROC {label.get(k, k)}" for k in cols],
                          "sensitivity", "specificity",
                          *[f"flips {label.get(k, k)}" for k in cols]], per)]
    return blocks


# -- mladv evaluate A.pt B.pt DATA ------------------------------------------------------------
def ab_blocks(ab: dict[str, Any], title: str = "A/B comparison") -> list[Block]:
    """The A/B page: which models on which images, then per column A, B, A - B with its CI,
    McNemar's p and the verdict (:mod:`mladv.evaluation.compare`)."""
    o = ab["options"]
    rows = [[key, fmt(v["a"], 4), fmt(v["b"], 4), fmt(v["diff"], 4, sign=True),
             f"[{fmt(v['low'], 3, sign=True)}, {fmt(v['high'], 3, sign=True)}]",
             fmt(v.get("p_mcnemar"), 3), str(v.get("n", "")), v["verdict"]]
            for key, v in ab["columns"].items()]
    return [("h", title), ("p", ab["scored"]),
            ("p", f"A = {ab['a']}, B = {ab['b']}; the same images, subsets and attack seed "
                  f"{ab['seed']} for both. CIs: patient-level paired bootstrap, "
                  f"{o['bootstrap']} resamples, {o['ci_level']:.0%}; p: McNemar's exact test."),
            ("table", ["column", "A", "B", "A - B", f"{o['ci_level']:.0%} CI", "McNemar p",
                       "images", "verdict"], rows)]


def compare_to_folder(checkpoint_a: str, checkpoint_b: str, data: str, out: Path,
                      opts: RobustnessOptions, *, seed: int = 0, split: str | None = None,
                      device: str = "auto", skip_bad: bool = False) -> dict[str, Any]:
    """``mladv evaluate A.pt B.pt DATA``: both models on A's images of DATA
    (:func:`checkpoint_images`; without ``--split all`` also leaving out those B trained on),
    compared column by column (:func:`mladv.evaluation.compare.compare_models`); writes
    ``out/compare.json``, ``out/compare.md``, ``out/compare.html``. Returns the comparison."""
    from .evaluation.compare import compare_models
    from .fingerprint import unseen_indices
    from .models import checkpoint_task, read_checkpoint

    if split not in (None, "test", "all"):
        raise ValueError(f"--split must be 'test' or 'all', got {split!r}")
    check_card_options(opts)
    if opts.bootstrap < 1:
        raise ValueError("an A/B comparison needs --bootstrap >= 1 (its CIs are the verdict)")
    for path in (checkpoint_a, checkpoint_b):  # before any data is read or model is run
        if checkpoint_task(read_checkpoint(path), path) != "multiclass":
            raise ValueError(f"{path}: a multilabel model; the A/B comparison compares "
                             "multiclass accuracy columns (score each model with its own card)")
    prepare_output_dir(out)
    set_determinism(seed)
    dev = resolve_device(device)
    model_a, dataset, record = checkpoint_images(Path(checkpoint_a), data, split, device=dev,
                                                 skip_bad=skip_bad)
    ckpt_b = read_checkpoint(checkpoint_b)
    if list(ckpt_b["classes"]) != list(dataset.classes) or \
            ckpt_b["image_size"] != record["image_size"]:
        raise ValueError(f"{checkpoint_b} ({ckpt_b['image_size']} px, classes "
                         f"{ckpt_b['classes']}) cannot be compared with {checkpoint_a} "
                         f"({record['image_size']} px, classes {list(dataset.classes)})")
    model_b, _ = load_checkpoint(checkpoint_b, map_location=dev)
    scored = record["scored"]
    if split != "all" and ckpt_b.get("trained_on") is not None:
        keep = unseen_indices(dataset.images, ckpt_b["trained_on"])
        if not keep:
            raise ValueError(f"every image chosen was used to train {checkpoint_b}")
        if len(keep) < len(dataset):
            scored += (f" {len(dataset) - len(keep)} of them left out: {checkpoint_b} trained "
                       f"on them; {len(keep)} compared.")
            dataset = dataset.subset(keep)
    columns = compare_models(model_a, model_b, dataset.images, dataset.labels, opts, seed=seed,
                             n_classes=len(dataset.classes), patients=list(dataset.groups))
    ab = {"a": checkpoint_a, "b": checkpoint_b, "data": data, "n": len(dataset),
          "scored": scored, "seed": seed, "options": options_record(opts), "columns": columns}
    atomic_write_json(ab, out / "compare.json")
    write_report(ab_blocks(ab), "A/B comparison", out / "compare.md", out / "compare.html")
    return ab
