"""Units at the boundary, written once: every entry point that takes an eps in 1/255 units (the
``--eps`` / ``--adv-eps`` flags of ``attack``, ``augment``, ``train``; the ``eps:`` of the
experiment and transfer configs and their grids; ``evaluate --pgd-eps``) checks it here.

A budget in 1/255 units below 0.5 is almost surely a value in [0, 1] image units (``0.03`` for
about 8/255): it is refused in one line that says what to write instead, before any compute.
Imports nothing heavy (``mladv <command> --help`` imports no torch).
"""
from __future__ import annotations

#: The smallest eps (1/255 units) taken as meant in 1/255 units; below it looks like [0, 1] units.
EPS_255_MIN = 0.5
EPS_255_MAX = 255.0


def check_eps_255(value: float, name: str = "eps", example: float = 8) -> float:
    """``value`` (an L-inf budget in 1/255 units) when it is in [0.5, 255]; otherwise one
    ``ValueError`` line naming ``name``: ``eps is in 1/255 units (8 means 8/255); 0.03 looks like
    [0, 1] units: write 7.65`` for ``0 < value < 0.5`` (the [0, 1] value times 255), or ``eps
    must be in (0, 255] (1/255 units)`` for anything else. ``example`` is the value the message
    explains (``8`` for ``--eps``, ``1`` for the per-batch ``--adv-eps``)."""
    if not 0 < value <= EPS_255_MAX:  # also NaN
        raise ValueError(f"{name} must be in (0, 255] (1/255 units), got {value:g}")
    if value < EPS_255_MIN:
        raise ValueError(f"{name} is in 1/255 units ({example:g} means {example:g}/255); "
                         f"{value:g} looks like [0, 1] units: write {value * 255:.3g}")
    return float(value)


def eps_to_unit(value: float, name: str = "eps") -> float:
    """An eps in 1/255 units, checked (:func:`check_eps_255`), as [0, 1] image units:
    ``value / 255``."""
    return check_eps_255(value, name) / 255.0
