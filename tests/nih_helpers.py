"""The real NIH sample (../shared/data/nih14): skipped when absent, failed when absent under
CI=true (the pattern of ``conftest.require_cxr3``)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

NIH14 = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih14"


def require_nih14(root: Path = NIH14, env: Mapping[str, str] = os.environ) -> Path:
    """``root`` if it holds the NIH sample; else skip, or, under ``CI=true``, fail."""
    if not (root / "Data_Entry_2017_v2020.csv").is_file():
        msg = f"NIH ChestX-ray14 sample not found at {root} (the ../shared data folder is absent)"
        if env.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"{msg}; CI=true, so the real-data tests must run", pytrace=False)
        pytest.skip(msg)
    return root
