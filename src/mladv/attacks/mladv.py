"""MLAdv: multi-loss hybrid adversarial function + heuristic projection (SPEC eqs. 1-10)."""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from ..features import FeatureTap, conv_layers, default_origin_layer
from ..losses import adversarial_loss, detail_loss, gram_matrix, origin_loss, style_loss
from .base import Attack, check_images
from .projection import heuristic_projection, projection_kernel

Balance = Literal["grad-norm", "literal"]
StylePolicy = Literal["same-class", "self"]


def _per_sample_unit(g: Tensor) -> Tensor:
    """``g / mean|g|`` per sample, so that terms of very different scales weigh alike."""
    return g / g.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (g.dim() - 1))


def same_class_partners(labels: Tensor, gen: torch.Generator) -> Tensor:
    """For each sample, the index of another sample of the same class in the batch (itself when
    it is alone in its class), drawn with ``gen``. Shape: ``N`` -> ``N``."""
    idx = torch.arange(labels.shape[0])
    labels_cpu = labels.cpu()
    partner = idx.clone()
    for c in labels_cpu.unique():
        members = idx[labels_cpu == c]
        if len(members) < 2:
            continue
        # a random non-zero shift inside the class never maps a sample to itself
        shift = torch.randint(1, len(members), (len(members),), generator=gen)
        partner[members] = members[(torch.arange(len(members)) + shift) % len(members)]
    return partner.to(labels.device)


