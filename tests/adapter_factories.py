"""Model factories that tests/test_adapters.py loads as ``python:adapter_factories:NAME`` specs
(the tests put this folder on ``sys.path``)."""
from __future__ import annotations

import torch
from torch import nn

NOT_CALLABLE = 3


def make(num_outputs: int = 3) -> nn.Module:
    """A tiny 1-channel CNN with ``num_outputs`` logits and fixed weights (its own generator,
    seed 0: two calls build equal models without touching the global RNG)."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, num_outputs))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def not_a_module() -> int:
    return 42


def raises() -> nn.Module:
    raise RuntimeError("the factory's own failure")
