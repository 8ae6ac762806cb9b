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
from mladv.experiment.selection import select_online
from mladv.experiment.state import point_name, selection_so_far
from mladv.logs import quiet_log

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
    assert selection_so_far(view) is None
    shutil.copytree(run.out / "selection", tmp_path / "selection")
    done = json.loads((run.out / "selection" / "selection.json").read_text())
    assert selection_so_far(view) == done
    (tmp_path / "selection" / "selection.json").unlink()
    (tmp_path / "selection" / "pgd-online" / "eps4-steps1-fracall.json").unlink()
    header = {k: done[k] for k in ("rule", "rule_text", "val_size", "seed", "n_train", "n_val")}
    assert selection_so_far(view) == {
        **header, "choices": {}, "scores": {"pgd-online": done["scores"]["pgd-online"][:1]},
        "finished": 1, "planned": 2, "flips": done["flips"]}
    (tmp_path / "selection" / "pgd-online" / "eps1-steps1-fracall.json").unlink()
    assert selection_so_far(view) == {**header, "choices": {}, "scores": {},
                                              "finished": 0, "planned": 2, "flips": done["flips"]}
    assert out["scores"] == done["scores"]


# -- the pieces, value by value (issue 16 mutation testing) -------------------------------------
OPTIONS = {"pgd": {"targeted": False, "steps": 7}, "mladv": {"style_weight": 2.0},
           "chain": {"rotation": 5.0}}


@pytest.mark.parametrize("arm, attack, mode, options", [
    ("pgd-online", "pgd", "online", {"targeted": False}),
    ("mladv-advprop", "mladv", "advprop", {"style_weight": 2.0}),
    ("chain-online", "chain", "online", {"rotation": 5.0})])
def test_online_batch_is_the_arms_attack_at_the_grid_point_with_the_configs_options(
        arm, attack, mode, options):
    cfg = validate_config({**CONFIG, **OPTIONS, "arms": ["none", arm]})
    point = {"eps": 4, "steps": 2, "fraction": 0.5}
    adv = sel_mod.online_batch(cfg, arm, point, seed=7)
    assert adv.describe() == {"mode": mode, "attack": attack, "eps": 4.0, "steps": 2,
                              "fraction": 0.5, "options": options}
    assert adv.seed == 7


def test_point_name_spells_eps_steps_and_fraction():
    assert point_name({"eps": 2, "steps": 3, "fraction": 0.5}) == "eps2-steps3-frac0.5"
    assert point_name({"eps": 0.5, "steps": 1, "fraction": None}) == "eps0.5-steps1-fracall"


def test_choose_refuses_an_unknown_rule_and_an_empty_grid_in_one_line():
    with pytest.raises(ValueError) as err:
        sel_mod.choose([{"val_accuracy": 1.0}], "min-loss")
    assert str(err.value) == ("unknown selection rule 'min-loss'; valid: "
                              + ", ".join(sel_mod.SELECTION_RULES))
    with pytest.raises(ValueError) as err:
        sel_mod.choose([], "max-val-accuracy")
    assert str(err.value) == "no grid point was scored"


def test_choose_keeps_the_first_of_exactly_equal_scores():
    scored = [{"id": 0, "val_accuracy": 0.5}, {"id": 1, "val_accuracy": 0.5 + 1e-9}]
    assert sel_mod.choose(scored, "max-val-accuracy")["id"] == 0


