"""MLAdv: multi-loss hybrid adversarial function + heuristic projection (SPEC eqs. 1-10).

The paper's method and the measured default only. The exploratory options of ``docs/method.md``
live in :mod:`mladv.attacks.variants` and plug into :class:`MLAdv`'s one loop through its hooks
(``_start``, ``_plan``, ``_sample_weights``, ``_direction``, ``_adv_loss``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, Unpack

import torch
from torch import Tensor, nn

from ..features import FeatureTap, conv_layers, default_origin_layer
from ..losses import adversarial_loss, detail_loss, origin_loss, style_loss
from .balance import (
    SampleWeights,
    Terms,
    combine_calibrated,
    combine_eq2_literal,
    combine_grad_norm,
    mix_weights,
)
from .base import Attack, ComputeOptions
from .multilabel import fooled, per_image_bce
from .projection import heuristic_projection, projection_kernel
from .references import StylePolicy, reference_features, style_reference

Balance = Literal["grad-norm", "literal", "calibrated"]
DetailOn = Literal["image", "delta"]
Transform = Callable[[Tensor], Tensor]


class StepPlan(NamedTuple):
    """One iteration of eq. 9: realism terms (eqs. 4-6) on or off, the step ``alpha``, the
    projection factor ``gamma``, a transform of the model's input (None: the iterate)."""

    realism: bool
    alpha: float
    gamma: float
    transform: Transform | None = None


