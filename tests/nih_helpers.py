"""The real NIH sample (../shared/data/nih14): skipped when absent, failed when absent under
CI=true (``conftest.require_shared``, as ``conftest.require_cxr3``)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from conftest import require_shared

NIH14 = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih14"


def require_nih14(root: Path = NIH14, env: Mapping[str, str] = os.environ) -> Path:
    """``root`` if it holds the NIH sample; else skip, or, under ``CI=true``, fail."""
    require_shared(root / "Data_Entry_2017_v2020.csv", "NIH ChestX-ray14 sample", env)
    return root
