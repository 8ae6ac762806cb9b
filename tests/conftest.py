"""Shared fixtures: a tiny model trained once per session on small phantoms."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from mladv.data import make_phantoms, split_imageset
from mladv.models import build_model
from mladv.training import train_classifier

torch.set_num_threads(min(2, torch.get_num_threads()))

CXR3 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr3"


@pytest.fixture(scope="session")
def phantoms32():
    """153 / 27 split of 32 px phantoms (3 classes)."""
    return split_imageset(make_phantoms(60, 32, seed=1), seed=0)


@pytest.fixture(scope="session")
def trained_model(phantoms32):
    """A small CNN trained for a few epochs; well above chance, far from perfect."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    train_classifier(model, phantoms32[0], epochs=6, batch_size=16, lr=3e-3, seed=0,
                     progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: several times faster than two on a busy 2-core machine.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_trained(one_thread):
    """A small CNN trained in seconds (one thread) on 120 phantoms of 24 px (about 80 % train
    accuracy), with those images; trained per module, so a module's thresholds do not move with
    another's use of it or with ``trained_model``."""
    data = make_phantoms(40, 24, seed=1)
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    train_classifier(model, data, epochs=8, batch_size=16, lr=3e-3, seed=0, progress=False)
    return model.eval(), data.images, data.labels


def require_shared(marker: Path, what: str, env: Mapping[str, str] = os.environ) -> None:
    """Skip unless ``marker`` (a file of a ../shared data set) exists, or, under ``CI=true``,
    fail: a green CI run must not hide the real-data tests. ``what`` names the set."""
    if not marker.is_file():
        msg = f"{what} not found at {marker.parent} (the ../shared data folder is absent)"
        if env.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"{msg}; CI=true, so the real-data tests must run", pytrace=False)
        pytest.skip(msg)


def require_cxr3(root: Path = CXR3, env: Mapping[str, str] = os.environ) -> Path:
    """``root`` if it holds the real chest X-rays; else skip, or fail under ``CI=true``
    (:func:`require_shared`)."""
    require_shared(root / "manifest.csv", "real chest X-rays", env)
    return root


@pytest.fixture()
def cxr3_root() -> Path:
    return require_cxr3()


@pytest.fixture()
def no_data(monkeypatch):
    """Fails the test if a command reads its data (errors must come before that)."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the data was read before the error")
    for module in ("reuse", "crafting"):  # train's, and attack / augment / evaluate's reader
        monkeypatch.setattr(f"mladv.{module}.load_source", forbidden)
