"""Forward hooks that read layer activations in the same forward pass that gives the logits."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


def conv_layers(model: nn.Module) -> list[str]:
    """Names of every ``nn.Conv2d`` in ``model`` (the paper's style set S = all conv layers)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def default_origin_layer(model: nn.Module) -> str:
    """The origin (content) layer O: the last-but-one stage of the network.

    ``layer3`` for a ResNet (searched under any wrapper prefix), else the convolution three
    quarters of the way down the network.
    """
    names = [name for name, _ in model.named_modules()]
    for name in names:
        if name == "layer3" or name.endswith(".layer3"):
            return str(name)
    convs = conv_layers(model)
    if not convs:
        raise ValueError("the model has no Conv2d layer to take origin features from; "
                         "pass origin_layer=<module name> or origin_weight=0")
    return convs[min(len(convs) - 1, (3 * len(convs)) // 4)]


class FeatureTap:
    """Context manager recording the outputs of named modules during a forward pass.

    Examples::
        >>> with FeatureTap(model, ["net.layer1", "net.layer3"]) as tap:
        ...     logits = model(x)
        ...     f1, f3 = tap.outputs()
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"no module named {missing} in the model; conv layers are e.g. "
                             f"{conv_layers(model)[:4]}")
        self.names = list(dict.fromkeys(names))
        self._modules = [modules[n] for n in self.names]
        self._handles: list[RemovableHandle] = []
        self._store: dict[str, Tensor] = {}

    def __enter__(self) -> FeatureTap:
        for name, module in zip(self.names, self._modules):
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str) -> Callable[[nn.Module, object, Tensor], None]:
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            self._store[name] = output
        return hook

    def outputs(self, names: Sequence[str] | None = None) -> list[Tensor]:
        """The recorded activations, in the order of ``names`` (default: construction order)."""
        return [self._store[n] for n in (names if names is not None else self.names)]

    def clear(self) -> None:
        self._store.clear()

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._store.clear()
