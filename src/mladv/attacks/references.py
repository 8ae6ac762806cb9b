"""MLAdv's fixed references, computed once per call: the style reference x_s of eq. 4 (a policy
or given images) and the style Grams / origin features the loss compares against (eqs. 4, 5)."""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..features import FeatureTap
from ..losses import gram_matrix
from .base import check_images
from .multilabel import nearest_label_partners

StylePolicy = Literal["same-class", "self"]


def same_class_partners(labels: Tensor, gen: torch.Generator) -> Tensor:
    """For each sample, the index of another sample of the same class in the batch (itself when
    it is alone in its class), drawn with ``gen``. Shape: ``N`` -> ``N``."""
    idx = torch.arange(labels.shape[0])
    labels_cpu = labels.cpu()
    partner = idx.clone()
    for c in torch.unique(labels_cpu):
        members = idx[labels_cpu == c]
        if len(members) < 2:
            continue
        # a random non-zero shift inside the class never maps a sample to itself
        shift = torch.randint(1, len(members), (len(members),), generator=gen)
        partner[members] = members[(torch.arange(len(members)) + shift) % len(members)]
    return partner.to(labels.device)


def style_reference(images: Tensor, labels: Tensor, style: StylePolicy | Tensor,
                    gen: torch.Generator, *, multilabel: bool = False) -> Tensor:
    """x_s of eq. 4: ``style`` images (``1 x C x H x W`` or ``N x C x H x W``, checked), the
    images themselves (``"self"``) or another image of the same class in the batch
    (``"same-class"``, drawn with ``gen``; ``multilabel``: labels ``N x K``, the image with the
    nearest label set, :func:`~mladv.attacks.multilabel.nearest_label_partners`).
    Shape: -> broadcastable to ``images``."""
    if isinstance(style, Tensor):
        check_images(style)
        ref = style.detach().to(images)
        if ref.shape[0] not in (1, images.shape[0]) or ref.shape[1:] != images.shape[1:]:
            raise ValueError(f"style images must have shape 1 x {tuple(images.shape[1:])} or "
                             f"{tuple(images.shape)}, got {tuple(ref.shape)}")
        return ref
    if style == "self":
        return images
    if multilabel:
        return images[nearest_label_partners(labels)]
    return images[same_class_partners(labels, gen)]


@torch.no_grad()
def reference_features(model: nn.Module, style_layers: list[str], origin_layers: list[str],
                       images: Tensor, style_ref: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """The Grams ``G(D_l(x_s))`` of eq. 4 and the origin features ``D_l(x)`` of eq. 5 (one
    forward pass of x, a second of x_s unless it is x; none when neither layer list is used)."""
    if not style_layers and not origin_layers:
        return [], []
    with FeatureTap(model, style_layers + origin_layers) as tap:
        model(images)
        origin = [f.detach() for f in tap.outputs(origin_layers)]
        if style_ref is images:
            style_feats = tap.outputs(style_layers)
        else:
            tap.clear()
            model(style_ref)
            style_feats = tap.outputs(style_layers)
        grams = [gram_matrix(f).detach() for f in style_feats]
    return grams, origin
