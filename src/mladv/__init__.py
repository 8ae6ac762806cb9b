"""mladv: realistic adversarial augmentation of medical images (MLAdv).

The public names below load on first use (PEP 562 module ``__getattr__``): ``import mladv`` and
``mladv --help`` import no torch; ``from mladv import MLAdv`` imports what MLAdv needs then.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and the import graph
    from .attacks import MLAdv, heuristic_projection, projection_kernel
    from .models import build_model, load_checkpoint, save_checkpoint

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_LAZY = {"MLAdv": "attacks", "heuristic_projection": "attacks", "projection_kernel": "attacks",
         "build_model": "models", "load_checkpoint": "models", "save_checkpoint": "models"}

__all__ = ["MLAdv", "build_model", "heuristic_projection", "load_checkpoint", "projection_kernel",
           "save_checkpoint", "__version__"]


def __getattr__(name: str) -> Any:
    """``mladv.NAME`` for a public name of :data:`_LAZY`: imported from its submodule on first
    access, then cached in this module's namespace."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
