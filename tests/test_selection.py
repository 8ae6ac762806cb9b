"""Grid selection of the online arms, seen through spies on what it trains and scores: every grid
point trains on the training set less the validation images (by content), scores on exactly
the validation images, and the rule takes the best validation score, ties to the first point."""
from __future__ import annotations

import hashlib
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

import mladv.experiment.selection as sel_mod
from mladv.data import split_imageset
from mladv.experiment.config import validate_config
from mladv.experiment.run import prepare
from mladv.experiment.selection import point_name, select_online
from mladv.experiment.state import quiet_log

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = {"name": "mini-selection", "data": "phantoms:12", "image_size": 16, "arch": "small_cnn",
          "seeds": 1, "arms": ["none", "pgd-online"],
          "train": {"epochs": 2, "batch_size": 16, "lr": 0.01},
          "online": {"grid": {"eps": [1, 4]}, "selection": {"val_size": 0.25, "seed": 0}},
          "progress": False}


def hashes(images: torch.Tensor) -> list[str]:
    """The sha1 of each image's float32 bytes (``N x C x H x W`` -> ``N`` hex strings)."""
    return [hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest() for x in images]


@pytest.fixture(scope="module")
def spied(tmp_path_factory, one_thread):
    """One selection run of CONFIG with spies on what it trains on (``train_classifier``'s data,
    per grid point) and what it scores (``predict_logits``' images); and the run's validation
    split recomputed from the config."""
    run = prepare(validate_config(CONFIG), tmp_path_factory.mktemp("sel") / "run", quiet_log)
    trained: dict[str, list[str]] = {}
    scored: list[str] = []
    real_train, real_predict = sel_mod.train_classifier, sel_mod.predict_logits

    def train_spy(model, data, *args, **kwargs):
        trained[kwargs["desc"]] = hashes(data.images)
        return real_train(model, data, *args, **kwargs)

    def predict_spy(model, images, *args, **kwargs):
        scored.extend(hashes(images))
        return real_predict(model, images, *args, **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sel_mod, "train_classifier", train_spy)
        mp.setattr(sel_mod, "predict_logits", predict_spy)
        out = select_online(run)
    sel = run.cfg.online.selection
    _, val = split_imageset(run.train, test_size=sel.val_size, seed=sel.seed)
    return run, out, trained, scored, set(hashes(val.images))


def test_each_grid_point_trains_on_the_training_set_less_the_validation_images(spied):
    run, _, trained, _, val = spied
    everything = hashes(run.train.images)
    assert len(set(everything)) == len(everything)  # distinct images: hashes identify them
    rest = sorted(h for h in everything if h not in val)
    assert 0 < len(val) < len(everything)
    assert sorted(trained) == ["select none", "select pgd-online eps1-steps1-fracall",
                               "select pgd-online eps4-steps1-fracall"]
    for desc, seen in trained.items():
        assert sorted(seen) == rest, desc


def test_every_scored_image_is_a_validation_image_and_every_one_is_scored(spied):
    _, out, _, scored, val = spied
    assert set(scored) == val and out["n_val"] == len(val)
    # 3 points (flips + 2 grid points), each scored once per epoch after the first and at the end
    assert len(scored) == 3 * CONFIG["train"]["epochs"] * len(val)


@pytest.mark.parametrize("accuracies, chosen", [
    ({1: 0.50, 2: 0.75, 4: 0.75}, 2),   # a tie goes to the point listed first
    ({1: 0.50, 2: 0.60, 4: 0.75}, 4),   # the best is the last point
    ({1: 0.80, 2: 0.60, 4: 0.75}, 1),   # the best is the first point
    ({1: 0.60, 2: 0.60 + 5e-10, 4: 0.5}, 1),  # within the 1e-9 tie tolerance: the first
])
def test_select_online_chooses_the_best_validation_score_ties_to_the_first(tmp_path, monkeypatch,
                                                                            accuracies, chosen):
    """``train_point`` replaced by a spy returning set validation accuracies per eps: the
    choice is the arg-max in grid order, and each point is trained once."""
    cfg = validate_config({**CONFIG, "online": {"grid": {"eps": [1, 2, 4]}}})
    run = prepare(cfg, tmp_path / "run", quiet_log)
    calls: list[str] = []

    def fake_train_point(run, arm, point, train, val):
        calls.append(f"{arm} {point_name(point) if point else 'flips'}")
        acc = 0.5 if point is None else accuracies[int(point["eps"])]
        return {"arm": arm, "point": point, "val_accuracy": acc, "val_loss": 1.0 - acc,
                "history": [], "train_wall_s": 0.0}
    monkeypatch.setattr(sel_mod, "train_point", fake_train_point)
    out = select_online(run)
    assert calls == ["none flips"] + [f"pgd-online eps{e}-steps1-fracall" for e in (1, 2, 4)]
    assert out["choices"] == {"pgd-online": {
        "point": {"eps": chosen, "steps": 1, "fraction": None},
        "val_accuracy": accuracies[chosen]}}


def test_selection_so_far_is_none_then_the_finished_points_then_selection_json(spied, tmp_path):
    """``selection_so_far`` on a copy of the run's folder: None before the flips point; while the
    grid runs, the header, no choices, the finished points' scores and the counts; at the end
    ``selection.json`` as written."""
    run, out, *_ = spied
    view = SimpleNamespace(cfg=run.cfg, train=run.train, out=tmp_path)
    assert sel_mod.selection_so_far(view) is None
    shutil.copytree(run.out / "selection", tmp_path / "selection")
    done = json.loads((run.out / "selection" / "selection.json").read_text())
    assert sel_mod.selection_so_far(view) == done
    (tmp_path / "selection" / "selection.json").unlink()
    (tmp_path / "selection" / "pgd-online" / "eps4-steps1-fracall.json").unlink()
    header = {k: done[k] for k in ("rule", "rule_text", "val_size", "seed", "n_train", "n_val")}
    assert sel_mod.selection_so_far(view) == {
        **header, "choices": {}, "scores": {"pgd-online": done["scores"]["pgd-online"][:1]},
        "finished": 1, "planned": 2, "flips": done["flips"]}
    (tmp_path / "selection" / "pgd-online" / "eps1-steps1-fracall.json").unlink()
    assert sel_mod.selection_so_far(view) == {**header, "choices": {}, "scores": {},
                                              "finished": 0, "planned": 2, "flips": done["flips"]}
    assert out["scores"] == done["scores"]