def test_selection_json_holds_the_header_hashes_grid_choices_scores_and_flips(tmp_path,
                                                                             monkeypatch):
    """With a validation share (0.5) that splits differently from the default 0.15."""
    cfg = validate_config({**CONFIG, "online": {"grid": {"eps": [1, 4]},
                                                "selection": {"val_size": 0.5, "seed": 1}}})
    run = prepare(cfg, tmp_path / "run", quiet_log)

    def fake_train_point(run, arm, point, train, val):
        acc = 0.5 if point is None else 0.25 * point["eps"]
        return {"arm": arm, "point": point, "val_accuracy": acc, "val_loss": 1.0 - acc,
                "history": [{"epoch": 1}], "train_wall_s": 2.0, "extra": 1}
    monkeypatch.setattr(sel_mod, "train_point", fake_train_point)
    out = select_online(run)
    train, val = split_imageset(run.train, test_size=0.5, seed=1)
    assert len(val) != len(split_imageset(run.train, test_size=0.15, seed=1)[1])
    points = [{"eps": e, "steps": 1, "fraction": None} for e in (1, 4)]
    assert out == {
        "rule": "max-val-accuracy", "rule_text": sel_mod.SELECTION_RULES["max-val-accuracy"],
        "val_size": 0.5, "seed": 1, "n_train": len(train), "n_val": len(val),
        "train_sha1": sel_mod.data_sha1(train), "val_sha1": sel_mod.data_sha1(val),
        "grid": {"eps": [1, 4], "steps": [1], "fraction": [None]},
        "choices": {"pgd-online": {"point": points[1], "val_accuracy": 1.0}},
        "scores": {"pgd-online": [{"point": p, "val_accuracy": 0.25 * p["eps"],
                                   "val_loss": 1.0 - 0.25 * p["eps"], "train_wall_s": 2.0}
                                  for p in points]},
        "flips": {"val_accuracy": 0.5, "history": [{"epoch": 1}], "train_wall_s": 2.0}}
    assert json.loads((run.out / "selection" / "selection.json").read_text()) == out
    (run.out / "selection" / "selection.json").unlink()
    partial = selection_so_far(run)
    assert partial is not None and (partial["n_train"], partial["n_val"]) == (len(train), len(val))


def test_scored_point_reads_a_finished_point_and_saves_a_new_one(tmp_path, monkeypatch):
    run = prepare(validate_config(CONFIG), tmp_path / "run", quiet_log)
    logged: list[str] = []
    run.log = logged.append
    result = {"arm": "none", "val_accuracy": 0.75}
    monkeypatch.setattr(sel_mod, "train_point", lambda *a: result)
    train, val = split_imageset(run.train, test_size=0.25, seed=0)
    assert sel_mod.scored_point(run, "none", None, train, val) == result
    path = run.out / "selection" / "none" / "flips.json"
    assert json.loads(path.read_text()) == result
    assert logged == [f"[selection] none flips: training on {len(train)} images, validating on "
                      f"{len(val)}", "[selection] none flips: validation accuracy 0.7500"]
    path.write_text(json.dumps({"read": "back"}))
    assert sel_mod.scored_point(run, "none", None, train, val) == {"read": "back"}


class _Spies:
    """Stand-ins for build_model / train_classifier / predict_logits in train_point: they record
    their arguments; training calls the transform over two epochs of batches; the model scores
    the validation images right, wrong, right, ... (one call per record)."""

    def __init__(self, monkeypatch, n_classes: int) -> None:
        self.built: list[tuple] = []
        self.trained: dict = {}
        self.gens: list = []
        self.scores = 0
        self.n_classes = n_classes
        monkeypatch.setattr(sel_mod, "build_model", self.build)
        monkeypatch.setattr(sel_mod, "train_classifier", self.train)
        monkeypatch.setattr(sel_mod, "predict_logits", self.predict)

    def build(self, *args, **kwargs):
        self.built.append((args, kwargs))
        return torch.nn.Linear(1, 1)

    def train(self, model, data, **kwargs):
        self.trained = {"data": data, **kwargs}
        gen = torch.Generator().manual_seed(0)
        for _ in range(3 * kwargs["transform"].steps_per_epoch):
            kwargs["transform"](data.images[:1], data.labels[:1], gen)
        return [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]

    def predict(self, model, images):
        self.scores += 1
        return torch.eye(self.n_classes)[self.labels] * (1 if self.scores % 2 else -1)


