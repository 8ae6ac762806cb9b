"""crafting.attack_metrics on a multilabel model: per-finding accuracies over known entries,
image-level success (any known decision changed) and the per-entry flip rate, by hand."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mladv.crafting import attack_metrics

NAN = float("nan")


class FirstPixels(nn.Module):
    """Logit k = 10 * (pixel k of the flattened image - 0.5): decision k is pixel k >= 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * (x.flatten(1)[:, :2] - 0.5)


def test_multilabel_attack_metrics_by_hand():
    clean = torch.zeros(3, 1, 2, 2)
    clean[0, 0, 0, 0] = 1.0  # image 0: decisions (1, 0)
    clean[1, 0, 0, 1] = 1.0  # image 1: decisions (0, 1)
    adv = clean.clone()
    adv[0, 0, 0, 0] = 0.0    # image 0 flips finding 0 -> (0, 0)
    adv[2, 0, 0, 1] = 1.0    # image 2 flips finding 1, which is unknown there -> not counted
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, NAN]])
    m = attack_metrics(FirstPixels(), clean, adv, labels)
    # known entries: 5. clean correct: (1,0) vs (1,0): 2; (0,1) vs (0,0): 1; (0,.) vs (0,.): 1 -> 4
    assert m["clean_acc"] == pytest.approx(4 / 5)
    # adversarial: image 0 now (0,0) vs (1,0): 1 correct; image 1: 1; image 2: 1 -> 3
    assert m["adv_acc"] == pytest.approx(3 / 5)
    assert m["success"] == pytest.approx(1 / 3)  # image 0 only (image 2's flip is unknown)
    assert m["flip_rate"] == pytest.approx(2 / 6)  # label-free: image 2's flip counts here
    assert m["n"] == 3 and m["linf_max"] == pytest.approx(1.0)  # image metrics kept


def test_attack_and_augment_read_data_in_the_checkpoints_dicom_mode(tmp_path, monkeypatch):
    """checkpoint_and_split (mladv attack / augment) passes the checkpoint's dicom_mode to the
    loader; a checkpoint from before the field reads DICOM through its VOI ("voi")."""
    import mladv.crafting as crafting
    from mladv.data import make_phantoms
    from mladv.models import build_model, save_checkpoint

    seen = []

    def spy(source, image_size, **kw):
        seen.append(kw["dicom_mode"])
        return make_phantoms(2, image_size, 0)

    monkeypatch.setattr(crafting, "load_source", spy)
    model = build_model("small_cnn", 3)
    classes = make_phantoms(2, 16, 0).classes
    save_checkpoint(tmp_path / "raw.pt", model, classes=classes, image_size=16, dicom_mode="raw")
    save_checkpoint(tmp_path / "old.pt", model, classes=classes, image_size=16)
    for name in ("raw.pt", "old.pt"):
        crafting.checkpoint_and_split(tmp_path / name, "phantoms", "all",
                                      device=torch.device("cpu"), skip_bad=False)
    assert seen == ["raw", "voi"]
