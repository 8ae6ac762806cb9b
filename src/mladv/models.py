"""Classifiers that take [0, 1] images of any channel count, pretrained backbones, checkpoints.

The wrapper repeats a 1-channel input to the 3 channels torchvision architectures expect and
normalises inside ``forward``, so attacks always see [0, 1] images.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from .defaults import IMAGE_SIZE_MAX as IMAGE_SIZE_MAX
from .defaults import IMAGE_SIZE_MIN as IMAGE_SIZE_MIN
from .fingerprint import image_hashes
from .tasks import Task, check_task
from .utils import (
    Precision,
    amp_context,
    atomic_torch_save,
    download_timeout_s,
    model_device,
    socket_timeout,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The one image-size range of every command and config (pixels, square images): IMAGE_SIZE_MIN /
# IMAGE_SIZE_MAX from mladv.defaults (torch-free, for the --help bounds).

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
        net: nn.Module = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        return net
    return build


ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "tiny_cnn": _tiny_cnn,
    "small_cnn": _small_cnn,
    **{name: _torchvision(name) for name in (
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11_bn", "vgg16",
        "vgg16_bn", "densenet121", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
        "shufflenet_v2_x1_0", "squeezenet1_1")},
}
# Architectures whose downsampling needs more than IMAGE_SIZE_MIN pixels (measured).
_MIN_SIZE = {"vgg11_bn": 32, "vgg16": 32, "vgg16_bn": 32, "densenet121": 32, "squeezenet1_1": 24}


def check_arch(arch: str) -> str:
    """``arch`` if it names a known architecture, else one ``ValueError`` listing them."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return arch


def check_image_size(size: int, arch: str | None = None, *, option: str = "image_size") -> int:
    """``size`` if it lies in ``IMAGE_SIZE_MIN..IMAGE_SIZE_MAX`` and ``arch`` can take it, else
    one ``ValueError`` naming ``option``."""
    low = max(IMAGE_SIZE_MIN, _MIN_SIZE.get(arch or "", 0))
    if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= IMAGE_SIZE_MAX:
        what = f" for {arch}" if low > IMAGE_SIZE_MIN else ""
        raise ValueError(f"{option} must be an integer in {low}..{IMAGE_SIZE_MAX}{what}, "
                         f"got {size!r}")
    return size