class MLAdv(Attack):
    r"""MLAdv (Wang, Cheng & Chen): realistic adversarial samples for data augmentation.

    Minimises the hybrid loss of eq. 2,
    ``L_hybrid = w_s L_s + w_o L_o + w_d L_d + tau L_adv`` (eqs. 4-7), with the patch-wise update
    and heuristic projection of eqs. 8-10 (step ``alpha = beta * eps / steps``, projection factor
    ``gamma``, kernel ``W_o`` of size ``kernel_size``), under the L-infinity budget ``eps``.

    ``balance="literal"`` combines the terms exactly as eq. 2 writes them. Measured on real chest
    X-rays it does not attack (the realism gradients decide the sign of nearly every pixel; see
    SPEC "Measured"), so the default ``balance="grad-norm"`` normalises each term's gradient per
    sample and combines them as ``g = g_adv/|g_adv| + tau * sum_k w_k g_k/|g_k|``: ``tau`` is then
    the weight of the realism terms relative to the adversarial one.

    With every realism weight at 0 the loop is PI-FGSM (torchattacks ``PIFGSM``); with
    ``projection=False`` it is the paper's "multi-loss" ablation arm (gamma = 0, plain clipping).
    Style and origin features are read with forward hooks in the same forward pass that gives
    the logits.

    Args:
        model: classifier taking ``N x C x H x W`` images in [0, 1], returning logits.
        eps: L-infinity budget in [0, 1] units.
        steps: number of iterations T.
        beta: amplification factor; step ``alpha = beta * eps / steps``.
        gamma: projection factor (default ``alpha``).
        kernel_size: side of the projection kernel ``W_o`` (odd, >= 3).
        tau: see ``balance``.
        style_weight, origin_weight, detail_weight: ``w_s, w_o, w_d``; 0 switches a term off.
        style_layers: ``"all-conv"`` or a list of module names (the style set S).
        origin_layer: module name of the origin layer O (default: ``layer3`` of a ResNet, else a
            conv layer three quarters of the way down).
        style: the style reference x_s: ``"same-class"`` (another image of the same class in the
            batch, drawn with ``seed``), ``"self"``, or a tensor ``1 x C x H x W`` / ``N x C x H x W``.
        mask: optional region mask broadcastable to ``N x C x H x W``; delta is zero where it is 0.
        projection: apply the heuristic projection (eq. 9); False gives plain clipping.
        balance: ``"grad-norm"`` (default) or ``"literal"``.
        targeted: reach ``target_labels`` instead of leaving ``labels``.
        seed: seeds the style-partner and random-target draws.

    Shape:
        images ``N x C x H x W`` in [0, 1] (C = 1 for chest X-rays; the perturbation keeps C),
        labels ``N`` -> ``N x C x H x W``.

    Examples::
        >>> atk = MLAdv(model, eps=8/255, steps=10)
        >>> x_adv = atk(images, labels)
        >>> x_adv = MLAdv(model, targeted=True)(images, labels, target_labels=targets)
    """

    def __init__(self, model: nn.Module, *, eps: float = 8 / 255, steps: int = 10,
                 beta: float = 10.0, gamma: float | None = None, kernel_size: int = 3,
                 tau: float = 0.5, style_weight: float = 1.0, origin_weight: float = 1.0,
                 detail_weight: float = 1.0, style_layers: str | Sequence[str] = "all-conv",
                 origin_layer: str | None = None, style: StylePolicy | Tensor = "same-class",
                 mask: Tensor | None = None, projection: bool = True,
                 balance: Balance = "grad-norm", targeted: bool = False,
                 seed: int | None = None) -> None:
        super().__init__(model, eps=eps, targeted=targeted, seed=seed)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if min(style_weight, origin_weight, detail_weight, tau) < 0:
            raise ValueError("tau and the loss weights must be >= 0")
        if balance not in ("grad-norm", "literal"):
            raise ValueError(f"balance must be 'grad-norm' or 'literal', got {balance!r}")
        if isinstance(style, str) and style not in ("same-class", "self"):
            raise ValueError(f"style must be 'same-class', 'self' or a tensor, got {style!r}")
        self.steps = steps
        self.beta = beta
        self.alpha = beta * self.eps / steps
        self.gamma = self.alpha if gamma is None else float(gamma)
        self.kernel = projection_kernel(kernel_size)
        self.tau = tau
        self.weights = {"style": style_weight, "origin": origin_weight, "detail": detail_weight}
        self.style_layers = (conv_layers(model) if style_layers == "all-conv"
                             else list(style_layers)) if style_weight > 0 else []
        self.origin_layers = ([origin_layer or default_origin_layer(model)]
                              if origin_weight > 0 else [])
        self.style = style
        self.mask = mask
        self.projection = projection
        self.balance = balance

    # -- references -------------------------------------------------------------------------
    def _style_reference(self, images: Tensor, labels: Tensor, style_images: Tensor | None,
                         gen: torch.Generator) -> Tensor:
        ref = style_images if style_images is not None else self.style
        if isinstance(ref, Tensor):
            check_images(ref)
            ref = ref.detach().to(images)
            if ref.shape[0] not in (1, images.shape[0]) or ref.shape[1:] != images.shape[1:]:
                raise ValueError(f"style images must have shape 1 x {tuple(images.shape[1:])} or "
                                 f"{tuple(images.shape)}, got {tuple(ref.shape)}")
            return ref
        if ref == "self":
            return images
        return images[same_class_partners(labels, gen)]

    @torch.no_grad()
    def _references(self, images: Tensor, style_ref: Tensor) -> tuple[list[Tensor], list[Tensor], int]:
        """Style Grams of x_s, origin features of x, and the number of classes."""
        with FeatureTap(self.model, self.style_layers + self.origin_layers) as tap:
            logits = self.model(images)
            origin = [f.detach() for f in tap.outputs(self.origin_layers)]
            if style_ref is images:
                style_feats = tap.outputs(self.style_layers)
            else:
                tap.clear()
                self.model(style_ref)
                style_feats = tap.outputs(self.style_layers)
            grams = [gram_matrix(f).detach() for f in style_feats]
        return grams, origin, logits.shape[1]

    # -- one gradient -----------------------------------------------------------------------
    def _gradient(self, x_t: Tensor, labels: Tensor, targets: Tensor | None,
                  grams: list[Tensor], origin: list[Tensor]) -> Tensor:
        """``∇_{x_t} L_hybrid`` (literal) or the per-term-normalised mix (grad-norm).
        One forward pass; the hooks give the style and origin features of the same pass."""
        x_t = x_t.detach().requires_grad_(True)
        with FeatureTap(self.model, self.style_layers + self.origin_layers) as tap:
            logits = self.model(x_t)
            terms: list[tuple[float, Tensor]] = []
            if self.style_layers:
                terms.append((self.weights["style"],
                              style_loss(grams, tap.outputs(self.style_layers))))
            if self.origin_layers:
                terms.append((self.weights["origin"],
                              origin_loss(origin, tap.outputs(self.origin_layers))))
        if self.weights["detail"] > 0:
            terms.append((self.weights["detail"], detail_loss(x_t)))
        l_adv = adversarial_loss(logits, labels, targets if self.targeted else None)

        if self.balance == "literal":
            total = self.tau * l_adv.sum() + sum(w * t.sum() for w, t in terms)
            return torch.autograd.grad(total, x_t)[0]
        losses = [l_adv.sum()] + [t.sum() for _, t in terms]
        grads = torch.autograd.grad(losses[0], x_t, retain_graph=len(losses) > 1)[0]
        g = _per_sample_unit(grads)
        for i, (w, _) in enumerate(terms, start=1):
            gi = torch.autograd.grad(losses[i], x_t, retain_graph=i < len(losses) - 1)[0]
            g = g + self.tau * w * _per_sample_unit(gi)
        return g

    # -- the loop (eq. 9) -------------------------------------------------------------------
    def forward(self, images: Tensor, labels: Tensor, style_images: Tensor | None = None,
                target_labels: Tensor | None = None) -> Tensor:
        gen = self.generator()
        style_ref = self._style_reference(images, labels, style_images, gen)
        grams, origin, num_classes = self._references(images, style_ref)
        targets = None
        if self.targeted:
            targets = (target_labels if target_labels is not None
                       else self.random_targets(labels, num_classes, gen))
        mask = None if self.mask is None else self.mask.to(images)
        kernel = self.kernel.to(images)

        amplified = torch.zeros_like(images)
        x_t = images.clone()
        for _ in range(self.steps):
            step = self.alpha * self._gradient(x_t, labels, targets, grams, origin).sign()
            amplified = amplified - step  # we descend L_hybrid
            proj = (heuristic_projection(amplified, self.eps, self.gamma, kernel)
                    if self.projection else torch.zeros_like(amplified))
            amplified = amplified + proj
            delta = (x_t - step + proj - images).clamp(-self.eps, self.eps)
            if mask is not None:
                delta = delta * mask
                amplified = amplified * mask
            x_t = (images + delta).clamp(0.0, 1.0)
        return x_t
