"""Classifiers that take [0, 1] images of any channel count, and their checkpoints.

The wrapper repeats a 1-channel input to the 3 channels torchvision architectures expect and
normalises inside ``forward``, so attacks always see [0, 1] images.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from .utils import atomic_torch_save

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _small_cnn(num_classes: int) -> nn.Module:
    """A 4-block CNN (about 0.3 M parameters) for the demo and the tests: trains in seconds."""
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True), nn.MaxPool2d(2))
    return nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


def _tiny_cnn(num_classes: int) -> nn.Module:
    """Two conv blocks (about 6 k parameters): unit tests only."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, num_classes))


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    return build


ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "tiny_cnn": _tiny_cnn,
    "small_cnn": _small_cnn,
    **{name: _torchvision(name) for name in (
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11_bn", "vgg16",
        "vgg16_bn", "densenet121", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
        "shufflenet_v2_x1_0", "squeezenet1_1")},
}


def check_arch(arch: str) -> str:
    """``arch`` if it names a known architecture, else one ``ValueError`` listing them."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return arch


class ImageClassifier(nn.Module):
    """``logits = net(normalise(repeat_to_3(x)))`` for ``x`` in [0, 1].

    Shape: ``N x C x H x W`` with C in {1, 3} -> ``N x num_classes``.
    """

    def __init__(self, arch: str, num_classes: int) -> None:
        super().__init__()
        check_arch(arch)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.arch = arch
        self.num_classes = num_classes
        self.net = ARCHITECTURES[arch](num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected N x 1 x H x W or N x 3 x H x W input, got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net((x - self.mean) / self.std)


def build_model(arch: str, num_classes: int) -> ImageClassifier:
    """A freshly initialised classifier (no weights are ever downloaded)."""
    return ImageClassifier(arch, num_classes)


def save_checkpoint(path: str | os.PathLike[str], model: ImageClassifier, *, classes: list[str],
                    image_size: int, epoch: int | None = None,
                    metrics: dict[str, Any] | None = None, **extra: Any) -> None:
    """Write a checkpoint dict (``state_dict``, ``arch``, ``classes``, ``image_size``, ``epoch``,
    ``metrics``) atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": state, "arch": model.arch, "classes": list(classes),
                       "image_size": int(image_size), "epoch": epoch, "metrics": metrics or {},
                       **extra}, path)


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu",
                    arch: str | None = None, num_classes: int | None = None
                    ) -> tuple[ImageClassifier, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises ``ValueError`` naming the file when it is missing, unreadable, or does not match the
    requested ``arch`` / ``num_classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ValueError(f"checkpoint {path} cannot be read: {exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "arch", "classes"} <= ckpt.keys():
        raise ValueError(f"checkpoint {path} is not an mladv checkpoint (needs state_dict, arch, classes)")
    if arch is not None and ckpt["arch"] != arch:
        raise ValueError(f"checkpoint {path} holds a {ckpt['arch']}, expected {arch}")
    n = len(ckpt["classes"])
    if num_classes is not None and n != num_classes:
        raise ValueError(f"checkpoint {path} has {n} classes {ckpt['classes']}, expected {num_classes}")
    model = build_model(ckpt["arch"], n)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit a {ckpt['arch']} with {n} classes: "
                         f"{str(exc).splitlines()[-1].strip()}") from None
    return model.to(map_location), ckpt
