"""Evaluation beside accuracy: calibration and accuracy under white-box attacks on the model
itself (PGD at 2/255 and 8/255, MLAdv, and the official AutoAttack of Croce & Hein (the authors'
``pyautoattack``), which catches the gradient masking that can make adversarially trained models
only *look* robust).

This is the one evaluation path: the experiment's robustness columns are
:func:`robustness_columns` (``mladv.experiment.measure`` only maps its config onto
:class:`RobustnessOptions`), so the API reproduces a report's numbers exactly.

Examples::
    >>> ece = expected_calibration_error(predict_logits(model, x).softmax(1), y)
    >>> acc = adversarial_accuracy(model, x, y, "pgd", eps=2/255)
    >>> report = robustness_report(model, x, y, RobustnessOptions(max_images=64), seed=0)
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pyautoattack
import torch
from torch import Tensor, nn

from .attacks import eval_mode, make_attack
from .attacks.chain import ChainBounds, random_chain
from .augment import craft_shard, derive_seed
from .logs import Log
from .models import predict_logits
from .utils import model_device


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al., ICML 2017): ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over ``n_bins``
    equal-width confidence bins ``((b-1)/n_bins, b/n_bins]``, confidence = the top probability.

    Shape: probs ``N x K`` (rows sum to 1), labels ``N`` -> a float in [0, 1].
    """
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be N x K and labels N, got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if probs.shape[0] == 0:
        return 0.0
    conf, pred = probs.detach().float().cpu().max(1)
    correct = (pred == labels.cpu()).float()
    # bin b holds (b/n, (b+1)/n]; a confidence of exactly 0 (impossible for softmax) joins bin 0
    bins = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1
    gap = torch.zeros(n_bins).index_add_(0, bins, correct - conf)  # |B| (acc(B) - conf(B))
    return float(gap.abs().sum() / conf.shape[0])


def fixed_subset(n: int, k: int | None, seed: int = 0) -> Tensor:
    """``min(k, n)`` indices of ``range(n)`` drawn with ``seed``, sorted (all of them when
    ``k`` is None): the same images for every model compared."""
    if k is None or k >= n:
        return torch.arange(n)
    if k < 1:
        raise ValueError(f"the subset size must be >= 1, got {k}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def stratified_order(labels: Tensor, n_classes: int, seed: int) -> list[int]:
    """Every index of ``labels`` (``N``), dealt round-robin over the classes ``0 .. n_classes - 1``
    from per-class shuffles drawn in class order from one generator seeded with ``seed``: any
    prefix of ``k`` holds ``floor(k / K)`` or ``ceil(k / K)`` of each of the ``K`` classes (as
    far as a class has images)."""
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    per_class = [idx[torch.randperm(len(idx), generator=gen)].tolist()
                 for idx in (torch.nonzero(labels == c).flatten() for c in range(n_classes))]
    return [lst[i] for i in range(max(map(len, per_class), default=0))
            for lst in per_class if i < len(lst)]


def stratified_subset(labels: Tensor, k: int | None, seed: int = 0,
                      n_classes: int | None = None) -> Tensor:
    """The first ``min(k, N)`` indices of :func:`stratified_order` (``n_classes`` default:
    ``max(labels) + 1``), sorted; all ``N`` when ``k`` is None or ``>= N``. The robustness subset
    of the experiment and of :func:`robustness_columns` (the same images for every model)."""
    n = int(labels.shape[0])
    if k is None or k >= n:
        return torch.arange(n)
    if k < 1:
        raise ValueError(f"the subset size must be >= 1, got {k}")
    classes = int(labels.max()) + 1 if n_classes is None else n_classes
    return torch.tensor(sorted(stratified_order(labels, classes, seed)[:k]), dtype=torch.long)


def adversarial_accuracy(model: nn.Module, images: Tensor, labels: Tensor, attack: str = "pgd",
                         *, eps: float = 8 / 255, seed: int = 0, batch_size: int = 64,
                         **options: Any) -> float:
    """Accuracy of ``model`` on images attacked white-box on ``model`` itself (registry attack
    ``attack`` with ``eps`` in [0, 1] units and its own defaults, e.g. PGD-10, step eps/4,
    random start). Batch ``b`` of ``batch_size`` images is crafted with the attack seed
    ``derive_seed(seed, 0, b)`` (:func:`mladv.augment.craft_shard`, shard 0): the seeding of
    every robustness column of the experiment. Shape: images ``N x C x H x W`` in [0, 1],
    labels ``N`` -> a float."""
    atk = make_attack(attack, model, eps=eps, seed=seed, **options)
    adv = craft_shard(atk, images, labels, seed=seed, shard=0, batch_size=batch_size)
    return _accuracy(model, adv, labels)


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """The fraction of ``images`` whose arg-max logit is the label."""
    return float((predict_logits(model, images).argmax(1) == labels.cpu()).float().mean())


def num_classes(model: nn.Module, images: Tensor) -> int:
    """``model.num_classes`` when it has one, else the width of its output on one image."""
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) else int(predict_logits(model, images[:1]).shape[1])


