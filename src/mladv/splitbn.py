"""Split BatchNorm (AdvProp, Xie et al., CVPR 2020): every BatchNorm layer gets a twin for
adversarial inputs, so their statistics never mix with the clean ones.

The plain model is left exactly as it was: :class:`SplitBN` keeps it as ``.model`` (its
``state_dict`` keys are the plain model's, so a checkpoint of ``split.model`` loads into
:func:`mladv.models.build_model` with no trace of the twins) and holds the twins beside it,
one copy of each BatchNorm layer, initialised from it. A forward pass with the twins swaps
their parameters and buffers in for the main ones (``torch.func.functional_call``): gradients
flow into the twins' parameters and, in train mode, only the twins' running statistics move.

Examples::
    >>> split = SplitBN(build_model("resnet18", 3))
    >>> logits = split(x)                          # main BN (clean inputs, evaluation)
    >>> logits = split(x_adv, adversarial=True)    # twin BN
    >>> logits = split(torch.cat([x, x_adv]), adv_mask=mask)  # one pass, rows routed by mask
    >>> atk = make_attack("pgd", split.adversarial_view())    # craft through the twins
    >>> save_checkpoint(p, split.model, ..., twin_bn=split.twin_state_dict())
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_names(model: nn.Module) -> list[str]:
    """Qualified names of the BatchNorm layers of ``model`` (1-d, 2-d, 3-d, SyncBatchNorm)."""
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


class SplitBN(nn.Module):
    """``model`` with a twin of every BatchNorm layer for adversarial inputs.

    Args:
        model: any module; its BatchNorm layers are copied (weights, buffers, momentum) into
            the twins. A model without BatchNorm gets no twins and behaves as itself.

    Shape: ``forward(x)``: ``N x ...`` -> the model's output; with ``adv_mask`` (``N`` bools)
    the rows where it is True go through the twins, the others through the main BN (two
    passes, one per group, so each group's batch statistics are its own), output in input order.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.bn_names = batchnorm_names(model)
        modules = dict(model.named_modules())
        self.twins = nn.ModuleList(copy.deepcopy(modules[n]) for n in self.bn_names)

    def twin_tensors(self) -> dict[str, Tensor]:
        """``{"<bn name>.<weight|bias|running_mean|...>": twin tensor}``: the names the main BN
        tensors have in ``model``, mapped to the twins' (for ``functional_call``)."""
        out: dict[str, Tensor] = {}
        for name, twin in zip(self.bn_names, self.twins, strict=True):
            for key, t in [*twin.named_parameters(), *twin.named_buffers()]:
                out[f"{name}.{key}"] = t
        return out

    def forward(self, x: Tensor, adversarial: bool = False,
                adv_mask: Tensor | None = None) -> Tensor:
        if adv_mask is None:
            return self._run(x, adversarial)
        if adv_mask.shape != x.shape[:1] or adv_mask.dtype != torch.bool:
            raise ValueError(f"adv_mask must be a bool tensor of shape ({x.shape[0]},), got "
                             f"{adv_mask.dtype} {tuple(adv_mask.shape)}")
        adv_idx, clean_idx = adv_mask.nonzero().squeeze(1), (~adv_mask).nonzero().squeeze(1)
        parts = [(idx, self._run(x[idx], adv)) for idx, adv in ((clean_idx, False),
                                                                  (adv_idx, True)) if len(idx)]
        out = parts[0][1].new_empty((x.shape[0], *parts[0][1].shape[1:]))
        for idx, logits in parts:
            out[idx] = logits
        return out

    def _run(self, x: Tensor, adversarial: bool) -> Tensor:
        if not adversarial or not self.bn_names:
            return self.model(x)  # type: ignore[no-any-return]
        return functional_call(self.model, self.twin_tensors(), (x,),  # type: ignore[no-any-return]
                               strict=False, tie_weights=False)

    def adversarial_view(self) -> AdversarialView:
        """A module whose forward is ``self(x, adversarial=True)``: the model an attack crafts
        against (its ``eval()`` / ``train()`` reach this wrapper)."""
        return AdversarialView(self)

    def twin_state_dict(self) -> dict[str, Tensor]:
        """The twins' parameters and buffers, keyed like the main BN's in ``model`` (CPU
        copies), for a separate checkpoint entry."""
        return {k: v.detach().cpu().clone() for k, v in self.twin_tensors().items()}

    def load_twin_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load what :meth:`twin_state_dict` wrote; the key sets must match exactly."""
        own = self.twin_tensors()
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"twin BatchNorm state does not fit this model: missing {missing[:3]}"
                             f", unexpected {extra[:3]}")
        with torch.no_grad():
            for k, t in own.items():
                t.copy_(state[k])


class AdversarialView(nn.Module):
    """``split(x, adversarial=True)`` as a plain ``model(x)``
    (see :meth:`SplitBN.adversarial_view`)."""

    def __init__(self, split: SplitBN) -> None:
        super().__init__()
        self.split = split

    def forward(self, x: Tensor) -> Tensor:
        return self.split(x, adversarial=True)  # type: ignore[no-any-return]
