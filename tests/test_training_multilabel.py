"""train_classifier on a multilabel set (issue 22 item 5): each image's loss is its mean binary
cross-entropy over its known findings (NaN = unknown, masked), the batch loss their mean;
``train_acc`` is the per-finding accuracy at the 0.5 threshold over known entries."""
from __future__ import annotations

import math

import pytest
import torch

from mladv.data import ImageSet
from mladv.models import build_model, load_checkpoint, save_checkpoint
from mladv.training import train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")
NAN = float("nan")


def multilabel_set(n: int = 12, k: int = 3, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 16, 16, generator=g)
    labels = (torch.rand(n, k, generator=g) > 0.5).float()
    labels[0, 1] = NAN
    labels[3, :] = NAN  # an image with no known finding
    return ImageSet(images, labels, [f"f{i}" for i in range(k)], [""] * n,
                    [str(i) for i in range(n)], task="multilabel")


def hand_bce(z: float, y: float) -> float:
    """-[y log s(z) + (1 - y) log(1 - s(z))], s the logistic function."""
    s = 1.0 / (1.0 + math.exp(-z))
    return -(y * math.log(s) + (1.0 - y) * math.log(1.0 - s))


def test_first_epoch_loss_is_the_mean_bce_over_known_entries_before_the_step():
    data = multilabel_set()
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    model.train()
    with torch.no_grad():  # one batch of every image: the recorded loss is the pre-step forward
        logits = model(data.images)
    known = [(i, k) for i in range(len(data)) for k in range(3)
             if not math.isnan(float(data.labels[i, k]))]
    expected = sum(hand_bce(float(logits[i, k]), float(data.labels[i, k]))
                   for i, k in known) / len(known)
    history = train_classifier(model, data, epochs=1, batch_size=len(data), lr=1e-3,
                               progress=False, transform=None)
    assert history[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_train_acc_counts_known_entries_at_the_half_threshold():
    data = multilabel_set()
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    model.train()
    with torch.no_grad():
        logits = model(data.images)
    hits = seen = 0
    for i in range(len(data)):
        for k in range(3):
            y = float(data.labels[i, k])
            if not math.isnan(y):
                seen += 1
                hits += int((1.0 / (1.0 + math.exp(-float(logits[i, k]))) >= 0.5) == (y == 1))
    history = train_classifier(model, data, epochs=1, batch_size=len(data), lr=1e-3,
                               progress=False, transform=None)
    assert history[0]["train_acc"] == pytest.approx(hits / seen)


def test_an_unknown_entry_trains_finite_weights_unlike_either_known_value():
    """An entry set to NaN is neither read as 0 nor as 1: the weights trained with it unknown
    are finite and differ from those trained with it known as 0 and as 1."""
    data = multilabel_set()
    runs = {}
    for name, value in (("nan", NAN), ("zero", 0.0), ("one", 1.0)):
        labels = data.labels.clone()
        labels[0, 1] = value
        copy = ImageSet(data.images, labels, data.classes, data.paths, data.groups,
                        task="multilabel")
        torch.manual_seed(0)
        model = build_model("small_cnn", 3)
        train_classifier(model, copy, epochs=2, batch_size=4, lr=1e-2, progress=False)
        runs[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.isfinite(runs["nan"]).all()
    assert not torch.equal(runs["nan"], runs["zero"])
    assert not torch.equal(runs["nan"], runs["one"])


def test_an_epoch_with_no_known_finding_reports_nan_and_keeps_the_weights_finite():
    data = multilabel_set(n=4)
    data.labels[:] = NAN
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    history = train_classifier(model, data, epochs=1, batch_size=4, lr=1e-2, progress=False)
    assert math.isnan(history[0]["loss"]) and math.isnan(history[0]["train_acc"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_checkpoint_records_and_restores_the_task(tmp_path):
    data = multilabel_set()
    model = build_model("small_cnn", 3)
    save_checkpoint(tmp_path / "m.pt", model, classes=data.classes, image_size=16,
                    task="multilabel")
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["task"] == "multilabel" and loaded.task == "multilabel"


def test_a_checkpoint_without_a_task_is_multiclass(tmp_path):
    model = build_model("small_cnn", 3)
    save_checkpoint(tmp_path / "m.pt", model, classes=["a", "b", "c"], image_size=16)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    del ckpt["task"]
    torch.save(ckpt, tmp_path / "old.pt")
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    assert loaded.task == "multiclass"


def test_an_unknown_task_in_a_checkpoint_is_one_line_naming_the_file(tmp_path):
    model = build_model("small_cnn", 3)
    save_checkpoint(tmp_path / "m.pt", model, classes=["a", "b", "c"], image_size=16)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["task"] = "regression"
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: task must be one of"):
        load_checkpoint(tmp_path / "bad.pt")


def test_mladv_train_reports_macro_auroc_and_per_finding_auroc_for_a_multilabel_split():
    from sklearn.metrics import roc_auc_score

    from mladv.models import predict_logits
    from mladv.reuse import test_metrics

    data = multilabel_set(n=12)
    data.labels[:, 2] = 0.0  # one class only: no AUROC for f2
    data.labels[1, 0], data.labels[2, 0] = 1.0, 0.0  # both classes in f0 whatever the draw
    data.labels[1, 1], data.labels[2, 1] = 1.0, 0.0
    torch.manual_seed(0)
    model = build_model("small_cnn", 3).eval()
    z = predict_logits(model, data.images)
    expected = []
    for k in (0, 1):
        known = ~torch.isnan(data.labels[:, k])
        expected.append(roc_auc_score(data.labels[known, k].numpy(), z[known, k].numpy()))
    metrics = test_metrics(model, data)
    assert metrics["test_auroc"]["f2"] is None
    assert metrics["test_auroc"]["f0"] == pytest.approx(expected[0])
    assert metrics["test_macro_auroc"] == pytest.approx(sum(expected) / 2)


def test_the_union_of_multilabel_sets_stays_multilabel():
    from mladv.augment import union

    data = multilabel_set(n=4)
    joined = union(data, data)
    assert joined.task == "multilabel" and joined.labels.shape == (8, 3)
    assert torch.equal(joined.labels[4:].isnan(), data.labels.isnan())


def test_multilabel_shards_read_back_with_their_targets_and_task(tmp_path):
    """craft_shards on a multilabel set, then load_shards / AdversarialDataset: the N x K
    targets (NaN kept) and the task come back; a sample's target is its K-vector."""
    from mladv.attacks import make_attack
    from mladv.augment import craft_shards, load_shards
    from mladv.data import AdversarialDataset

    data = multilabel_set(n=6)
    model = build_model("small_cnn", 3)
    model.task = "multilabel"
    craft_shards(make_attack("fgsm", model, eps=2 / 255), data, tmp_path / "aug",
                 shard_size=4, progress=False)
    back = load_shards(tmp_path / "aug")
    assert back.task == "multilabel"
    assert torch.equal(back.labels.isnan(), data.labels.isnan())
    assert torch.equal(back.labels.nan_to_num(-1), data.labels.nan_to_num(-1))
    _, target = AdversarialDataset(tmp_path / "aug")[3]
    assert target.shape == (3,) and bool(target.isnan().all())
