"""Class-activation maps (Grad-CAM, pytorch-grad-cam) and where a perturbation gathers."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .utils import model_device

POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)


def default_cam_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM reads: the last spatial stage before global pooling.

    ``layer4`` of a ResNet, ``features`` of VGG / DenseNet / MobileNet / EfficientNet /
    SqueezeNet, ``conv5`` of ShuffleNet, the block before the global pooling of a
    ``nn.Sequential`` (the project's small CNNs), else the last ``nn.Conv2d``.
    """
    inner = getattr(model, "net", model)
    net: nn.Module = inner if isinstance(inner, nn.Module) else model
    for attr in ("layer4", "features", "conv5"):
        found = getattr(net, attr, None)
        if isinstance(found, nn.Module):
            return found
    if isinstance(net, nn.Sequential):
        children = list(net)
        for i, child in enumerate(children):
            if isinstance(child, POOLING) and i > 0:
                return children[i - 1]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the model has no Conv2d layer for Grad-CAM; pass layer=<module name>")
    return convs[-1]


def resolve_cam_layer(model: nn.Module, layer: str | None) -> nn.Module:
    """``layer`` by module name (e.g. ``"net.layer4"``), or :func:`default_cam_layer`."""
    if layer is None:
        return default_cam_layer(model)
    modules: dict[str, nn.Module] = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"CAM layer {layer!r} not found in the model; e.g. "
                         f"{[n for n in modules if n.count('.') <= 1][1:6]}")
    return modules[layer]


def grad_cam(model: nn.Module, images: Tensor, *, layer: str | None = None,
             batch_size: int = 32) -> Tensor:
    """Grad-CAM of ``images`` for the class the model predicts (``targets=None``).

    pytorch-grad-cam is used as a context manager so its hooks are released; it calls
    ``model.eval()`` and never restores the mode, so the previous mode is restored here.
    Each map is scaled to [0, 1] per image by the library.

    Shape: images ``N x C x H x W`` in [0, 1] -> ``N x H x W`` float32 on the CPU.
    """
    from pytorch_grad_cam import GradCAM

    target = resolve_cam_layer(model, layer)
    was_training = model.training
    device = model_device(model)
    out = []
    try:
        with torch.enable_grad(), GradCAM(model=model, target_layers=[target]) as cam:
            for start in range(0, images.shape[0], batch_size):
                batch = images[start:start + batch_size].to(device)
                try:
                    maps = cam(input_tensor=batch, targets=None)
                except IndexError as exc:
                    # the library's __exit__ swallows IndexError; surface it instead
                    raise RuntimeError(f"Grad-CAM failed: {exc}") from exc
                out.append(torch.from_numpy(np.asarray(maps, dtype=np.float32)))
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    if not out:
        return torch.empty(0, *images.shape[-2:])
    return torch.cat(out)


def top_region(cam: Tensor, top: float = 0.2) -> Tensor:
    """The ``top`` share of pixels with the highest CAM value, per image (exactly
    ``round(top * H * W)`` pixels; ties broken by position, deterministically).

    Shape: ``N x H x W`` -> bool ``N x H x W``.
    """
    if not 0.0 < top <= 1.0:
        raise ValueError(f"top must be in (0, 1], got {top}")
    flat = torch.as_tensor(cam).float().flatten(1)
    k = max(1, round(top * flat.shape[1]))
    order = torch.argsort(flat, dim=1, descending=True, stable=True)[:, :k]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask.view(flat.shape[0], *cam.shape[1:])


def aggregation(delta: Tensor, cam: Tensor, top: float = 0.2) -> Tensor:
    """Share of the perturbation inside the CAM's top region, per image:

        ``a_i = sum_{p in top(cam_i)} |delta_i[p]| / sum_p |delta_i[p]|``   (|delta| summed over C)

    Uniform noise gives about ``top`` (0.2); noise only inside the region gives 1.
    NaN for an image whose delta is 0 everywhere.

    Shape: delta ``N x C x H x W``, cam ``N x H x W`` -> ``N``.
    """
    if delta.dim() != 4 or cam.dim() != 3 or delta.shape[0] != cam.shape[0] \
            or delta.shape[-2:] != cam.shape[-2:]:
        raise ValueError(f"delta must be N x C x H x W and cam N x H x W of the same N, H, W; "
                         f"got {tuple(delta.shape)} and {tuple(cam.shape)}")
    energy = delta.detach().abs().sum(1).cpu().double()
    inside = (energy * top_region(cam, top)).flatten(1).sum(1)
    total = energy.flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30),
                       torch.full_like(total, float("nan"))).float()