def logit_margin(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Untargeted ``z_y - max_{j!=y} z_j``, targeted ``max_{j!=t} z_j - z_t``: negative when the
    sample fools the model. Shape: logits ``N x K``, labels (targets) ``N`` -> ``N``."""
    cls = labels if targets is None else targets
    own = logits.gather(1, cls[:, None]).squeeze(1)
    other = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return own - other if targets is None else other - own


def _float32(feats: list[Tensor]) -> list[Tensor]:
    """bf16 / fp16 features (bf16 autocast) cast to float32, differentiably: eq. 5's squared
    differences are summed in float32. float32 / float64 features are returned as they are."""
    return [f.float() if f.dtype in (torch.bfloat16, torch.float16) else f for f in feats]


class MLAdv(Attack):
    r"""MLAdv (Wang, Cheng & Chen): realistic adversarial samples for data augmentation.

    Minimises the hybrid loss of eq. 2,
    ``L_hybrid = w_s L_s + w_o L_o + w_d L_d + tau L_adv`` (eqs. 4-7), with the patch-wise update
    and heuristic projection of eqs. 8-10 (step ``alpha = beta * eps / steps``, projection factor
    ``gamma``, kernel ``W_o`` of size ``kernel_size``), under the L-infinity budget ``eps``:

        g      = ∇_{x_t} L_hybrid            (combined as ``balance`` says)
        A     <- A - alpha sign(g);  proj = gamma sign(W_o * P(A));  A <- A + proj
        x_t+1  = clip_[0,1](x + clip_[-eps,eps](x_t - alpha sign(g) + proj - x))

    ``balance="literal"`` is eq. 2 exactly as written, ``tau`` weighing L_adv
    (:func:`combine_eq2_literal`; eq. 5's origin term summed over elements, as SPEC writes it);
    measured on real chest X-rays it does not attack (SPEC "Measured"). ``"grad-norm"``
    normalises each term's gradient per sample, ``g = g_adv/|g_adv| + s * sum_k w_k g_k/|g_k|``
    with ``s = realism_scale`` the weight of the realism terms relative to the adversarial one
    (one backward pass per term; :func:`combine_grad_norm`); ``"calibrated"`` gives the same
    mix with ONE backward pass per
    step: the factors ``|g_adv|/|g_k|`` are measured once (step 2, the first where the origin
    term has a gradient) and then scale the losses (:func:`combine_calibrated`); step 1 is the
    adversarial term alone. Outside ``literal`` the origin term is averaged over each layer's
    elements (its scale then does not depend on the image size; the per-sample normalisation
    removes a constant factor anyway).

    The defaults are the variant chosen by measurement on real chest X-rays, on a validation
    split (``benchmarks/mladv_quality.py``, ``docs/method.md``): the patch-wise update with a
    5 x 5 projection kernel, the detail term on the perturbation (TV of delta) at
    ``realism_scale = 0.1`` relative to the adversarial gradient, style and origin off (they
    cost a backward pass each and lowered transfer), and up to 10 PGD steps for the few samples
    the big patch-wise steps leave unfooled (``refine``). That is one backward pass through the
    model per step.

    The style reference ``"same-class"`` is another image of the same class **in the same
    batch**: results depend on the batch size and its composition, and a sample that is alone in
    its class in the batch styles itself (its style term is then zero at the start). Pass
    ``style_images`` (or a tensor as ``style``) for a reference that does not depend on the batch.

    With every realism weight at 0, ``kernel_size=3, refine=0`` the loop is PI-FGSM (torchattacks
    ``PIFGSM``); :func:`mladv.attacks.pifgsm` passes these.

    Multilabel models (``task="multilabel"``, labels ``N x K`` with NaN = unknown): eq. 7's
    ``log p_y`` becomes ``-L_i``, minus image ``i``'s mean binary cross-entropy over its known
    findings (:func:`~mladv.attacks.multilabel.per_image_bce`); targeted, ``L_adv = L_i`` on the
    ``N x K`` ``target_labels``. The ``"same-class"`` style partner becomes the batch image with
    the NEAREST LABEL SET (Hamming distance over the findings known in both, ties to the lowest
    index, never itself: :func:`~mladv.attacks.multilabel.nearest_label_partners`). ``refine``'s
    success test: any known finding's decision disagrees with its label at the thresholds (0.5
    unless the model carries ``thresholds``); targeted, every known target entry is reached.

    Args:
        model: classifier taking ``N x C x H x W`` float32 images in [0, 1], returning logits.
        eps: L-infinity budget in [0, 1] units.
        steps: number of iterations T (>= 1).
        beta: amplification factor (> 0); step ``alpha = beta * eps / steps``.
        gamma: projection factor (default ``alpha``).
        kernel_size: side of the projection kernel ``W_o`` (odd, >= 3).
        tau: eq. 2's weight of L_adv, with ``balance="literal"`` only (default 0.1; the
            paper's is 0.5). Given with another balance: a ``ValueError`` naming
            ``realism_scale``.
        realism_scale: with ``balance="grad-norm"`` / ``"calibrated"``, the weight ``s`` of the
            normalised realism gradients relative to the adversarial one (default 0.1, the
            measured default). Given with ``balance="literal"``: a ``ValueError`` naming ``tau``.
        style_weight, origin_weight, detail_weight: ``w_s, w_o, w_d`` (>= 0); 0 switches a term
            off. The style and origin terms need Conv2d layers (or explicit layer names).
        style_layers: ``"all-conv"``, ``"early-conv"`` (the first third), or module names (S).
        origin_layer: module name(s) of the origin layer(s) O (default: ``layer3`` of a ResNet,
            else a conv layer three quarters of the way down).
        style: the style reference x_s: ``"same-class"`` (see above), ``"self"``, or a tensor
            ``1 x C x H x W`` / ``N x C x H x W``.
        mask: optional region mask broadcastable to ``N x C x H x W``; delta is zero where it is 0.
        projection: apply the heuristic projection (eq. 9); False gives plain clipping.
        balance: ``"grad-norm"``, ``"calibrated"`` or ``"literal"`` (see above).
        detail_on: ``"image"`` (eq. 6, TV of x_a) or ``"delta"`` (TV of the perturbation).
        refine: up to this many extra PGD steps (``eps/4``, no projection, no realism) for the
            samples that do not fool the model after the T steps; 0 = none.
        targeted: reach ``target_labels`` instead of leaving ``labels``.
        seed: seeds the style-partner and random-target draws.
        precision, channels_last: bf16 autocast and channels_last memory format, on
            :class:`~mladv.attacks.Attack` (every attack takes them); under bf16 the
            perturbation, the projection (eq. 9), the Grams and eq. 5 stay float32.

    Attributes:
        backward_passes: backward passes through the model in the last call, in whole-batch
            equivalents (a ``refine`` pass over 2 of 32 samples counts 1/16); for speed checks.
        last_targets: the target classes of the last targeted call (``N``), else None.

    Shape:
        images ``N x C x H x W`` in [0, 1] (C = 1 for chest X-rays; the perturbation keeps C),
        labels ``N`` -> ``N x C x H x W``.

    Examples::
        >>> atk = MLAdv(model, eps=8/255, steps=10)
        >>> x_adv = atk(images, labels)
        >>> x_adv = MLAdv(model, targeted=True)(images, labels, target_labels=targets)
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, steps: int = 10,
                 beta: float = 10.0, gamma: float | None = None, kernel_size: int = 5,
                 tau: float | None = None, realism_scale: float | None = None,
                 style_weight: float = 0.0, origin_weight: float = 0.0,
                 detail_weight: float = 1.0, style_layers: str | Sequence[str] = "all-conv",
                 origin_layer: str | Sequence[str] | None = None,
                 style: StylePolicy | Tensor = "same-class", mask: Tensor | None = None,
                 projection: bool = True, balance: Balance = "grad-norm",
                 detail_on: DetailOn = "delta", refine: int = 10, targeted: bool = False,
                 seed: int | None = None, **compute: Unpack[ComputeOptions]) -> None:
        super().__init__(model, eps=eps, targeted=targeted, seed=seed, **compute)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.steps, self.beta, self.refine = steps, beta, refine
        self.alpha = beta * self.eps / steps
        self.gamma = self.alpha if gamma is None else float(gamma)
        self.kernel = projection_kernel(kernel_size)
        self.weights = {"style": style_weight, "origin": origin_weight, "detail": detail_weight}
        self.style, self.mask, self.projection = style, mask, projection
        self.balance, self.detail_on = balance, detail_on
        self._check_options()
        self.tau, self.realism_scale = mix_weights(balance, tau, realism_scale)
        layers = self._style_layer_names(model, style_layers)
        if style_weight > 0 and not layers:  # never drop the style term silently
            raise ValueError("style_weight > 0 but the model has no Conv2d layer to take style "
                             "features from; pass style_layers=<module names> or style_weight=0")
        self.style_layers = layers if style_weight > 0 else []
        self.origin_layers = (self._origin_layer_names(model, origin_layer) if origin_weight > 0
                              else [])
        self.backward_passes = 0.0
        self.last_targets: Tensor | None = None

    def _check_options(self) -> None:
        """One clear ``ValueError`` per bad option."""
        choices = {"balance": ("grad-norm", "literal", "calibrated"),
                   "detail_on": ("image", "delta")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name, value in {**{f"{k}_weight": v for k, v in self.weights.items()},
                            "refine": self.refine, "gamma": self.gamma}.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if isinstance(self.style, str) and self.style not in ("same-class", "self"):
            raise ValueError(f"style must be 'same-class', 'self' or a tensor, got {self.style!r}")

    @staticmethod
    def _origin_layer_names(model: nn.Module, layer: str | Sequence[str] | None) -> list[str]:
        if layer is None:
            return [default_origin_layer(model)]
        return [layer] if isinstance(layer, str) else list(layer)

    @staticmethod
    def _style_layer_names(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
        if layers in ("all-conv", "early-conv"):
            convs = conv_layers(model)
            return convs if layers == "all-conv" else convs[:max(1, len(convs) // 3)]
        if isinstance(layers, str):
            raise ValueError(f"style_layers must be 'all-conv', 'early-conv' or a list of module "
                             f"names, got {layers!r}")
        return list(layers)

    # -- references -------------------------------------------------------------------------
    def _style_reference(self, images: Tensor, labels: Tensor, style_images: Tensor | None,
                         gen: torch.Generator) -> Tensor:
        """x_s of eq. 4 (:func:`~mladv.attacks.references.style_reference`)."""
        style = style_images if style_images is not None else self.style
        return style_reference(images, labels, style, gen, multilabel=self.multilabel)

    def _references(self, images: Tensor, style_ref: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Style Grams of x_s and origin features of x (eqs. 4, 5)."""
        return reference_features(self.model, self.style_layers, self.origin_layers, images,
                                  style_ref)

    def _targets(self, images: Tensor, labels: Tensor, target_labels: Tensor | None,
                 gen: torch.Generator) -> Tensor | None:
        """The classes to reach: ``target_labels``, or a random other class per sample."""
        if not self.targeted:
            return None
        if target_labels is not None:
            return target_labels
        with torch.no_grad():
            num_classes = self.model(images[:1]).shape[1]
        return self.random_targets(labels, num_classes, gen)

    # -- one gradient -----------------------------------------------------------------------
    def _terms(self, x_t: Tensor, images: Tensor, labels: Tensor, targets: Tensor | None,
               grams: list[Tensor], origin: list[Tensor], realism: bool,
               transform: Transform | None = None) -> tuple[Tensor, Tensor, Terms]:
        """One forward pass: logits (``N x K``), the per-sample L_adv of eq. 7 and the realism
        terms ``[(name, L_k)]`` of eqs. 4-6 (each ``N``, unweighted; none when ``realism`` is
        False). The hooks give the style / origin features of this pass. ``transform`` (the
        step's plan, see :meth:`_plan`) is applied to the model's input."""
        style_layers = self.style_layers if realism else []
        origin_layers = self.origin_layers if realism else []
        reduction: Literal["mean", "sum"] = "sum" if self.balance == "literal" else "mean"
        with FeatureTap(self.model, style_layers + origin_layers) as tap:
            logits = self.model(x_t if transform is None else transform(x_t))
            terms: Terms = []
            if style_layers:
                terms.append(("style", style_loss(grams, tap.outputs(style_layers))))
            if origin_layers:
                terms.append(("origin", origin_loss(_float32(origin),
                                                    _float32(tap.outputs(origin_layers)),
                                                    reduction=reduction)))
        if realism and self.weights["detail"] > 0:
            base = x_t - images if self.detail_on == "delta" else x_t
            terms.append(("detail", detail_loss(base)))
        return logits, self._adv_loss(logits, labels, targets), terms

    def _grad(self, loss: Tensor, x_t: Tensor, retain: bool, through_model: bool = True,
              share: float = 1.0) -> Tensor:
        """``d loss / d x_t``; counts the backward passes through the model (``share``: the
        fraction of the batch this pass covers)."""
        self.backward_passes += share if through_model else 0.0
        return torch.autograd.grad(loss, x_t, retain_graph=retain)[0]

    def _combine(self, x_t: Tensor, l_adv: Tensor, terms: Terms,
                 sample_weights: SampleWeights | None, factors: dict[str, Tensor] | None
                 ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """The descent direction of eq. 2 from the terms of one forward pass, by ``balance``.

        ``sample_weights``: per-sample ``(adversarial, realism)`` weights (``N`` each) from
        :meth:`_sample_weights`; None weighs every sample alike, as eq. 2 does. ``factors``: the
        calibrated per-sample term scales (None until measured). Returns the direction
        ``N x C x H x W`` and the factors.
        """
        adv_w, real_w = (None, None) if sample_weights is None else sample_weights
        if self.balance == "literal":
            assert self.tau is not None
            total = combine_eq2_literal(l_adv, terms, self.tau, self.weights,
                                        adv_w=adv_w, real_w=real_w)
            return self._grad(total, x_t, False), factors
        assert self.realism_scale is not None
        if factors is not None:  # calibrated, after the calibration step: one backward pass
            total = combine_calibrated(l_adv, terms, self.realism_scale, self.weights, factors,
                                       adv_w=adv_w, real_w=real_w)
            return self._grad(total, x_t, False), factors
        # per-term gradients: grad-norm, and the calibration step of "calibrated"
        g_adv = self._grad(l_adv.sum(), x_t, retain=bool(terms))
        grads = [(name, self._grad(t.sum(), x_t, retain=i < len(terms) - 1,
                                   through_model=name != "detail"))
                 for i, (name, t) in enumerate(terms)]
        g, measured = combine_grad_norm(g_adv, grads, self.realism_scale, self.weights,
                                        adv_w=adv_w, real_w=real_w)
        return g, (measured if self.balance == "calibrated" and terms else factors)

    def _fools(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        """``refine``'s stop test, ``N`` bool: the sample fools the model (logit margin < 0;
        multilabel: :func:`~mladv.attacks.multilabel.fooled` at the thresholds)."""
        if self.multilabel:
            return fooled(logits, labels, self.thresholds, targets if self.targeted else None)
        return logit_margin(logits, labels, targets if self.targeted else None) < 0

    # -- the loop (eq. 9) -------------------------------------------------------------------
    def forward(self, images: Tensor, labels: Tensor, style_images: Tensor | None = None,
                target_labels: Tensor | None = None) -> Tensor:
        self.backward_passes = 0.0
        gen = self.generator()
        style_ref = self._style_reference(images, labels, style_images, gen)
        grams, origin = self._references(images, style_ref)
        targets = self.last_targets = self._targets(images, labels, target_labels, gen)
        mask = None if self.mask is None else self.mask.to(images)
        x_0 = self._start(images, labels, targets, grams, origin)
        x_adv = self._loop(images, labels, targets, grams, origin, x_0, gen, mask)
        return self._refine(images, labels, targets, x_adv, mask) if self.refine else x_adv

    def _loop(self, images: Tensor, labels: Tensor, targets: Tensor | None, grams: list[Tensor],
              origin: list[Tensor], x_t: Tensor, gen: torch.Generator, mask: Tensor | None
              ) -> Tensor:
        """The T iterations of eq. 9 from ``x_t``; returns the last iterate. Each step: the
        plan (:meth:`_plan`), one forward pass (eqs. 4-7), eq. 2's direction combined by
        ``balance`` (:meth:`_combine`) and eq. 9's update (:meth:`_update`)."""
        kernel = self.kernel.to(images)
        amplified = x_t - images
        factors: dict[str, Tensor] | None = None
        for t in range(self.steps):
            plan = self._plan(t, gen, images)
            x_in = x_t.detach().requires_grad_(True)
            logits, l_adv, terms = self._terms(x_in, images, labels, targets, grams, origin,
                                               plan.realism, plan.transform)
            weights = self._sample_weights(x_t, logits, labels, targets, plan)
            g, factors = self._combine(x_in, l_adv, terms, weights, factors)
            x_t, amplified = self._update(x_t, images, self._direction(g), amplified, kernel,
                                          mask, plan.alpha, plan.gamma)
        return x_t

    # -- the hooks (the variants override them; MLAdv's are the paper's) ---------------------
    def _adv_loss(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        """Eq. 7 per sample (``N x K`` logits -> ``N``)."""
        return self._task_adv_loss(logits, labels, targets if self.targeted else None)

    def _task_adv_loss(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        """Eq. 7 for the task: ``log p_y`` (``- log p_t + log p_y`` targeted) multiclass;
        multilabel ``-L_i`` untargeted and ``L_i`` on the targets (``L_i``:
        :func:`~mladv.attacks.multilabel.per_image_bce`). ``N``."""
        if not self.multilabel:
            return adversarial_loss(logits, labels, targets)
        return per_image_bce(logits, targets) if targets is not None else \
            -per_image_bce(logits, labels)

    def _start(self, images: Tensor, labels: Tensor, targets: Tensor | None,
               grams: list[Tensor], origin: list[Tensor]) -> Tensor:
        """The first iterate ``x_0``: the clean images (``N x C x H x W``)."""
        return images

    def _realism_at(self, t: int) -> bool:
        """Whether step ``t`` computes the realism terms: always, except that ``"calibrated"``
        measures its factors at step 2 (the origin term has no gradient at x itself)."""
        return self.balance != "calibrated" or t > 0

    def _plan(self, t: int, gen: torch.Generator, images: Tensor) -> StepPlan:
        """Step ``t``: realism per :meth:`_realism_at`, ``alpha = beta eps / T``, ``gamma``."""
        return StepPlan(self._realism_at(t), self.alpha, self.gamma)

    def _sample_weights(self, x_t: Tensor, logits: Tensor, labels: Tensor,
                        targets: Tensor | None, plan: StepPlan) -> SampleWeights | None:
        """Per-sample ``(adversarial, realism)`` weights: None, eq. 2 weighs samples alike."""
        return None

    def _direction(self, g: Tensor) -> Tensor:
        """Eq. 9 steps along the sign of eq. 2's gradient ``g`` itself (``N x C x H x W``)."""
        return g

    def _refine(self, images: Tensor, labels: Tensor, targets: Tensor | None, x_adv: Tensor,
                mask: Tensor | None) -> Tensor:
        """For the samples that do not fool the model yet: up to ``refine`` PGD steps
        (``x <- clip(x - eps/4 * sign(grad L_adv))``, no projection, no realism terms), each
        sample stopping as soon as it fools the model. Costs nothing when every sample fools it."""
        x_adv = x_adv.clone()
        mask_n = None if mask is None else mask.expand_as(images)
        todo = torch.arange(images.shape[0], device=images.device)
        for _ in range(self.refine):
            with torch.no_grad():
                tgt = None if targets is None else targets[todo]
                todo = todo[~self._fools(self.model(x_adv[todo]), labels[todo], tgt)]
            if todo.numel() == 0:
                break
            x_in = x_adv[todo].requires_grad_(True)
            tgt = targets[todo] if self.targeted and targets is not None else None
            loss = self._task_adv_loss(self.model(x_in), labels[todo], tgt).sum()
            share = todo.numel() / images.shape[0]
            step = self.eps / 4 * self._grad(loss, x_in, False, share=share).sign()
            delta = (x_in.detach() - step - images[todo]).clamp(-self.eps, self.eps)
            if mask_n is not None:
                delta = delta * mask_n[todo]
            x_adv[todo] = (images[todo] + delta).clamp(0.0, 1.0)
        return x_adv

    def _update(self, x_t: Tensor, images: Tensor, g: Tensor, amplified: Tensor, kernel: Tensor,
                mask: Tensor | None, alpha: float, gamma: float) -> tuple[Tensor, Tensor]:
        """Eq. 9: one signed step ``alpha`` down ``g`` plus the projection ``gamma``; returns the
        next iterate and the amplified perturbation A (both ``N x C x H x W``)."""
        step = alpha * g.sign()
        amplified = amplified - step  # we descend L_hybrid
        proj = (heuristic_projection(amplified, self.eps, gamma, kernel)
                if self.projection else torch.zeros_like(amplified))
        amplified = amplified + proj
        delta = (x_t - step + proj - images).clamp(-self.eps, self.eps)
        if mask is not None:
            delta = delta * mask
            amplified = amplified * mask
        return (images + delta).clamp(0.0, 1.0).detach(), amplified
