"""Commands that measure multiclass quantities refuse multilabel data in one line, before any
model is trained or any output folder is claimed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mladv.data import DataError, ImageSet


def multilabel_csv(tmp_path):
    """Six 16 px PNGs and a manifest path,patient_id,labels (|-separated findings)."""
    rows = ["path,patient_id,labels"]
    for i in range(6):
        name = f"im{i}.png"
        Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(tmp_path / name)
        rows.append(f"{name},p{i},{'Effusion|Mass' if i % 2 else 'Mass'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def test_transfer_refuses_multilabel_data_before_training(tmp_path):
    from mladv.transfer.config import TransferConfig
    from mladv.transfer.run import prepare_data

    cfg = TransferConfig.model_validate({
        "data": f"csv:{multilabel_csv(tmp_path)}", "image_size": 16,
        "source": {"arch": "small_cnn"}, "targets": [{"arch": "small_cnn"}]})
    with pytest.raises(ValueError, match="is a multilabel set; the transfer study measures"):
        prepare_data(cfg)


def test_export_refuses_multilabel_shards_before_claiming_the_folder(tmp_path):
    from mladv.attacks import make_attack
    from mladv.augment import craft_shards
    from mladv.data.export import export_pngs
    from mladv.models import build_model

    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.rand(4, 1, 16, 16, generator=g), torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]), ["a", "b"], [""] * 4,
        ["0", "1", "2", "3"], task="multilabel")
    model = build_model("small_cnn", 2)
    model.task = "multilabel"
    craft_shards(make_attack("fgsm", model, eps=2 / 255), data, tmp_path / "aug", progress=False)
    with pytest.raises(DataError, match="multilabel targets; the PNG export"):
        export_pngs(tmp_path / "aug", tmp_path / "png")
    assert not (tmp_path / "png").exists()