def head_name(net: nn.Module) -> str:
    """The classifier head: the last ``Linear`` (or ``Conv2d``, SqueezeNet's head) of ``net``."""
    names = [n for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return str(names[-1])


class ImageClassifier(nn.Module):
    """``logits = net(normalise(repeat_to_3(x)))`` for ``x`` in [0, 1].

    Shape: ``N x C x H x W`` with C in {1, 3} -> ``N x num_classes``.

    Attributes ``weights`` (where the pretrained backbone came from, or ``None``) and
    ``frozen`` (backbone frozen: its parameters take no gradient and its BatchNorm layers stay
    in eval mode, so ``train()`` leaves every backbone tensor unchanged).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, arch: str, num_classes: int) -> None:
        super().__init__()
        check_arch(arch)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.arch = arch
        self.num_classes = num_classes
        self.task: Task = "multiclass"  # set from the checkpoint by load_checkpoint
        self.classes: list[str] | None = None  # class / finding names, from the checkpoint
        self.weights: str | None = None
        self.frozen = False
        self.net = ARCHITECTURES[arch](num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected N x 1 x H x W or N x 3 x H x W input, got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        logits: Tensor = self.net((x - self.mean) / self.std)
        return logits

    def freeze_backbone(self) -> None:
        """Train the head only: every parameter outside :func:`head_name` stops taking gradients
        and the backbone's BatchNorm layers keep their running statistics."""
        head = head_name(self.net)
        for name, p in self.net.named_parameters():
            p.requires_grad_(name.startswith(head + "."))
        self.frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if self.frozen:
            for m in self.net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def check_freeze(weights: object, freeze_backbone: bool, *, freeze_name: str = "freeze_backbone",
                 weights_name: str = "weights") -> None:
    """The one rule every entry point shares: freezing the backbone needs pretrained weights.
    ``freeze_name`` / ``weights_name`` are how the caller spells them (a flag, a config key)."""
    if freeze_backbone and weights is None:
        raise ValueError(f"{freeze_name} needs {weights_name}: a frozen random backbone stays "
                         "random")


def build_model(arch: str, num_classes: int, *,
                weights: str | os.PathLike[str] | None = None,
                freeze_backbone: bool = False) -> ImageClassifier:
    """A classifier for ``num_classes`` classes, freshly initialised or on a pretrained backbone.

    ``weights`` is a torchvision weights name of ``arch`` (``"IMAGENET1K_V1"``, ``"DEFAULT"``;
    read from torch hub's cache, downloaded there on a machine with internet) or a local file
    holding a torchvision ``state_dict`` of ``arch`` (see :func:`pretrained_state_dict`). The
    classifier head is always new, sized for ``num_classes``.

    Grey input on an RGB stem: the 3-channel stem is kept. For a grey image ``x`` repeated to
    three channels and normalised per channel (ImageNet mean ``m_c``, std ``s_c``) the stem's
    kernels ``W_c`` compute ``sum_c W_c * (x - m_c) / s_c = (sum_c W_c / s_c) * x - const``: the
    RGB kernels summed (each over its channel's std) acting on the one grey channel, which is
    exactly the response the pretrained network gave a grey photograph. Folding the sum into a
    1-channel convolution would need one shared normalisation and would change the zero-padded
    borders, so the wrapper's repeat does the summing and the pretrained model sees the input it
    was trained on.

    ``freeze_backbone`` (needs ``weights``): see :meth:`ImageClassifier.freeze_backbone`.

    The paper's models: ``resnet50`` (Table 2's classifier and Table 1's source), ``resnet101``,
    ``resnet152`` and ``vgg16_bn`` (Table 1's targets). Use ``vgg16_bn`` for VGG16 trained from
    scratch: plain ``vgg16`` (no BatchNorm, 13 stacked convolutions) does not train from scratch
    reliably (its loss often stays at chance without a pretrained start or a tuned warm-up).
    """
    model = ImageClassifier(arch, num_classes)
    if weights is not None:
        load_backbone(model, pretrained_state_dict(arch, weights))
        model.weights = str(weights)
    check_freeze(weights, freeze_backbone, weights_name="pretrained weights")
    if freeze_backbone:
        model.freeze_backbone()
    return model


def load_backbone(model: ImageClassifier, state: Mapping[str, Tensor]) -> None:
    """Load every tensor of ``state`` except the classifier head into ``model.net``; every
    backbone tensor must arrive (one ``ValueError`` otherwise)."""
    head = head_name(model.net) + "."
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    try:
        result = model.net.load_state_dict(body, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"pretrained weights do not fit a {model.arch}: "
                         f"{str(exc).splitlines()[-1].strip()}") from None
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if missing or result.unexpected_keys:
        raise ValueError(f"pretrained weights do not fit a {model.arch}: missing {missing[:3]}, "
                         f"unexpected {result.unexpected_keys[:3]}")


def pretrained_state_dict(arch: str, weights: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors ``weights`` names for ``arch``: a local ``state_dict`` file (loaded with
    ``weights_only=True``; a ``{"state_dict": ...}`` wrapper and ``module.`` / ``net.`` key
    prefixes are accepted) or a torchvision weights name, read from torch hub's cache
    (``$TORCH_HOME/hub/checkpoints``) and downloaded there when missing. Offline, one
    ``ValueError`` says which file to put where."""
    check_arch(arch)
    path = Path(weights)
    if path.is_file():
        return _local_state_dict(path)
    if isinstance(weights, str) and os.sep not in weights and path.suffix not in (".pt", ".pth"):
        return _torchvision_state_dict(arch, weights)
    raise ValueError(f"weights {str(weights)!r}: no such file")


def check_pretrained(arch: str, weights: str | os.PathLike[str], *, key: str = "weights"
                     ) -> None:
    """Read ``weights`` (:func:`pretrained_state_dict`) and check that it fits ``arch`` now,
    before any data is loaded: one ``ValueError`` naming ``key`` (a flag or config key) and the
    file. The throwaway model draws no random number of the run."""
    state = pretrained_state_dict(arch, weights)
    rng = torch.random.get_rng_state()
    try:
        load_backbone(build_model(arch, 2), state)
    except ValueError as exc:
        raise ValueError(f"{key} {weights}: {exc}") from None
    finally:
        torch.random.set_rng_state(rng)


def _local_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same here
        raise ValueError(f"{path}: not a state-dict file ({exc.__class__.__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state-dict file (a dict of tensors)")
    for prefix in ("module.", "net."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _torchvision_state_dict(arch: str, name: str) -> dict[str, Tensor]:
    if arch not in dir(torchvision.models):
        raise ValueError(f"weights {name!r}: {arch} has no torchvision weights; "
                         "pass a state-dict file")
    enum = torchvision.models.get_model_weights(arch)
    key = name.rsplit(".", 1)[-1]  # accept "ResNet18_Weights.IMAGENET1K_V1"
    if key not in enum.__members__:
        raise ValueError(f"weights {name!r}: torchvision has {', '.join(enum.__members__)} for "
                         f"{arch} (or pass a state-dict file)")
    w = enum[key]
    filename = os.path.basename(urlparse(w.url).path)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    timeout = download_timeout_s()
    try:
        with socket_timeout(timeout):  # a proxy that accepts and never answers: give up
            state: dict[str, Tensor] = w.get_state_dict(progress=False)
    except OSError as exc:  # URLError, HTTPError, socket errors: offline, blocked or no answer
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:g} s, $MLADV_DOWNLOAD_TIMEOUT"
        raise ValueError(f"weights {name!r} for {arch}: cannot download {w.url} ({reason}); "
                         f"offline, put that file as {folder / filename} (torch hub's cache, "
                         "$TORCH_HOME/hub/checkpoints) or pass a state-dict file") from None
    return state


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, batch_size: int = 128, *,
                   precision: Precision = "fp32") -> Tensor:
    """Logits for ``N x C x H x W`` images, in eval mode (mode restored), as float32 on the CPU."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        with amp_context(device, precision):
            out = [model(images[i:i + batch_size].to(device, non_blocking=True)).float().cpu()
                   for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def save_checkpoint(path: str | os.PathLike[str], model: ImageClassifier, *, classes: list[str],
                    image_size: int, epoch: int | None = None,
                    metrics: dict[str, Any] | None = None, train_images: Tensor | None = None,
                    task: str = "multiclass", **extra: Any) -> None:
    """Write a checkpoint dict (``state_dict``, ``arch``, ``classes``, ``image_size``, ``epoch``,
    ``metrics``, ``weights``, ``freeze_backbone``, ``task``) atomically. ``task`` is
    ``"multiclass"`` (``classes`` are the softmax's classes) or ``"multilabel"`` (``classes`` are
    the finding names, one sigmoid each; :mod:`mladv.tasks`). ``train_images`` (``N x C x H x
    W``) are recorded as ``trained_on``, one fingerprint each
    (:func:`mladv.fingerprint.image_hashes`), so a later evaluation can leave out the images the
    model was trained on."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    record = {} if train_images is None else {"trained_on": image_hashes(train_images)}
    atomic_torch_save({"state_dict": state, "arch": model.arch, "classes": list(classes),
                       "image_size": int(image_size), "epoch": epoch, "metrics": metrics or {},
                       "weights": model.weights, "freeze_backbone": model.frozen,
                       "task": check_task(task), **record, **extra}, path)


def read_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """The checkpoint dict at ``path`` (``weights_only=True``), checked to be an mladv one.
    Every problem is one ``ValueError`` starting with the file name."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        why = ("it holds Python objects beyond tensors, which are not loaded for safety"
               if "Unsupported global" in str(exc) else "not a torch file")
        raise ValueError(f"{path}: not a mladv checkpoint ({why}; mladv checkpoints are "
                         "written by 'mladv train')") from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad magic number, ...
        raise ValueError(f"{path}: not a mladv checkpoint (unreadable: "
                         f"{exc.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "arch", "classes"} <= ckpt.keys():
        raise ValueError(f"{path}: not a mladv checkpoint (needs state_dict, arch, classes)")
    if ckpt["arch"] not in ARCHITECTURES:
        raise ValueError(f"{path}: unknown architecture {ckpt['arch']!r} in the checkpoint; "
                         f"this mladv knows {sorted(ARCHITECTURES)}")
    return ckpt


def checkpoint_task(ckpt: Mapping[str, Any], path: str | os.PathLike[str] = "checkpoint"
                    ) -> Task:
    """The task a checkpoint's model solves: its ``task`` field; checkpoints written before
    multilabel support have none and are ``"multiclass"``. One ``ValueError`` naming ``path``
    for an unknown value."""
    try:
        return check_task(str(ckpt.get("task", "multiclass")))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu",
                    arch: str | None = None, num_classes: int | None = None
                    ) -> tuple[ImageClassifier, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``; a pretrained
    backbone is inside the state dict, so nothing is downloaded). A checkpoint saved with a
    frozen backbone loads frozen (``model.frozen``).

    Raises ``ValueError`` naming the file when it is missing, unreadable, or does not match the
    requested ``arch`` / ``num_classes``.
    """
    ckpt = read_checkpoint(path, map_location=map_location)
    if arch is not None and ckpt["arch"] != arch:
        raise ValueError(f"checkpoint {path} holds a {ckpt['arch']}, expected {arch}")
    n = len(ckpt["classes"])
    if num_classes is not None and n != num_classes:
        raise ValueError(f"checkpoint {path} has {n} classes {ckpt['classes']}, "
                         f"expected {num_classes}")
    model = build_model(ckpt["arch"], n)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit a {ckpt['arch']} with {n} classes: "
                         f"{str(exc).splitlines()[-1].strip()}") from None
    model.weights = ckpt.get("weights")
    model.task = checkpoint_task(ckpt, path)
    model.classes = list(ckpt["classes"])  # finding names, e.g. for --option finding=Effusion
    if ckpt.get("freeze_backbone"):  # further training keeps the backbone as it was trained
        model.freeze_backbone()
    return model.to(map_location), ckpt
