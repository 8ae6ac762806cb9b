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


def test_mladv_attack_with_targeted_finding_reports_its_own_success_by_hand(tmp_path):
    """metrics.json of a targeted-finding attack holds targeted_success: the share of images
    whose finding 0 decision is 1 after the attack while every other decision is unchanged."""
    from mladv.crafting import attack_to_folder
    from mladv.data import load_source
    from mladv.models import build_model, predict_logits, save_checkpoint

    source = f"csv:{multilabel_csv(tmp_path)}"
    data = load_source(source, 16)
    torch.manual_seed(0)
    model = build_model("small_cnn", len(data.classes))
    save_checkpoint(tmp_path / "m.pt", model, classes=data.classes, image_size=16,
                    task="multilabel")
    metrics = attack_to_folder(tmp_path / "m.pt", source, "targeted-finding",
                               {"finding": 0, "to": 1, "eps": 8 / 255, "steps": 2, "seed": 0},
                               split="all", batch_size=8, seed=0, out=tmp_path / "out",
                               png_previews=0, device="cpu", skip_bad=False)
    adv = torch.load(tmp_path / "out" / "adversarial.pt", weights_only=True)["images"]
    clean_d = predict_logits(model, data.images) >= 0
    adv_d = predict_logits(model, adv) >= 0
    hits = [bool(adv_d[i, 0]) and bool((adv_d[i, 1:] == clean_d[i, 1:]).all())
            for i in range(len(data))]
    assert metrics["targeted_success"] == pytest.approx(sum(hits) / len(hits))
