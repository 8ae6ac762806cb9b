"""Constants the command line needs before any computing, in a module that imports nothing
heavy: ``mladv --help`` and ``mladv <command> --help`` import no torch (tests/test_imports.py),
so typer's option bounds live here and :mod:`mladv.models` imports them (one home)."""
from __future__ import annotations

#: The square image sizes (pixels) a model is built and trained at: ``--image-size`` bounds.
IMAGE_SIZE_MIN, IMAGE_SIZE_MAX = 16, 1024

#: The attacks built into :data:`mladv.attacks.registry.ATTACKS`, for help texts (a test checks
#: the two agree; ``targeted-finding`` attacks multilabel models only).
ATTACK_NAMES = ("mladv", "pgd", "fgsm", "mifgsm", "pifgsm", "gama", "rays", "chain",
                "targeted-finding")
