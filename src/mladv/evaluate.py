"""The robustness report card of any classifier (``mladv evaluate``): one JSON, one Markdown page,
one figure, every number through :mod:`mladv.robustness` (the functions the experiment's
robustness columns use).

The card, for a model on labelled images:

- clean: ``accuracy``, ``macro_f1`` (unweighted mean of per-class F1), ``ece`` (15 bins, Guo et
  al. 2017) on every image;
- white-box, crafted on the model itself, on the experiment's class-stratified seeded subset
  of ``max_images`` (:func:`mladv.robustness.robustness_subsets`):
  ``pgd_<E>`` (PGD-``pgd_steps``, step E/4, random start, at each E/255 of ``pgd_eps``),
  ``mladv`` (MLAdv at 8/255, its defaults), ``chain`` (the adversarial chain at its default
  bounds, one step), ``autoattack_<E>`` (standard AutoAttack on the first ``autoattack_images``
  of the subset; 0: not run);
- acquisition shift on every image: ``shift_<transform>_<severity>`` (each chain transform alone
  at severities 1, 2, 4 times its default bounds, random parameters), ``shift_mean``;
- BM3D (``bm3d_images`` > 0): accuracy on BM3D-denoised clean images (``bm3d_clean``) and
  denoised PGD images at the largest eps (``bm3d_pgd_<E>``), the first ``bm3d_images`` of the
  subset (sigma ``bm3d_sigma``).

Examples::
    >>> card = report_card(model, images, labels, classes, CardOptions(max_images=64))
    >>> write_card(card, "runs/evaluate")   # report.json / .md / .html, shift.png

``mladv evaluate`` is :func:`evaluate_to_folder` (a checkpoint, or ``--arch`` / ``--state-dict``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sklearn.metrics import f1_score
from torch import Tensor, nn

from .attacks import check_attack_options, make_attack
from .augment import craft_shard
from .crafting import checkpoint_and_split
from .data import ImageSet, load_source, split_imageset
from .denoise import bm3d_denoise
from .figures import adversarial_grid, save_figure
from .models import (
    ImageClassifier,
    check_arch,
    check_image_size,
    head_name,
    predict_logits,
    pretrained_state_dict,
)
from .reporting import Block, fmt, write_report
from .robustness import (
    SHIFT_SEVERITIES,
    SHIFT_TRANSFORMS,
    RobustnessOptions,
    acquisition_shift_accuracy,
    adversarial_accuracy,
    autoattack_accuracy,
    chain_accuracy,
    expected_calibration_error,
    robustness_subsets,
)
from .utils import (
    atomic_write_json,
    prepare_output_dir,
    resolve_device,
    set_determinism,
)


@dataclass(frozen=True)
class CardOptions:
    """What the report card measures (eps in 1/255 units). See the module docstring."""

    pgd_eps: tuple[float, ...] = (2.0, 8.0)
    pgd_steps: int = 10
    max_images: int | None = 64
    mladv: bool = True
    chain: bool = True
    shift: bool = True
    severities: tuple[float, ...] = SHIFT_SEVERITIES
    autoattack_images: int = 0
    autoattack_eps: float = 2.0
    square_queries: int = 5000
    bm3d_images: int = 0
    bm3d_sigma: float = 0.05
    ece_bins: int = 15
    batch_size: int = 32
    seed: int = 0
    chain_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """One ``ValueError`` line naming the first bad option (before any compute)."""
        if any(not 0 < e <= 255 for e in self.pgd_eps):
            raise ValueError(f"--pgd-eps are in 1/255 units, each in (0, 255], got "
                             f"{list(self.pgd_eps)}")
        for name in ("pgd_steps", "batch_size", "ece_bins", "square_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("autoattack_images", "bm3d_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {self.max_images}")
        if not 0 < self.autoattack_eps <= 255 or not self.bm3d_sigma > 0:
            raise ValueError("autoattack_eps must be in (0, 255] and bm3d_sigma > 0")
        if self.chain:
            check_attack_options("chain", self.chain_options)


def macro_f1(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """Unweighted mean over the ``num_classes`` classes of per-class F1 (a class never predicted
    nor present counts 0). Shape: pred, labels ``N``."""
    return float(f1_score(labels.numpy(), pred.numpy(), labels=list(range(num_classes)),
                          average="macro", zero_division=0))


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    return float((predict_logits(model, images).argmax(1) == labels.cpu()).float().mean())


def _bm3d(model: nn.Module, x: Tensor, y: Tensor, opts: CardOptions) -> dict[str, float]:
    """Accuracy on BM3D-denoised clean and PGD (largest eps) images, the PGD images seeded as
    :func:`mladv.robustness.adversarial_accuracy` seeds the ``pgd_<E>`` column (batch ``b``:
    ``derive_seed(seed, 0, b)``)."""
    eps = max(opts.pgd_eps)
    atk = make_attack("pgd", model, eps=eps / 255, steps=opts.pgd_steps, seed=opts.seed)
    adv = craft_shard(atk, x, y, seed=opts.seed, shard=0, batch_size=opts.batch_size)
    workers = 1 if x.shape[0] < 4 else None
    return {"bm3d_clean": _accuracy(model, bm3d_denoise(x, opts.bm3d_sigma, workers=workers), y),
            f"bm3d_pgd_{eps:g}": _accuracy(model, bm3d_denoise(adv, opts.bm3d_sigma,
                                                               workers=workers), y)}


def report_card(model: nn.Module, images: Tensor, labels: Tensor, classes: list[str],
                opts: CardOptions | None = None) -> dict[str, Any]:
    """Every number of the module docstring for ``model`` on ``images`` (``N x C x H x W`` in
    [0, 1]) with ``labels`` (``N``): ``{"n", "n_robust", "options", "metrics": {...}}``."""
    opts = opts or CardOptions()
    opts.check()
    labels = labels.cpu()
    probs = predict_logits(model, images).softmax(1)
    m: dict[str, Any] = {
        "accuracy": float((probs.argmax(1) == labels).float().mean()),
        "macro_f1": macro_f1(probs.argmax(1), labels, len(classes)),
        "ece": expected_calibration_error(probs, labels, opts.ece_bins)}
    # the experiment's subsets (mladv.robustness): class-stratified, AutoAttack's images its
    # first ``autoattack_images`` in the same order
    sub, auto = robustness_subsets(labels, RobustnessOptions(
        max_images=opts.max_images, subset_seed=opts.seed,
        autoattack_images=opts.autoattack_images), len(classes))
    x, y = images[sub], labels[sub]
    common = {"seed": opts.seed, "batch_size": opts.batch_size}
    for eps in opts.pgd_eps:
        m[f"pgd_{eps:g}"] = adversarial_accuracy(model, x, y, "pgd", eps=eps / 255,
                                                 steps=opts.pgd_steps, **common)
    if opts.mladv:
        m["mladv"] = adversarial_accuracy(model, x, y, "mladv", eps=8 / 255, **common)
    if opts.chain:
        m["chain"] = chain_accuracy(model, x, y, **common, **opts.chain_options)
    if opts.autoattack_images:
        m[f"autoattack_{opts.autoattack_eps:g}"] = autoattack_accuracy(
            model, images[auto], labels[auto], eps=opts.autoattack_eps / 255,
            square_queries=opts.square_queries, **common)
    if opts.shift:
        m.update(acquisition_shift_accuracy(model, images, labels, severities=opts.severities,
                                            seed=opts.seed))
    if opts.bm3d_images:
        k = min(opts.bm3d_images, x.shape[0])
        m.update(_bm3d(model, x[:k], y[:k], opts))
    return {"n": int(images.shape[0]), "n_robust": int(sub.shape[0]), "classes": classes,
            "options": asdict(opts), "metrics": m}


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


def evaluate_imageset(model: nn.Module, data: ImageSet, opts: CardOptions | None = None
                      ) -> dict[str, Any]:
    """:func:`report_card` on an :class:`~mladv.data.ImageSet` (its number of classes must be
    the model's)."""
    k = getattr(model, "num_classes", None)
    if isinstance(k, int) and k != len(data.classes):
        raise ValueError(f"the model has {k} classes, the data {len(data.classes)} "
                         f"({data.classes})")
    return report_card(model, data.images, data.labels, list(data.classes), opts)


# -- writing it -----------------------------------------------------------------------------
def card_blocks(card: dict[str, Any], title: str = "Robustness report card",
                figures: tuple[str, ...] = ()) -> list[Block]:
    """The card as report blocks (:mod:`mladv.reporting`): headline table, shift table, the
    ``figures`` (``shift.png``, ``examples.png``) that were written."""
    m, o = card["metrics"], card["options"]
    rows = [["accuracy", fmt(m["accuracy"], 4)], ["macro-F1", fmt(m["macro_f1"], 4)],
            [f"ECE ({o['ece_bins']} bins)", fmt(m["ece"], 4)]]
    names = {**{f"pgd_{e:g}": f"PGD-{o['pgd_steps']} at {e:g}/255" for e in o["pgd_eps"]},
             "mladv": "MLAdv at 8/255", "chain": "adversarial chain (default bounds, 1 step)",
             f"autoattack_{o['autoattack_eps']:g}":
                 f"AutoAttack (standard) at {o['autoattack_eps']:g}/255 on "
                 f"{min(o['autoattack_images'], card['n_robust'])} images",
             "shift_mean": "acquisition shift, mean over transforms and severities",
             "bm3d_clean": f"BM3D-denoised clean (sigma {o['bm3d_sigma']:g})",
             f"bm3d_pgd_{max(o['pgd_eps'], default=0):g}": "BM3D-denoised PGD (largest eps)"}
    rows += [[label, fmt(m[key], 4)] for key, label in names.items() if key in m]
    blocks: list[Block] = [
        ("h", title),
        ("p", f"{card['n']} images, classes {card['classes']}; white-box attacks on "
              f"{card['n_robust']} of them (class-stratified subset, seed {o['seed']}), "
              f"crafted on the model itself."),
        ("table", ["metric", "accuracy / value"], rows)]
    shifts = [t for t in SHIFT_TRANSFORMS if any(k.startswith(f"shift_{t}_") for k in m)]
    if shifts:
        sev = o["severities"]
        blocks += [("h2", "Acquisition shift"),
                   ("p", "Accuracy under each transform alone, parameters drawn at random inside "
                         "severity x its default bounds (mladv.attacks.chain.ChainBounds)."),
                   ("table", ["transform", *[f"severity {s:g}" for s in sev]],
                    [[t, *[fmt(m[f"shift_{t}_{s:g}"], 4) for s in sev]] for t in shifts])]
    captions = {"shift.png": "accuracy under acquisition shift, by severity",
                "examples.png": "one test image per class: clean, random chain, adversarial "
                                "chain, and each chain's difference from the clean image"}
    blocks += [("figure", f, captions.get(f, f)) for f in figures]
    return blocks


def shift_figure(card: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Accuracy against severity, one line per transform; clean and adversarial-chain
    accuracy as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, sev = card["metrics"], card["options"]["severities"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for t in SHIFT_TRANSFORMS:
        if f"shift_{t}_{sev[0]:g}" in m:
            ax.plot(sev, [m[f"shift_{t}_{s:g}"] for s in sev], marker="o", label=t)
    ax.axhline(m["accuracy"], color="k", lw=1, label="clean")
    if "chain" in m:
        ax.axhline(m["chain"], color="r", lw=1, ls="--", label="adversarial chain")
    ax.set(xlabel="severity (x default bounds)", ylabel="accuracy", ylim=(0, 1.02),
           xticks=list(sev))
    ax.legend(fontsize=7, ncol=2)
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
    """``out/report.json``, ``out/report.md``, ``out/report.html`` (figures embedded) and, with
    shift numbers, ``out/shift.png``; ``figures``: other PNGs already in ``out`` to show."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(card, folder / "report.json")  # strict JSON: NaN / inf -> null
    shown = figures
    if any(k.startswith("shift_") for k in card["metrics"]):
        shift_figure(card, folder / "shift.png")
        shown = ("shift.png", *figures)
    write_report(card_blocks(card, title, shown), title, folder / "report.md",
                 folder / "report.html")
    return [folder / n for n in ("report.json", "report.md", "report.html", *shown)]


# -- mladv evaluate ---------------------------------------------------------------------------
def command_inputs(inputs: list[str], arch: str | None, state_dict: Path | None
                   ) -> tuple[str | None, str]:
    """``(checkpoint, data)`` from ``mladv evaluate``'s positional arguments (``CHECKPOINT
    DATA``, or ``DATA`` with ``--arch`` / ``--state-dict``); one line for a bad combination."""
    if (arch is None) != (state_dict is None):
        raise ValueError("--arch and --state-dict go together (a torchvision architecture "
                         "name and a local state-dict file of it)")
    if state_dict is not None:
        if len(inputs) != 1:
            raise ValueError(f"with --state-dict give DATA only, got {len(inputs)} arguments")
        return None, inputs[0]
    if len(inputs) != 2:
        raise ValueError(f"expected CHECKPOINT DATA (or --arch NAME --state-dict FILE DATA), "
                         f"got {len(inputs)} argument(s)")
    return inputs[0], inputs[1]


def evaluate_to_folder(checkpoint: str | None, data: str, out: Path, opts: CardOptions, *,
                       arch: str | None = None, state_dict: Path | None = None,
                       image_size: int | None = None, split: str | None = None,
                       device: str = "auto", skip_bad: bool = False) -> dict[str, Any]:
    """``mladv evaluate``: the report card (:func:`evaluate_imageset`) of CHECKPOINT's model on
    DATA's ``split`` (default ``test``: its held-out split minus its training images), or of
    ``arch`` loaded from ``state_dict`` on DATA at ``image_size`` (default 224; split default
    ``all``, ``test``: the default 0.85 / 0.15 split's test part); written to ``out``
    (:func:`write_card`, with ``examples.png`` when ``opts.chain``). Returns the card."""
    if split not in (None, "test", "all"):
        raise ValueError(f"--split must be 'test' or 'all', got {split!r}")
    if arch is not None:
        check_arch(arch)
    if image_size is not None:
        check_image_size(image_size, arch, option="--image-size")
    opts.check()
    prepare_output_dir(out)
    set_determinism(opts.seed)
    dev = resolve_device(device)
    if checkpoint is not None:
        model, dataset, record = checkpoint_and_split(Path(checkpoint), data, split or "test",
                                                      device=dev, skip_bad=skip_bad)
        source = {"checkpoint": checkpoint, **{k: v for k, v in record.items() if k != "note"}}
    else:
        if arch is None or state_dict is None:
            raise ValueError("--arch and --state-dict go together (a torchvision architecture "
                             "name and a local state-dict file of it)")
        model = model_from_state_dict(arch, state_dict).to(dev)
        dataset = load_source(data, image_size or 224, skip_bad=skip_bad)
        if (split or "all") == "test":
            dataset = split_imageset(dataset, seed=0)[1]
        source = {"arch": arch, "state_dict": str(state_dict), "split": split or "all"}
    card = evaluate_imageset(model, dataset, opts)
    card["source"] = {**source, "data": data}
    if opts.chain:
        example_figure(model, dataset.images, dataset.labels, list(dataset.classes),
                       out / "examples.png", seed=opts.seed, **opts.chain_options)
    write_card(card, out, figures=("examples.png",) if opts.chain else ())
    return card