class PadLogits(nn.Module):
    """``model`` with its logits padded to ``k`` columns by ``min(z) - 1`` (never the arg-max):
    AutoAttack's APGD-T (targeted DLR loss, ``z_(3)`` and ``z_(4)``: the 3rd- and 4th-largest
    logits) needs >= 4 classes; 3-class chest X-rays get one extra column, the real classes'
    order unchanged. Shape: ``N x C x H x W`` -> ``N x max(K, k)``."""

    def __init__(self, model: nn.Module, k: int = 4) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: Tensor) -> Tensor:
        z: Tensor = self.model(x)
        if z.shape[1] >= self.k:
            return z
        pad = z.min(1, keepdim=True).values - 1.0
        return torch.cat([z, pad.expand(-1, self.k - z.shape[1])], 1)


AUTOATTACK_VERSION = "standard"
AUTOATTACK_LABEL = (f"AutoAttack {AUTOATTACK_VERSION} (Croce & Hein 2020, "
                    f"pyautoattack {pyautoattack.__version__})")
STANDARD_TARGETS = 9  # the standard version's target classes of APGD-T and FAB-T
STANDARD_SQUARE_QUERIES = 5000


def autoattack_label(seed: int, square_queries: int = STANDARD_SQUARE_QUERIES) -> str:
    """What a report says of :func:`autoattack_accuracy`'s column: :data:`AUTOATTACK_LABEL`, the
    seed, and the Square budget where it is not the standard 5000 queries."""
    label = f"{AUTOATTACK_LABEL}, seed {seed}"
    if square_queries != STANDARD_SQUARE_QUERIES:
        label += f", Square {square_queries} queries (not the standard {STANDARD_SQUARE_QUERIES})"
    return label


def autoattack_targets(n_classes: int) -> int:
    """APGD-T's and FAB-T's ``n_target_classes`` for a ``K``-class model: ``min(9, K - 1)``.

    The standard version attacks the 9 classes with the largest logits after the true one, which
    needs 10 classes; with fewer, every other REAL class is a target (``K - 1``). The columns
    :class:`PadLogits` adds for ``K < 4`` are never targets: a padded logit is ``min(z) - 1``
    at every point, so it is never the arg-max (a targeted run at it could not succeed) and is
    always sorted last (targets ``2 .. K`` by logit rank are the real classes)."""
    if n_classes < 2:
        raise ValueError(f"AutoAttack needs a model with >= 2 classes, got {n_classes}")
    return min(STANDARD_TARGETS, n_classes - 1)


class _Forward(logging.Handler):
    """Sends the ``auto-attack`` logger's warnings to ``log`` (None: :func:`warnings.warn`)."""

    def __init__(self, log: Log | None) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        msg = f"AutoAttack: {record.getMessage()}"
        if self.log is None:
            warnings.warn(msg, UserWarning, stacklevel=2)
        else:
            self.log(msg)


