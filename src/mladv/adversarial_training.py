"""Online and split-BatchNorm (AdvProp) adversarial training: one batch at a time.

Three ways to train on adversarial samples (``MODES``):

- ``offline``: copies crafted once on a base model and added to the training set
  (``mladv augment`` / the experiment's arms); nothing happens per batch.
- ``online``: each batch's adversarial copies are crafted against the *current* weights (model in
  eval mode, parameters frozen while crafting), then the model trains on clean + adversarial
  (``fraction=None``: the batch doubles) or on the batch with a ``fraction`` of it replaced.
- ``advprop`` (Xie et al., CVPR 2020): ``online`` through :class:`~mladv.splitbn.SplitBN`: the
  attack crafts through the twin BatchNorm layers and the adversarial rows of the loss go
  through them; clean rows and evaluation use the main BatchNorm.

The loss is the cross-entropy averaged over every row trained on: with ``fraction=None`` that is
``(L_clean + L_adv) / 2`` (AdvProp's sum, halved, so the learning rate keeps its meaning).

Multilabel models (``model.task == "multilabel"``, batch labels ``N x K`` with NaN = unknown):
the attack is built with ``task="multilabel"`` (the twin view of ``advprop`` carries no task of
its own), so it crafts with the task's objective, the masked binary cross-entropy over the known
findings (:func:`mladv.tasks.attack_objective`); the labels reach it as they are (not arg-maxed)
and the training loss is :func:`mladv.tasks.masked_bce` (``training.py``'s multilabel branch).

Online defaults (``eps = 1/255``, ``steps = 1``, as AdvProp reimplementations use):
``pgd`` at one step is FGSM: step ``alpha = eps``, **no random start** (a random start inside
``[-eps, eps]`` followed by one step of ``eps`` would be clipped back and waste part of the
budget); at ``steps > 1`` it is Madry's PGD with a random start and ``alpha = 2.5 eps / steps``.
``mladv`` gets ``refine=0``: its refine loop (up to 10 extra PGD steps for unfooled samples)
would run on most samples at 1/255 and multiply the cost by up to 11 for a goal (fooling the
model) that AdvProp does not need. Both are overridable through ``options``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attacks import Attack, accepted_options, check_attack_options, eval_mode, make_attack
from .models import build_model
from .splitbn import SplitBN, batchnorm_names
from .tasks import masked_bce

MODES = ("offline", "online", "advprop")
ONLINE_MODES = ("online", "advprop")
AttackFn = Callable[[Tensor, Tensor], Tensor]
AttackFactory = Callable[[nn.Module], AttackFn]


def online_attack_options(name: str, eps: float, steps: int,
                          options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``make_attack(name, model, ...)`` when crafting during training:
    ``eps`` (in [0, 1] units) and ``steps``, the online defaults of this module's docstring
    (PGD step and random start, MLAdv ``refine=0``), then ``options`` on top."""
    accepted = accepted_options(name)
    given: dict[str, Any] = {"eps": eps}
    if "steps" in accepted:
        given["steps"] = steps
    elif steps != 1:
        raise ValueError(f"attack {name!r} has no steps option; use adv_steps 1")
    if name.lower() == "pgd":
        given.update(alpha=eps if steps == 1 else 2.5 * eps / steps, random_start=steps > 1)
    if name.lower() == "mladv":
        given["refine"] = 0
    return {**given, **(options or {})}


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters of ``model`` stop requiring gradients inside the block (restored after, even
    on error): crafting needs gradients w.r.t. the input only, and never leaves any in ``.grad``
    (which would reach DDP's reducer outside its forward / backward)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


class AdversarialBatch:
    """Turn each training batch into clean + adversarial rows crafted against the current model.

    Args:
        attack: a registry name (``"pgd"``, ``"mladv"``, ...; built with
            :func:`online_attack_options`) or a factory ``model -> attack`` where ``attack(x, y)``
            returns adversarial images (then ``eps`` / ``steps`` / ``options`` are the factory's
            business and are not used).
        mode: ``"online"`` or ``"advprop"`` (``"offline"`` copies are made before training).
        eps: L-infinity budget in [0, 1] units (default 1/255).
        steps: attack iterations (default 1).
        fraction: ``None``: train on the batch and all its adversarial copies (2B rows); a
            number in (0, 1]: replace ``ceil(fraction * B)`` rows (at least one), drawn at random.
        options: extra attack options (e.g. MLAdv's ``style_weight=1``).
        seed: seeds the replaced rows and the attack's own draws (``seed + call number``).

    Examples::
        >>> adv = AdversarialBatch("pgd", mode="advprop")
        >>> net = adv.bind(model)               # SplitBN(model); train net.parameters()
        >>> loss = adv.loss(net, images, labels)  # crafts, then clean + adversarial CE
    """

    def __init__(self, attack: str | AttackFactory = "pgd", *, mode: str = "advprop",
                 eps: float = 1 / 255, steps: int = 1, fraction: float | None = None,
                 options: dict[str, Any] | None = None, seed: int = 0) -> None:
        if mode not in ONLINE_MODES:
            hint = " (offline copies are crafted before training: mladv augment)" \
                if mode == "offline" else ""
            raise ValueError(f"adversarial mode must be one of {ONLINE_MODES}, got {mode!r}{hint}")
        if not 0.0 < eps <= 1.0:
            raise ValueError(f"eps must be in (0, 1] ([0, 1] units, e.g. 1/255), got {eps:g}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"adv_steps must be an integer >= 1, got {steps!r}")
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise ValueError(f"adv_fraction must be in (0, 1], got {fraction}")
        self.attack, self.mode, self.eps, self.steps = attack, mode, float(eps), steps
        self.fraction, self.options, self.seed = fraction, dict(options or {}), seed
        if isinstance(attack, str):
            self.attack_options = online_attack_options(attack, self.eps, steps, self.options)
            check_attack_options(attack, self.attack_options)  # one line, before any compute
        self.calls = 0
        self.multilabel = False
        self.model: nn.Module | None = None
        self.split: SplitBN | None = None
        self._attack: AttackFn | None = None
        self._target: nn.Module | None = None

    @property
    def trainable(self) -> nn.Module | None:
        """The module to train (None before :meth:`bind`): ``split`` for ``advprop`` (the model
        and its twins), else the bound model."""
        return self.split if self.split is not None else self.model

    def bind(self, model: nn.Module) -> nn.Module:
        """Build the attack on ``model`` (every option checked here, before any compute) and
        return the module to train: ``SplitBN(model)`` for ``advprop``, ``model`` for
        ``online``. Binding the same model again keeps its twins."""
        if self.model is not model:
            self.model = model
            self.split = SplitBN(model) if self.mode == "advprop" else None
            self._target = self.split.adversarial_view() if self.split is not None else model
            self.multilabel = getattr(model, "task", "multiclass") == "multilabel"
            if isinstance(self.attack, str):
                task = {"task": "multilabel"} if self.multilabel else {}
                self._attack = make_attack(self.attack, self._target, **self.attack_options,
                                           **task)
            else:
                self._attack = self.attack(self._target)
        return self.split if self.split is not None else model

    def craft(self, images: Tensor, labels: Tensor) -> Tensor:
        """Adversarial copies of ``images`` (``N x C x H x W`` in [0, 1]) against the current
        weights, crafted in eval mode with the parameters frozen (the twins for ``advprop``).
        Soft labels (``N x K``) are attacked at their arg-max."""
        if self._attack is None or self.trainable is None or self._target is None:
            raise RuntimeError("AdversarialBatch.bind(model) must be called before crafting")
        hard = labels if labels.dim() == 1 or self.multilabel else labels.argmax(1)
        if isinstance(self._attack, Attack):
            self._attack.seed = self.seed + self.calls
        self.calls += 1
        # the attack's model (the twin view for advprop) reports eval mode too; the outer
        # context restores the trained module's own mode last
        with eval_mode(self.trainable), eval_mode(self._target), frozen(self.trainable):
            return self._attack(images, hard).detach().to(images.dtype)

    def __call__(self, images: Tensor, labels: Tensor,
                 weight: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(x_in, y_in, adv_mask, weight_in)``: the rows to train on, their labels, which rows
        are adversarial (``bool``), and the per-row weights repeated the same way.

        Shape: ``B`` rows -> ``2B`` (``fraction=None``) or ``B`` (``ceil(fraction B)`` replaced).
        """
        b = images.shape[0]
        if self.fraction is None:
            adv = self.craft(images, labels)
            mask = torch.arange(2 * b, device=images.device) >= b
            w = None if weight is None else torch.cat([weight, weight])
            return torch.cat([images, adv]), torch.cat([labels, labels]), mask, w
        k = min(b, max(1, math.ceil(self.fraction * b)))
        gen = torch.Generator().manual_seed(self.seed + self.calls)
        rows = torch.randperm(b, generator=gen)[:k].to(images.device)
        x_in = images.clone()
        x_in[rows] = self.craft(images[rows], labels[rows])
        mask = torch.zeros(b, dtype=torch.bool, device=images.device)
        mask[rows] = True
        return x_in, labels, mask, weight

    def forward(self, net: nn.Module, x_in: Tensor, adv_mask: Tensor) -> Tensor:
        """Logits of ``net`` (the bound module, possibly DDP-wrapped): one call, with the
        adversarial rows routed through the twins for ``advprop``."""
        return net(x_in, adv_mask=adv_mask) if self.mode == "advprop" else net(x_in)  # type: ignore[no-any-return]

    def loss(self, net: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
        """Craft, then the mean cross-entropy over clean + adversarial rows (train mode as the
        caller left it; multilabel: the masked BCE over the known entries); for a hand-written
        loop."""
        x_in, y_in, mask, _ = self(images, labels)
        logits = self.forward(net, x_in, mask)
        return masked_bce(logits, y_in) if self.multilabel else F.cross_entropy(logits, y_in)

    def twin_state_dict(self) -> dict[str, Tensor] | None:
        """The twin BatchNorm state (``advprop``) for a checkpoint entry, else ``None``."""
        return self.split.twin_state_dict() if self.split is not None else None

    def describe(self) -> dict[str, Any]:
        """How the model was trained, for checkpoints and reports (eps in 1/255 units)."""
        name = self.attack if isinstance(self.attack, str) else getattr(
            self.attack, "__name__", type(self.attack).__name__)
        return {"mode": self.mode, "attack": name, "eps": round(self.eps * 255, 6),
                "steps": self.steps, "fraction": self.fraction, "options": self.options}

    def checkpoint_extra(self) -> dict[str, Any]:
        """Keyword arguments for :func:`mladv.models.save_checkpoint`: ``adversarial`` (how) and,
        for ``advprop``, ``twin_bn`` (the twins' state; the model's own keys stay plain)."""
        extra: dict[str, Any] = {"adversarial": self.describe()}
        twins = self.twin_state_dict()
        if twins is not None:
            extra["twin_bn"] = twins
        return extra


def adversarial_from_options(mode: str = "offline", attack: str = "pgd", *, adv_eps: float = 1.0,
                             adv_steps: int = 1, adv_fraction: float | None = None,
                             options: dict[str, Any] | None = None,
                             seed: int = 0) -> AdversarialBatch | None:
    """The CLI / config translation: ``adv_eps`` in 1/255 units; ``None`` for ``offline`` (no
    per-batch work). Raises one ``ValueError`` line for a bad mode or option."""
    if mode not in MODES:
        raise ValueError(f"adversarial mode must be one of {MODES}, got {mode!r}")
    if mode == "offline":
        return None
    if not 0.0 < adv_eps <= 255.0:
        raise ValueError(f"adv_eps must be in (0, 255] (1/255 units), got {adv_eps:g}")
    return AdversarialBatch(attack, mode=mode, eps=adv_eps / 255, steps=adv_steps,
                            fraction=adv_fraction, options=options, seed=seed)


def check_advprop(arch: str, freeze_backbone: bool = False, *, mode_name: str = "--adv-mode",
                  freeze_name: str = "--freeze-backbone") -> None:
    """Refuse ``advprop`` where it would silently be plain ``online`` training: an architecture
    without BatchNorm (no twin to route the adversarial rows through) or a frozen backbone
    (its BatchNorm layers do not train). One ``ValueError`` line naming the setting. Builds a
    throwaway ``arch`` (call it before seeding the real model's initialisation)."""
    if freeze_backbone:
        raise ValueError(f"{mode_name} advprop with {freeze_name}: the frozen backbone's "
                         "BatchNorm layers do not train, so advprop would be plain online "
                         "training; use --adv-mode online")
    state = torch.random.get_rng_state()
    try:
        has_bn = bool(batchnorm_names(build_model(arch, 2)))
    finally:
        torch.random.set_rng_state(state)  # the check draws no random number of the run
    if not has_bn:
        raise ValueError(f"{mode_name} advprop: {arch} has no BatchNorm layer to give a twin, "
                         "so advprop would be plain online training; use --adv-mode online")
