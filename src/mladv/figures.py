"""Figures: the one figure saver; clean / adversarial / amplified-noise grids."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from .utils import atomic_path


def save_figure(fig: Any, path: str | os.PathLike[str], *, tight: bool = True) -> None:
    """Write the matplotlib figure ``fig`` as a PNG at 110 dpi, atomically, and close it
    (``tight``: cropped to its content, ``bbox_inches="tight"``)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight" if tight else None)
    plt.close(fig)


def adversarial_grid(clean: Tensor, adversarial: dict[str, Tensor], labels: Tensor,
                     classes: list[str], path: str | os.PathLike[str], *,
                     amplify: float | None = None, per_class: int = 1) -> None:
    """One row per class (``per_class`` images each): the clean image, then for every attack its
    adversarial image and its noise ``delta`` mapped to grey (0 = mid-grey), amplified so that
    ``eps`` fills the range (``amplify`` defaults to ``0.5 / max|delta|``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [i for c in range(len(classes))
            for i in (labels == c).nonzero().flatten()[:per_class].tolist()]
    cols = 1 + 2 * len(adversarial)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.8 * cols, 1.9 * len(rows)), squeeze=False)
    for r, i in enumerate(rows):
        panels = [(clean[i], f"clean: {classes[int(labels[i])]}")]
        for name, adv in adversarial.items():
            delta = adv[i] - clean[i]
            gain = amplify or 0.5 / max(delta.abs().max().item(), 1e-8)
            panels += [(adv[i], name), ((0.5 + gain * delta).clamp(0, 1), f"{name} noise")]
        for ax, (img, title) in zip(axes[r], panels):
            ax.imshow(img[0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def to_uint8(img: Tensor) -> Tensor:
    """``C x H x W`` in [0, 1] -> ``H x W`` (C = 1) or ``H x W x 3`` uint8, for PNG previews."""
    out = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return out[0] if out.shape[0] == 1 else out.permute(1, 2, 0)