@contextlib.contextmanager
def _quiet_autoattack(logger: logging.Logger, log: Log | None) -> Iterator[None]:
    """Inside the block: the package's warnings (randomised / dynamic defence, Square beating
    the gradient attacks) go to ``log``, its progress (debug) nowhere, stdout stays clean, and
    the trace function its dynamic-defence check switches off (``sys.settrace(None)``: a
    coverage tool's) is put back afterwards."""
    handler, propagate, trace = _Forward(log), logger.propagate, sys.gettrace()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        sys.settrace(trace)


def autoattack_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *,
                        eps: float = 2 / 255, seed: int = 0, batch_size: int = 64,
                        square_queries: int = STANDARD_SQUARE_QUERIES, log: Log | None = None
                        ) -> float:
    """Accuracy under the official AutoAttack (Croce & Hein, ICML 2020,
    https://arxiv.org/abs/2003.01690; the authors' package ``pyautoattack``),
    ``AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed)`` as published:
    APGD-CE, APGD-T, FAB-T (100 iterations each) and Square (5000 queries), each run only on
    the images every earlier attack left correctly classified, so an image counts as robust
    only if all four fail: the point-wise worst case. APGD-T and FAB-T attack
    :func:`autoattack_targets` classes (``min(9, K - 1)``); models with fewer than 4 classes are
    attacked through :class:`PadLogits` (accuracy is read on ``model`` itself).

    1-channel [0, 1] images go straight in (the model wrapper repeats channels and normalises);
    the attack runs on the model's device in batches of ``batch_size``, in eval mode, and
    leaves the global random state as it found it. ``square_queries`` other than 5000 is not the
    standard version (tests use fewer; :func:`autoattack_label` says so). The package's warnings
    go to ``log`` (default: :func:`warnings.warn`). Report the column as
    :func:`autoattack_label`. Shape: images ``N x C x H x W``, labels ``N`` -> a float.

    Measured (shared 2-core CPU, one thread; small_cnn trained as ``tests/conftest.py``'s
    ``tiny_trained``, 12 phantoms of 24 px, eps 2/255): clean 0.917, AutoAttack 0.417 (PGD-10:
    0.417); APGD-CE 1.8 s, APGD-T 1.8 s, FAB-T 2.6 s, Square 16.9 s for the 5 images the others
    left robust (23 s in all; 7 s with ``square_queries=50``). Square dominates: use a small
    fixed subset on a CPU."""
    if images.shape[0] == 0:
        return float("nan")
    targets = autoattack_targets(num_classes(model, images))
    device = model_device(model)
    atk = pyautoattack.AutoAttack(PadLogits(model), norm="Linf", eps=eps,
                                  version=AUTOATTACK_VERSION, seed=seed, device=device)
    atk.apgd_targeted.n_target_classes = targets
    atk.fab.n_target_classes = targets
    atk.square.n_queries = square_queries
    devices = [device] if device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices), \
            _quiet_autoattack(atk.logger, log):
        adv, _ = atk.run_standard_evaluation(images.detach().cpu(), labels.detach().cpu(),
                                             batch_size=batch_size)
    return _accuracy(model, adv, labels)


def gradient_masking_warning(pgd_accuracy: float, autoattack_accuracy: float) -> str | None:
    """The card's sanity check (Croce & Hein; Carlini et al. 2019, "On evaluating adversarial
    robustness"): AutoAttack contains a stronger gradient attack than PGD, so on the same images
    at the same eps its accuracy must not exceed PGD's. A warning text when it does (the
    gradients the attacks follow are probably masked or obfuscated: the robustness numbers are
    not to be trusted), else None."""
    if autoattack_accuracy > pgd_accuracy:
        return (f"AutoAttack accuracy {autoattack_accuracy:.3f} > PGD accuracy "
                f"{pgd_accuracy:.3f} at the same eps: a sign of gradient masking; the "
                f"robust accuracies may overstate the model's robustness")
    return None


