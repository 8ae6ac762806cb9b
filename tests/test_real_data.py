"""End to end on the real chest X-rays of ../shared/data/cxr3 (skipped when absent, failed when
absent under CI=true)."""
import pytest
import torch

from conftest import CXR3, require_cxr3
from mladv.attacks import MLAdv
from mladv.data import load_folder, split_imageset
from mladv.models import build_model, predict_logits
from mladv.training import accuracy, train_classifier


def test_mladv_attacks_a_model_trained_on_real_chest_xrays(cxr3_root):
    train, test = split_imageset(load_folder(cxr3_root, 32), seed=0)
    torch.manual_seed(0)
    model = build_model("small_cnn", len(train.classes))
    train_classifier(model, train, epochs=4, batch_size=32, lr=3e-3, seed=0, progress=False)
    assert accuracy(model, test.images, test.labels) > 0.5  # well above chance (1/3)
    x, y = test.images[:48], test.labels[:48]
    adv = MLAdv(model, eps=8 / 255, seed=0)(x, y)
    clean, fooled = predict_logits(model, x).argmax(1), predict_logits(model, adv).argmax(1)
    assert (fooled[clean == y] != y[clean == y]).float().mean() >= 0.9
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6


def test_missing_chest_xrays_skip_locally_and_fail_under_ci(tmp_path):
    with pytest.raises(pytest.skip.Exception, match="not found"):
        require_cxr3(tmp_path / "cxr3", env={})
    for ci in ("true", "TRUE", "1"):
        with pytest.raises(pytest.fail.Exception, match="CI=true, so the real-data tests must"):
            require_cxr3(tmp_path / "cxr3", env={"CI": ci})
    with pytest.raises(pytest.skip.Exception):
        require_cxr3(tmp_path / "cxr3", env={"CI": "false"})
    if (CXR3 / "manifest.csv").is_file():  # present: returned whatever CI says
        assert require_cxr3(CXR3, env={"CI": "true"}) == CXR3
