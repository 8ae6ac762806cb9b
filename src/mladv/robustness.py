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
    return _mean(adversarial_correct(model, images, labels, attack, eps=eps, seed=seed,
                                     batch_size=batch_size, **options))


def adversarial_correct(model: nn.Module, images: Tensor, labels: Tensor, attack: str = "pgd",
                        *, eps: float = 8 / 255, seed: int = 0, batch_size: int = 64,
                        **options: Any) -> Tensor:
    """Per image, whether ``model`` still classifies it correctly once attacked as
    :func:`adversarial_accuracy` attacks it (that accuracy is this vector's mean).
    Shape: images ``N x C x H x W``, labels ``N`` -> bool ``N``."""
    atk = make_attack(attack, model, eps=eps, seed=seed, **options)
    adv = craft_shard(atk, images, labels, seed=seed, shard=0, batch_size=batch_size)
    return _correct(model, adv, labels)


def _correct(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """Per image (bool ``N``, on the CPU), whether its arg-max logit is the label."""
    return predict_logits(model, images).argmax(1) == labels.cpu()


def _mean(correct: Tensor) -> float:
    """The fraction of True in ``correct`` (NaN for none): an accuracy."""
    return float(correct.float().mean()) if correct.numel() else float("nan")


def _accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """The fraction of ``images`` whose arg-max logit is the label."""
    return float(_correct(model, images, labels).float().mean())


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
    """The mean of :func:`autoattack_correct` (NaN on no image)."""
    return _mean(autoattack_correct(model, images, labels, eps=eps, seed=seed,
                                    batch_size=batch_size, square_queries=square_queries, log=log))


def autoattack_correct(model: nn.Module, images: Tensor, labels: Tensor, *,
                       eps: float = 2 / 255, seed: int = 0, batch_size: int = 64,
                       square_queries: int = STANDARD_SQUARE_QUERIES, log: Log | None = None
                       ) -> Tensor:
    """Per image (bool ``N``): still correct under the official AutoAttack (Croce & Hein, ICML 2020,
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
    :func:`autoattack_label`. Shape: images ``N x C x H x W``, labels ``N`` -> bool ``N``.

    Measured (shared 2-core CPU, one thread; small_cnn trained as ``tests/conftest.py``'s
    ``tiny_trained``, 12 phantoms of 24 px, eps 2/255): clean 0.917, AutoAttack 0.417 (PGD-10:
    0.417); APGD-CE 1.8 s, APGD-T 1.8 s, FAB-T 2.6 s, Square 16.9 s for the 5 images the others
    left robust (23 s in all; 7 s with ``square_queries=50``). Square dominates: use a small
    fixed subset on a CPU."""
    if images.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
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
    return _correct(model, adv, labels)


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
    out = {k: _mean(v) for k, v in shift_correct(model, images, labels, transforms=transforms,
                                                 severities=severities, seed=seed,
                                                 bounds=bounds).items()}
    out["shift_mean"] = sum(out.values()) / len(out) if out else float("nan")
    return out


def shift_correct(model: nn.Module, images: Tensor, labels: Tensor, *,
                  transforms: tuple[str, ...] = SHIFT_TRANSFORMS,
                  severities: tuple[float, ...] = SHIFT_SEVERITIES, seed: int = 0,
                  bounds: ChainBounds | None = None) -> dict[str, Tensor]:
    """Per image (bool ``N``) and ``shift_<transform>_<severity>``: still correct under that
    transform alone (:func:`shifted` with ``seed``)."""
    return {f"shift_{t}_{s:g}": _correct(model, shifted(images, t, s, seed, bounds), labels)
            for t in transforms for s in severities}


def chain_accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float = 8 / 255,
                   seed: int = 0, batch_size: int = 64, **options: Any) -> float:
    """Accuracy under the adversarial chain (registry attack ``chain``, one sign step by
    default) crafted on ``model`` itself; ``eps`` scales its bounds (8/255: the defaults)."""
    return adversarial_accuracy(model, images, labels, "chain", eps=eps, seed=seed,
                                batch_size=batch_size, **options)