@pytest.mark.parametrize("n_train, steps_per_epoch", [(17, 2), (32, 2)])
def test_train_point_builds_trains_and_scores_as_configured(tmp_path, monkeypatch, n_train,
                                                            steps_per_epoch):
    cfg = validate_config({**CONFIG, "train": {"epochs": 3, "batch_size": 16, "lr": 0.01,
                                               "weight_decay": 0.001}})
    run = prepare(cfg, tmp_path / "run", quiet_log)
    run.cfg = cfg.model_copy(update={"weights": "w.pt", "freeze_backbone": True})
    spies = _Spies(monkeypatch, len(run.train.classes))
    train = run.train.subset([i % len(run.train) for i in range(n_train)])
    val = run.train.subset([int((run.train.labels == c).nonzero()[0]) for c in range(3)])
    spies.labels = val.labels
    seen: list = []
    monkeypatch.setattr(sel_mod, "batch_transform", lambda arm, opts, k: (
        seen.append((arm, opts, k)) or (lambda x, y, gen: (spies.gens.append(gen) or (x, y)))))
    point = {"eps": 4, "steps": 1, "fraction": None}
    out = sel_mod.train_point(run, "pgd-online", point, train, val)
    assert spies.built == [((cfg.arch, len(train.classes)),
                            {"weights": "w.pt", "freeze_backbone": True})]
    t = spies.trained
    assert (t["data"], t["epochs"], t["batch_size"], t["lr"], t["weight_decay"], t["seed"],
            t["progress"], t["desc"]) == (train, 3, 16, 0.01, 0.001, 0, False,
                                          "select pgd-online eps4-steps1-fracall")
    assert t["transform"].steps_per_epoch == steps_per_epoch
    assert t["transform"].calls == 3 * steps_per_epoch
    assert t["adversarial"].describe()["eps"] == 4.0
    assert seen == [("pgd-online", run.cfg.arm_options, len(train.classes))]
    assert all(g is not None for g in spies.gens) and len(spies.gens) == 3 * steps_per_epoch
    assert spies.scores == 3  # at the start of epochs 2 and 3, and after training
    assert (out["arm"], out["point"], out["val_accuracy"]) == ("pgd-online", point, 1.0)
    assert out["val_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.eye(len(train.classes))[val.labels], val.labels)))
    assert [h["val_accuracy"] for h in out["history"]] == [1.0, 0.0, 1.0]
    assert "train_wall_s" in out


def test_selection_so_far_header_counts_the_validation_split_of_the_configured_seed(tmp_path):
    """The partial header's ``n_train`` / ``n_val`` come from the config's validation split
    (``online.selection.seed``), not another seed's: with patients of 1 to 4 images, the split's
    sizes depend on the seed."""
    from mladv.data import ImageSet
    from mladv.experiment.state import FLIPS_KEYS

    sizes = [1, 4, 2, 3, 1, 4, 1, 2, 3, 1, 4, 2] * 2
    groups = [f"p{i}" for i, n in enumerate(sizes) for _ in range(n)]
    labels = torch.tensor([int(g[1:]) % 3 for g in groups])
    n = len(groups)
    data = ImageSet(torch.rand(n, 1, 4, 4), labels, ["a", "b", "c"], [""] * n, groups)
    cfg = validate_config({**CONFIG, "online": {"grid": {"eps": [1]},
                                                "selection": {"val_size": 0.25, "seed": 5}}})
    counts = {s: len(split_imageset(data, test_size=0.25, seed=s)[1]) for s in (0, 5)}
    assert counts[0] != counts[5]  # the data make the seed visible
    (tmp_path / "selection" / "none").mkdir(parents=True)
    (tmp_path / "selection" / "none" / "flips.json").write_text(
        json.dumps({k: 0.5 if k == "val_accuracy" else [] for k in FLIPS_KEYS}))
    view = SimpleNamespace(cfg=cfg, train=data, out=tmp_path)
    got = selection_so_far(view)
    assert (got["seed"], got["n_val"], got["n_train"]) == (5, counts[5], n - counts[5])