# -- acquisition shift: a chest-X-ray analogue of ImageNet-C ------------------------------------
SHIFT_TRANSFORMS = ("gamma", "window", "bias", "affine", "elastic", "noise")
SHIFT_SEVERITIES = (1.0, 2.0, 4.0)  # times the chain's default bounds
SHIFT_NOISE_SIGMA = 0.02  # the noise transform's bound at severity 1 (the chain's default is off)


def shift_bounds(transform: str, severity: float, bounds: ChainBounds | None = None
                 ) -> ChainBounds:
    """The bounds of ``transform`` alone (every other amplitude 0) at ``severity`` times
    ``bounds`` (default :class:`ChainBounds`; noise: :data:`SHIFT_NOISE_SIGMA`)."""
    if transform not in SHIFT_TRANSFORMS:
        raise ValueError(f"unknown shift transform {transform!r}; valid: {SHIFT_TRANSFORMS}")
    b = bounds or ChainBounds()
    keep = {"gamma": ("gamma",), "window": ("contrast", "brightness"), "bias": ("bias",),
            "affine": ("rotation", "scale", "translation"), "elastic": ("elastic",),
            "noise": ("noise",)}[transform]
    amplitudes = ("gamma", "contrast", "brightness", "bias", "rotation", "scale", "translation",
                  "elastic", "noise")
    zeros: dict[str, Any] = {k: 0.0 for k in amplitudes if k not in keep}
    alone = replace(b, **zeros)
    if transform == "noise" and alone.noise == 0:
        alone = replace(alone, noise=SHIFT_NOISE_SIGMA)
    return alone.scaled(severity)


def shifted(images: Tensor, transform: str, severity: float, seed: int = 0,
            bounds: ChainBounds | None = None) -> Tensor:
    """``images`` under ``transform`` alone at ``severity``: parameters drawn uniformly inside
    the bounds of :func:`shift_bounds` (no gradient, no model), from ``seed``.
    Shape: ``N x C x H x W`` in [0, 1] -> the same."""
    gen = torch.Generator().manual_seed(seed)
    return random_chain(images, gen, shift_bounds(transform, severity, bounds))


def acquisition_shift_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *,
                               transforms: tuple[str, ...] = SHIFT_TRANSFORMS,
                               severities: tuple[float, ...] = SHIFT_SEVERITIES, seed: int = 0,
                               bounds: ChainBounds | None = None) -> dict[str, float]:
    """Accuracy of ``model`` under each acquisition transform alone at each severity
    (``shift_<transform>_<severity>``, :func:`shifted`), and their mean (``shift_mean``).
    The same seed gives every model the same shifted images."""
    labels = labels.cpu()
    out: dict[str, float] = {}
    for t in transforms:
        for s in severities:
            x = shifted(images, t, s, seed, bounds)
            out[f"shift_{t}_{s:g}"] = float(
                (predict_logits(model, x).argmax(1) == labels).float().mean())
    out["shift_mean"] = sum(out.values()) / len(out) if out else float("nan")
    return out


def chain_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float = 8 / 255,
                   seed: int = 0, batch_size: int = 64, **options: Any) -> float:
    """Accuracy under the adversarial chain (registry attack ``chain``, one sign step by
    default) crafted on ``model`` itself; ``eps`` scales its bounds (8/255: the defaults)."""
    return adversarial_accuracy(model, images, labels, "chain", eps=eps, seed=seed,
                                batch_size=batch_size, **options)