def minimal_flip_eps(model: nn.Module, images: Tensor, labels: Tensor, *,
                     max_eps: float = 8 / 255, bisections: int = 6, seed: int = 0,
                     batch_size: int = 64, **options: Any) -> Tensor:
    """Per image, the smallest L-inf budget (in [0, 1] units) at which own-model PGD
    (:func:`adversarial_correct`, ``options``) flips the prediction, by bisection on
    ``[0, max_eps]``: 0 for an image misclassified clean, ``inf`` for one PGD does not flip
    at ``max_eps``; otherwise the upper end of the bracket ``(lo, hi]`` after ``bisections``
    halvings (resolution ``max_eps / 2**bisections``). Bisection assumes PGD's success grows
    with eps (true of the attack's budget, up to its randomness). Images sharing a midpoint
    are attacked as one batch; step ``s``'s attack seed is ``derive_seed(seed, 3000, s)``
    (the check at ``max_eps``: ``s = 0``). Written here: no maintained library bisects a
    registry attack. Shape: images ``N x C x H x W``, labels ``N`` -> float64 ``N``."""
    labels = labels.cpu()
    n = int(images.shape[0])
    out = torch.full((n,), float("inf"), dtype=torch.float64)
    clean = _correct(model, images, labels)
    out[~clean] = 0.0
    idx = clean.nonzero().flatten()
    if idx.numel() == 0:
        return out
    common: dict[str, Any] = {**options, "batch_size": batch_size}
    held = adversarial_correct(model, images[idx], labels[idx], "pgd", eps=max_eps,
                               seed=derive_seed(seed, 3000, 0), **common)
    active = idx[~held]
    lo = torch.zeros(active.numel(), dtype=torch.float64)
    hi = torch.full((active.numel(),), float(max_eps), dtype=torch.float64)
    for step in range(1, bisections + 1):
        mid = (lo + hi) / 2
        for value in torch.unique(mid).tolist():
            group = (mid == value).nonzero().flatten()
            rows = active[group]
            ok = adversarial_correct(model, images[rows], labels[rows], "pgd", eps=value,
                                     seed=derive_seed(seed, 3000, step), **common)
            hi[group[~ok]] = value
            lo[group[ok]] = value
    out[active] = hi
    return out


# -- every robustness column at once: the one evaluation path (the experiment calls it) --------
def noise_accuracy(model: nn.Module, images: Tensor, labels: Tensor,
                   sigmas: Sequence[float], *, seed: int = 0) -> dict[str, float]:
    """``acc_noise_<sigma>``: accuracy on ``clip(images + sigma * z, 0, 1)``, ``z ~ N(0, 1)``
    of shape ``N x C x H x W`` drawn from ``derive_seed(seed, 1000 + i)`` for the ``i``-th sigma
    of ``sigmas``."""
    return {k: _mean(v) for k, v in noise_correct(model, images, labels, sigmas,
                                                  seed=seed).items()}


def noise_correct(model: nn.Module, images: Tensor, labels: Tensor,
                  sigmas: Sequence[float], *, seed: int = 0) -> dict[str, Tensor]:
    """Per image (bool ``N``) and ``acc_noise_<sigma>``: still correct under the noise of
    :func:`noise_accuracy`."""
    out: dict[str, Tensor] = {}
    for i, sigma in enumerate(sigmas):
        gen = torch.Generator().manual_seed(derive_seed(seed, 1000 + i))
        noise = sigma * torch.randn(images.shape, generator=gen)
        out[f"acc_noise_{sigma:g}"] = _correct(model, (images + noise).clamp(0, 1), labels)
    return out


@dataclass(frozen=True)
class RobustnessOptions:
    """The one options schema of every robustness number (the experiment, ``mladv evaluate``);
    eps in 1/255 units. The experiment's are its config's ``robustness:`` section with the
    top-level ``eps``, ``pgd:`` / ``mladv:`` / ``chain:`` options and ``split.seed`` as
    ``subset_seed`` (:func:`mladv.experiment.measure.robustness_options`); the card's come from
    ``mladv evaluate``'s flags (:func:`mladv.evaluate.card_options`). Options after
    ``batch_size`` are off by default (the experiment's columns are unchanged by them)."""

    attacks: tuple[str, ...] = ("mladv",)  # acc_<name> at ``eps``: "mladv" and/or "pgd"
    eps: float = 8.0
    pgd_eps: tuple[float, ...] = (2.0, 8.0)  # acc_pgd_<E>: the robust-accuracy curve
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
    chain: bool | None = None  # acc_chain (None: with acquisition_shift)
    shift_severities: tuple[float, ...] = SHIFT_SEVERITIES
    min_eps_images: int = 0  # median_min_eps on the first N of the subset's order (0: off)
    min_eps_max: float = 8.0  # the bisection's upper end, 1/255 units
    min_eps_steps: int = 6
    bm3d_images: int = 0  # acc_bm3d_clean / acc_bm3d_pgd_<max pgd_eps> on the first N (0: off)
    bm3d_sigma: float = 0.05
    bootstrap: int = 0  # patient-level bootstrap resamples of every CI (0: no CIs)
    ci_level: float = 0.95
    # corr_<family>_<severity> and corr_clean on the robustness subset (() : off); families of
    # mladv.evaluation.corruptions.CORRUPTIONS (ImageNet-C / MedMNIST-C protocol)
    corruptions: tuple[str, ...] = ()
    corruption_severities: tuple[int, ...] = (1, 2, 3, 4, 5)

    def check(self) -> None:
        """One ``ValueError`` line naming the first bad option (before any compute)."""
        bad = [a for a in self.attacks if a not in ("mladv", "pgd")]
        if bad:
            raise ValueError(f"attacks must be 'mladv' / 'pgd', got {bad}")
        if any(not 0 < e <= 255 for e in (self.eps, *self.pgd_eps, self.autoattack_eps,
                                          self.min_eps_max)):
            raise ValueError("eps, pgd_eps, autoattack_eps and min_eps_max are in 1/255 units, "
                             "each in (0, 255]")
        if any(s <= 0 for s in self.noise_sigmas):
            raise ValueError(f"noise_sigmas must be > 0, got {list(self.noise_sigmas)}")
        if any(s <= 0 for s in self.shift_severities):
            raise ValueError(f"shift_severities must be > 0, got {list(self.shift_severities)}")
        for name in ("square_queries", "ece_bins", "batch_size", "min_eps_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("min_eps_images", "bm3d_images", "bootstrap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.autoattack_images < 0 or (self.max_images is not None and self.max_images < 1):
            raise ValueError("autoattack_images must be >= 0 and max_images >= 1")
        if self.corruptions:
            from .evaluation.corruptions import CORRUPTIONS, SEVERITIES
            unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
            if unknown:
                raise ValueError(f"unknown corruption(s) {unknown}; known: "
                                 f"{', '.join(CORRUPTIONS)}")
            if not self.corruption_severities or any(
                    s not in SEVERITIES for s in self.corruption_severities):
                raise ValueError(f"corruption_severities must be in 1..5, got "
                                 f"{list(self.corruption_severities)}")
        if not self.bm3d_sigma > 0 or not 0 < self.ci_level < 1:
            raise ValueError(f"bm3d_sigma must be > 0 and ci_level in (0, 1), got "
                             f"{self.bm3d_sigma} and {self.ci_level}")

    @property
    def with_chain(self) -> bool:
        """Whether ``acc_chain`` is measured."""
        return self.acquisition_shift if self.chain is None else self.chain


def robustness_subsets(labels: Tensor, opts: RobustnessOptions, n_classes: int
                       ) -> tuple[Tensor, Tensor]:
    """(robustness subset, AutoAttack subset), sorted indices: the first ``max_images`` of
    :func:`stratified_order` with ``subset_seed``, and the first ``min(autoattack_images,
    n_robust)`` of that same order (a subset of the first, as class-balanced)."""
    sub = stratified_subset(labels, opts.max_images, opts.subset_seed, n_classes)
    return sub, _first_of_subset(labels, opts, n_classes, opts.autoattack_images, sub)


def _first_of_subset(labels: Tensor, opts: RobustnessOptions, n_classes: int, k: int,
                     sub: Tensor) -> Tensor:
    """The first ``min(k, len(sub))`` of the subset's stratified order, sorted (empty: 0)."""
    k = min(k, int(sub.shape[0]))
    return (stratified_subset(labels, k, opts.subset_seed, n_classes) if k
            else torch.zeros(0, dtype=torch.long))


Outcome = tuple[Tensor, Tensor]  # (image indices, per-image bool correct at those indices)


def robustness_outcomes(model: nn.Module, images: Tensor, labels: Tensor,
                        opts: RobustnessOptions | None = None, *, seed: int = 0,
                        n_classes: int | None = None) -> dict[str, Outcome]:
    """Per column of :func:`robustness_columns` (its keys but ``acc_shift_mean`` and
    ``median_min_eps``), the images it is measured on and whether each stays correct: the
    column is the mean of that vector, a CI or an A/B comparison resamples it."""
    opts = opts or RobustnessOptions()
    opts.check()
    labels = labels.cpu()
    k = num_classes(model, images) if n_classes is None else n_classes
    sub, auto = robustness_subsets(labels, opts, k)
    x, y = images[sub], labels[sub]
    every = torch.arange(int(images.shape[0]))
    common = {"seed": seed, "batch_size": opts.batch_size}
    out: dict[str, Outcome] = {}
    for name in opts.attacks:
        extra = opts.mladv_options if name == "mladv" else opts.pgd_options
        out[f"acc_{name}"] = sub, adversarial_correct(
            model, x, y, name, **{**extra, "eps": opts.eps / 255, **common})
    for e in opts.pgd_eps:
        out[f"acc_pgd_{e:g}"] = sub, adversarial_correct(
            model, x, y, "pgd", **{**opts.pgd_options, "eps": e / 255, **common})
    if auto.shape[0]:
        out[f"acc_autoattack_{opts.autoattack_eps:g}"] = auto, autoattack_correct(
            model, images[auto], labels[auto], eps=opts.autoattack_eps / 255,
            square_queries=opts.square_queries, seed=seed, batch_size=opts.batch_size)
    out.update({key: (every, c) for key, c in
                noise_correct(model, images, labels, opts.noise_sigmas, seed=seed).items()})
    if opts.acquisition_shift:
        out.update({key: (every, c) for key, c in shift_correct(
            model, images, labels, severities=opts.shift_severities,
            seed=derive_seed(seed, 2000)).items()})
    if opts.with_chain:
        out["acc_chain"] = sub, adversarial_correct(
            model, x, y, "chain", **{**opts.chain_options, "eps": 8 / 255, **common})
    if opts.corruptions:
        out["corr_clean"] = sub, _correct(model, x, y)
        out.update({key: (sub, c) for key, c in corruption_correct(
            model, x, y, opts.corruptions, opts.corruption_severities, seed=seed).items()})
    if opts.bm3d_images:
        rows = _first_of_subset(labels, opts, k, opts.bm3d_images, sub)
        out.update({key: (rows, c) for key, c in bm3d_correct(
            model, images[rows], labels[rows], opts, seed=seed).items()})
    return out


def corruption_correct(model: nn.Module, images: Tensor, labels: Tensor,
                       families: Sequence[str], severities: Sequence[int], *, seed: int = 0
                       ) -> dict[str, Tensor]:
    """Per image (bool ``N``) and ``corr_<family>_<severity>``: still correct under that
    corruption (:func:`mladv.evaluation.corruptions.corrupt`), its noise drawn from a
    generator seeded ``derive_seed(seed, 4000 + i, severity)`` with ``i`` the family's place
    in the registry (the same draws whatever families are chosen)."""
    from .evaluation.corruptions import CORRUPTIONS, corrupt

    order = list(CORRUPTIONS)
    out: dict[str, Tensor] = {}
    for name in families:
        for s in severities:
            gen = torch.Generator().manual_seed(derive_seed(seed, 4000 + order.index(name), s))
            out[f"corr_{name}_{s}"] = _correct(model, corrupt(images, name, s, gen), labels)
    return out


def corruption_summary(columns: Mapping[str, float], families: Sequence[str],
                       severities: Sequence[int], trained: Sequence[str] = ()
                       ) -> dict[str, Any]:
    """The ImageNet-C / MedMNIST-C protocol on the ``corr_*`` columns
    (:func:`mladv.evaluation.corruptions.corruption_error`, errors ``1 - accuracy``, clean
    error ``1 - corr_clean`` on the same images): per family ``error`` (mean over severities)
    and ``relative`` (minus the clean error); ``mce`` / ``relative_mce`` over all families,
    over the ``trained`` ones (the model's augmentation covered them) and the ``unseen``."""
    from .evaluation.corruptions import corruption_error

    errs = {f: [1.0 - columns[f"corr_{f}_{s}"] for s in severities] for f in families}
    ce = corruption_error(errs, 1.0 - columns["corr_clean"], trained=trained)

    def group(g: Any) -> dict[str, Any]:
        return {"families": list(g.families), "mce": g.mce, "relative_mce": g.relative_mce}

    return {"clean_error": ce.clean_error,
            "families": {f: {"error": v.error, "relative": v.relative}
                         for f, v in ce.families.items()},
            "all": group(ce.all), "trained": group(ce.trained), "unseen": group(ce.unseen)}


def bm3d_correct(model: nn.Module, images: Tensor, labels: Tensor, opts: RobustnessOptions,
                 *, seed: int = 0) -> dict[str, Tensor]:
    """Per image (bool ``N``): correct on BM3D-denoised clean images (``acc_bm3d_clean``) and
    denoised PGD images at the largest ``pgd_eps`` (``acc_bm3d_pgd_<E>``; PGD crafted as
    :func:`adversarial_correct` crafts that column), sigma ``bm3d_sigma``
    (:func:`mladv.denoise.bm3d_denoise`)."""
    from .denoise import bm3d_denoise

    eps = max(opts.pgd_eps, default=8.0)
    atk = make_attack("pgd", model, **{**opts.pgd_options, "eps": eps / 255, "seed": seed})
    adv = craft_shard(atk, images, labels, seed=seed, shard=0, batch_size=opts.batch_size)
    workers = 1 if images.shape[0] < 4 else None
    return {"acc_bm3d_clean": _correct(model, bm3d_denoise(images, opts.bm3d_sigma,
                                                           workers=workers), labels),
            f"acc_bm3d_pgd_{eps:g}": _correct(model, bm3d_denoise(adv, opts.bm3d_sigma,
                                                                  workers=workers), labels)}


def robustness_columns(model: nn.Module, images: Tensor, labels: Tensor,
                       opts: RobustnessOptions | None = None, *, seed: int = 0,
                       n_classes: int | None = None) -> dict[str, float]:
    """Every robustness column of the experiment (its ``result["robust"]``, bit for bit) and of
    the card, for ``model`` on ``images`` ``N x C x H x W`` in [0, 1] with ``labels`` ``N``;
    attacks crafted white-box on ``model`` itself with attack seed ``seed``, batch ``b`` seeded
    ``derive_seed(seed, 0, b)`` (:func:`adversarial_accuracy`):

    - on the robustness subset (:func:`robustness_subsets`): ``acc_<attack>`` at ``eps``,
      ``acc_pgd_<E>`` at each ``pgd_eps`` (``pgd_options``; several: the robust-accuracy
      curve), ``acc_chain`` (adversarial chain at its default bounds and ``chain_options``,
      with ``chain`` / ``acquisition_shift``);
    - on its AutoAttack part: ``acc_autoattack_<E>`` (:func:`autoattack_accuracy`, seed ``seed``);
    - on the first ``min_eps_images`` of its order: ``median_min_eps``, the median of
      :func:`minimal_flip_eps` in 1/255 units over those of them classified correctly clean
      (``inf`` when PGD flips at most half of them; NaN when none is right);
      on the first ``bm3d_images``: ``acc_bm3d_clean``, ``acc_bm3d_pgd_<E>``;
    - on the robustness subset, with ``corruptions``: ``corr_clean`` and
      ``corr_<family>_<severity>`` (:func:`corruption_correct`);
    - on every image: ``acc_noise_<sigma>`` (:func:`noise_accuracy`) and, with
      ``acquisition_shift``, ``shift_<transform>_<severity>`` (``shift_severities``) and their
      mean ``acc_shift_mean`` (:func:`acquisition_shift_accuracy` seeded
      ``derive_seed(seed, 2000)``).

    ``n_classes`` (default: the model's) sets the classes the subset is stratified over."""
    opts = opts or RobustnessOptions()
    return _columns(robustness_outcomes(model, images, labels, opts, seed=seed,
                                        n_classes=n_classes),
                    model, images, labels, opts, seed=seed, n_classes=n_classes)


def _columns(outcomes: Mapping[str, Outcome], model: nn.Module, images: Tensor, labels: Tensor,
             opts: RobustnessOptions, *, seed: int, n_classes: int | None) -> dict[str, float]:
    means = {key: _mean(c) for key, (_, c) in outcomes.items()}
    shifts = [v for key, v in means.items() if key.startswith("shift_")]
    out: dict[str, float] = {}
    for key, v in means.items():  # acc_shift_mean right after the shift columns (key order kept)
        if key == "acc_chain" and opts.acquisition_shift:
            out["acc_shift_mean"] = sum(shifts) / len(shifts) if shifts else float("nan")
        out[key] = v
    if opts.acquisition_shift and "acc_shift_mean" not in out:
        out["acc_shift_mean"] = sum(shifts) / len(shifts) if shifts else float("nan")
    if opts.min_eps_images:
        eps = min_eps_per_image(model, images, labels, opts, seed=seed, n_classes=n_classes)[1]
        out["median_min_eps"] = median_min_eps(eps[eps > 0])  # the images right when clean
    return out


def min_eps_per_image(model: nn.Module, images: Tensor, labels: Tensor,
                      opts: RobustnessOptions, *, seed: int = 0, n_classes: int | None = None
                      ) -> Outcome:
    """(indices, :func:`minimal_flip_eps` in 1/255 units) on the first ``min_eps_images`` of
    the robustness subset's stratified order, PGD with ``pgd_options``."""
    labels = labels.cpu()
    k = num_classes(model, images) if n_classes is None else n_classes
    sub, _ = robustness_subsets(labels, opts, k)
    rows = _first_of_subset(labels, opts, k, opts.min_eps_images, sub)
    eps = minimal_flip_eps(model, images[rows], labels[rows], max_eps=opts.min_eps_max / 255,
                           bisections=opts.min_eps_steps, seed=seed,
                           batch_size=opts.batch_size,
                           **opts.pgd_options)
    return rows, eps * 255


def median_min_eps(eps: Tensor) -> float:
    """The median of per-image minimal flipping eps (the mean of the two middle values for an
    even count; ``inf`` where the upper half did not flip; NaN on none)."""
    if eps.numel() == 0:
        return float("nan")
    v = eps.double().sort().values
    n = v.numel()
    return float(v[n // 2]) if n % 2 else float((v[n // 2 - 1] + v[n // 2]) / 2)


def robustness_report(model: nn.Module, images: Tensor, labels: Tensor,
                      opts: RobustnessOptions | None = None, *, seed: int = 0,
                      n_classes: int | None = None, patients: Sequence[str] | None = None
                      ) -> dict[str, Any]:
    """:func:`robustness_columns` with the clean numbers on every image: ``n``, ``n_robust``,
    ``n_autoattack``, ``accuracy`` and ``ece`` (``ece_bins`` bins; the experiment's
    ``clean.ece``), then the columns; with ``opts.bootstrap`` resamples also ``ci``:
    ``{column: {"low", "high", "n", "n_patients"}}``, the patient-level bootstrap CI
    (:mod:`mladv.evaluation.stats`, seed ``seed``) of ``accuracy`` and every accuracy column
    but the per-severity ``shift_*`` / ``corr_*`` ones (summarised per family instead)
    (``patients``: one id per image; None: each image its own patient); and ``sizes``: the
    number of images behind each column; with both ``acc_autoattack_<E>`` and ``acc_pgd_<E>``
    at the same E, ``gradient_masking``: :func:`gradient_masking_warning` on AutoAttack's images
    (None: the check passes).

    Example (an experiment's ``acc_pgd_2`` of seed 0, ``robustness.max_images: 64``)::
        >>> robustness_report(model, test.images, test.labels,
        ...                   RobustnessOptions(pgd_eps=(2.0,), max_images=64, subset_seed=0))
    """
    opts = opts or RobustnessOptions()
    opts.check()
    n = int(images.shape[0])
    if patients is not None and len(patients) != n:
        raise ValueError(f"patients must hold one id per image: {len(patients)} for {n}")
    k = num_classes(model, images) if n_classes is None else n_classes
    sub, auto = robustness_subsets(labels.cpu(), opts, k)
    probs = predict_logits(model, images).softmax(1)
    outcomes = robustness_outcomes(model, images, labels, opts, seed=seed, n_classes=k)
    report: dict[str, Any] = {
        "n": n, "n_robust": int(sub.shape[0]), "n_autoattack": int(auto.shape[0]),
        "accuracy": _accuracy(model, images, labels),
        "ece": expected_calibration_error(probs, labels.cpu(), opts.ece_bins),
        **_columns(outcomes, model, images, labels, opts, seed=seed, n_classes=k)}
    report["sizes"] = {"accuracy": n, **{key: int(i.numel()) for key, (i, _) in outcomes.items()}}
    aa_key, pgd_key = f"acc_autoattack_{opts.autoattack_eps:g}", f"acc_pgd_{opts.autoattack_eps:g}"
    if aa_key in outcomes and pgd_key in outcomes:  # PGD on AutoAttack's images, same eps
        pgd_sub, pgd_ok = outcomes[pgd_key]
        on_auto = torch.isin(pgd_sub, outcomes[aa_key][0])
        report["gradient_masking"] = gradient_masking_warning(_mean(pgd_ok[on_auto]),
                                                              report[aa_key])
    if opts.bootstrap:
        ids = list(patients) if patients is not None else [str(i) for i in range(n)]
        clean = torch.arange(n), _correct(model, images, labels)
        report["ci"] = {key: confidence_interval(idx, c, ids, opts, seed=seed)
                        for key, (idx, c) in {"accuracy": clean, **outcomes}.items()
                        if not key.startswith(("shift_", "corr_"))}
    return report


def confidence_interval(indices: Tensor, correct: Tensor, patients: Sequence[str],
                        opts: RobustnessOptions, *, seed: int = 0) -> dict[str, float]:
    """The patient-level bootstrap CI (:func:`mladv.evaluation.stats.accuracy_ci`,
    ``opts.bootstrap`` resamples at ``opts.ci_level``) of the accuracy of the images at
    ``indices`` (``correct``: bool, one per index; ``patients``: one id per image of the set)."""
    from .evaluation.stats import accuracy_ci

    ids = [patients[int(i)] for i in indices]
    if not ids:
        return {"low": float("nan"), "high": float("nan"), "n": 0, "n_patients": 0}
    ci = accuracy_ci(correct.numpy(), ids, n_boot=opts.bootstrap, seed=seed,
                     level=opts.ci_level)
    return {"low": ci.low, "high": ci.high, "n": ci.n_images, "n_patients": ci.n_patients}