# -- every robustness column at once: the one evaluation path (the experiment calls it) --------
def noise_accuracy(model: nn.Module, images: Tensor, labels: Tensor,
                   sigmas: Sequence[float], *, seed: int = 0) -> dict[str, float]:
    """``acc_noise_<sigma>``: accuracy on ``clip(images + sigma * z, 0, 1)``, ``z ~ N(0, 1)``
    of shape ``N x C x H x W`` drawn from ``derive_seed(seed, 1000 + i)`` for the ``i``-th sigma
    of ``sigmas``."""
    out: dict[str, float] = {}
    for i, sigma in enumerate(sigmas):
        gen = torch.Generator().manual_seed(derive_seed(seed, 1000 + i))
        noise = sigma * torch.randn(images.shape, generator=gen)
        out[f"acc_noise_{sigma:g}"] = _accuracy(model, (images + noise).clamp(0, 1), labels)
    return out


@dataclass(frozen=True)
class RobustnessOptions:
    """The settings of :func:`robustness_columns`; eps in 1/255 units. The experiment's are its
    config's ``robustness:`` section with the top-level ``eps``, ``pgd:`` / ``mladv:`` /
    ``chain:`` options and ``split.seed`` as ``subset_seed``
    (:func:`mladv.experiment.measure.robustness_options`)."""

    attacks: tuple[str, ...] = ("mladv",)  # acc_<name> at ``eps``: "mladv" and/or "pgd"
    eps: float = 8.0
    pgd_eps: tuple[float, ...] = (2.0, 8.0)  # acc_pgd_<E>
    pgd_options: Mapping[str, Any] = field(default_factory=dict)
    mladv_options: Mapping[str, Any] = field(default_factory=dict)
    chain_options: Mapping[str, Any] = field(default_factory=dict)
    max_images: int | None = 64  # the stratified robustness subset (None: every image)
    subset_seed: int = 0
    autoattack_images: int = 0  # the first N of the subset's stratified order (0: off)
    autoattack_eps: float = 2.0
    square_queries: int = 5000  # 5000: the standard version
    noise_sigmas: tuple[float, ...] = (0.02, 0.05)
    acquisition_shift: bool = False  # shift_<transform>_<severity>, acc_shift_mean, acc_chain
    ece_bins: int = 15
    batch_size: int = 32

    def check(self) -> None:
        """One ``ValueError`` line naming the first bad option (before any compute)."""
        bad = [a for a in self.attacks if a not in ("mladv", "pgd")]
        if bad:
            raise ValueError(f"attacks must be 'mladv' / 'pgd', got {bad}")
        if any(not 0 < e <= 255 for e in (self.eps, *self.pgd_eps, self.autoattack_eps)):
            raise ValueError("eps, pgd_eps and autoattack_eps are in 1/255 units, each in (0, 255]")
        if any(s <= 0 for s in self.noise_sigmas):
            raise ValueError(f"noise_sigmas must be > 0, got {list(self.noise_sigmas)}")
        for name in ("square_queries", "ece_bins", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.autoattack_images < 0 or (self.max_images is not None and self.max_images < 1):
            raise ValueError("autoattack_images must be >= 0 and max_images >= 1")


def robustness_subsets(labels: Tensor, opts: RobustnessOptions, n_classes: int
                       ) -> tuple[Tensor, Tensor]:
    """(robustness subset, AutoAttack subset), sorted indices: the first ``max_images`` of
    :func:`stratified_order` with ``subset_seed``, and the first ``min(autoattack_images,
    n_robust)`` of that same order (a subset of the first, as class-balanced)."""
    sub = stratified_subset(labels, opts.max_images, opts.subset_seed, n_classes)
    k = min(opts.autoattack_images, int(sub.shape[0]))
    auto = (stratified_subset(labels, k, opts.subset_seed, n_classes) if k
            else torch.zeros(0, dtype=torch.long))
    return sub, auto


def robustness_columns(model: nn.Module, images: Tensor, labels: Tensor,
                       opts: RobustnessOptions | None = None, *, seed: int = 0,
                       n_classes: int | None = None) -> dict[str, float]:
    """Every robustness column of the experiment (its ``result["robust"]``, bit for bit) for
    ``model`` on ``images`` ``N x C x H x W`` in [0, 1] with ``labels`` ``N``; attacks crafted
    white-box on ``model`` itself with attack seed ``seed``, batch ``b`` seeded
    ``derive_seed(seed, 0, b)`` (:func:`adversarial_accuracy`):

    - on the robustness subset (:func:`robustness_subsets`): ``acc_<attack>`` at ``eps``,
      ``acc_pgd_<E>`` at each ``pgd_eps`` (``pgd_options``), ``acc_chain`` (adversarial chain at
      its default bounds and ``chain_options``, with ``acquisition_shift``);
    - on its AutoAttack part: ``acc_autoattack_<E>`` (:func:`autoattack_accuracy`, seed ``seed``);
    - on every image: ``acc_noise_<sigma>`` (:func:`noise_accuracy`) and, with
      ``acquisition_shift``, ``shift_<transform>_<severity>`` and their mean ``acc_shift_mean``
      (:func:`acquisition_shift_accuracy` seeded ``derive_seed(seed, 2000)``).

    ``n_classes`` (default: the model's) sets the classes the subset is stratified over."""
    opts = opts or RobustnessOptions()
    opts.check()
    labels = labels.cpu()
    k = num_classes(model, images) if n_classes is None else n_classes
    sub, auto = robustness_subsets(labels, opts, k)
    x, y = images[sub], labels[sub]
    common = {"seed": seed, "batch_size": opts.batch_size}
    out: dict[str, float] = {}
    for name in opts.attacks:
        extra = opts.mladv_options if name == "mladv" else opts.pgd_options
        out[f"acc_{name}"] = adversarial_accuracy(model, x, y, name,
                                                  **{**extra, "eps": opts.eps / 255, **common})
    for e in opts.pgd_eps:
        out[f"acc_pgd_{e:g}"] = adversarial_accuracy(
            model, x, y, "pgd", **{**opts.pgd_options, "eps": e / 255, **common})
    if auto.shape[0]:
        out[f"acc_autoattack_{opts.autoattack_eps:g}"] = autoattack_accuracy(
            model, images[auto], labels[auto], eps=opts.autoattack_eps / 255,
            square_queries=opts.square_queries, seed=seed, batch_size=opts.batch_size)
    out.update(noise_accuracy(model, images, labels, opts.noise_sigmas, seed=seed))
    if opts.acquisition_shift:
        shift = acquisition_shift_accuracy(model, images, labels, seed=derive_seed(seed, 2000))
        out.update({key: v for key, v in shift.items() if key != "shift_mean"})
        out["acc_shift_mean"] = shift["shift_mean"]
        out["acc_chain"] = chain_accuracy(model, x, y,
                                          **{**opts.chain_options, "eps": 8 / 255, **common})
    return out


def robustness_report(model: nn.Module, images: Tensor, labels: Tensor,
                      opts: RobustnessOptions | None = None, *, seed: int = 0,
                      n_classes: int | None = None) -> dict[str, Any]:
    """:func:`robustness_columns` with the clean numbers on every image: ``n``, ``n_robust``,
    ``n_autoattack``, ``accuracy`` and ``ece`` (``ece_bins`` bins; the experiment's
    ``clean.ece``), then the columns.

    Example (an experiment's ``acc_pgd_2`` of seed 0, ``robustness.max_images: 64``)::
        >>> robustness_report(model, test.images, test.labels,
        ...                   RobustnessOptions(pgd_eps=(2.0,), max_images=64, subset_seed=0))
    """
    opts = opts or RobustnessOptions()
    opts.check()
    k = num_classes(model, images) if n_classes is None else n_classes
    sub, auto = robustness_subsets(labels.cpu(), opts, k)
    probs = predict_logits(model, images).softmax(1)
    return {"n": int(images.shape[0]), "n_robust": int(sub.shape[0]),
            "n_autoattack": int(auto.shape[0]),
            "accuracy": _accuracy(model, images, labels),
            "ece": expected_calibration_error(probs, labels.cpu(), opts.ece_bins),
            **robustness_columns(model, images, labels, opts, seed=seed, n_classes=k)}
