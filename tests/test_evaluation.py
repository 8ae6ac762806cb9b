"""One evaluation path: the experiment's robustness columns are ``mladv.robustness``'s, and each
column is what its definition says (ordering of PGD budgets, noise, the stratified subsets, a
hand computation), on one tiny trained model."""
from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchattacks

import mladv.experiment.measure as evaluation
from mladv.attacks import make_attack
from mladv.augment import craft_shard, derive_seed
from mladv.data import ImageSet
from mladv.experiment.config import validate_config
from mladv.experiment.state import Run
from mladv.logs import quiet_log
from mladv.robustness import (
    RobustnessOptions,
    acquisition_shift_accuracy,
    autoattack_accuracy,
    robustness_columns,
    robustness_report,
    robustness_subsets,
    stratified_order,
    stratified_subset,
)
from mladv.training import accuracy, predict_logits

pytestmark = pytest.mark.usefixtures("one_thread")

SEED = 5
CONFIG = {"name": "t", "data": "phantoms:12", "image_size": 24, "arch": "small_cnn", "seeds": 1,
          "arms": ["none"], "eps": 8.0, "pgd": {"steps": 3}, "mladv": {"steps": 2},
          "split": {"seed": 3},
          "robustness": {"max_images": 13, "batch_size": 5, "pgd_eps": [2, 8],
                         "autoattack_images": 4, "autoattack_square_queries": 10,
                         "noise_sigmas": [0.1, 0.5], "acquisition_shift": True}}
# CONFIG by hand, in the API's terms
OPTIONS = RobustnessOptions(attacks=("mladv", "pgd"), eps=8.0, pgd_eps=(2.0, 8.0),
                            pgd_options={"steps": 3}, mladv_options={"steps": 2},
                            max_images=13, subset_seed=3, autoattack_images=4,
                            square_queries=10, noise_sigmas=(0.1, 0.5), acquisition_shift=True,
                            batch_size=5)


@pytest.fixture(scope="module")
def test_split(tiny_trained) -> tuple[torch.nn.Module, ImageSet]:
    """The tiny model and 40 of its phantoms (every third: 14 / 13 / 13 of the 3 classes)."""
    model, images, labels = tiny_trained
    idx = list(range(0, images.shape[0], 3))
    data = ImageSet(images[idx], labels[idx], ["covid_like", "normal", "pneumonia_like"],
                    [f"p{i}" for i in idx], [f"g{i}" for i in idx])
    return model, data


def old_experiment_robustness(model, test: ImageSet, cfg, seed: int) -> dict[str, float]:
    """The experiment's robustness columns as ``experiment/measure.py`` computed them before
    they moved to ``mladv.robustness`` (commit aa06808), from the primitives: the reference the
    running experiments' numbers come from."""
    rob = cfg.robustness

    def order() -> list[int]:
        gen = torch.Generator().manual_seed(cfg.split.seed)
        per = [i[torch.randperm(len(i), generator=gen)].tolist()
               for i in (torch.nonzero(test.labels == c).flatten()
                         for c in range(len(test.classes)))]
        return [lst[i] for i in range(max(map(len, per))) for lst in per if i < len(lst)]

    robust = sorted(order()[:rob.max_images])
    sub = test.subset(robust)

    def attacked(name: str, eps: float, options: dict) -> float:
        atk = make_attack(name, model, **{**options, "eps": eps / 255, "seed": seed})
        adv = craft_shard(atk, sub.images, sub.labels, seed=seed, shard=0,
                          batch_size=rob.batch_size)
        return accuracy(model, adv, sub.labels)

    out = {f"acc_{n}": attacked(n, cfg.eps, cfg.mladv if n == "mladv" else cfg.pgd)
           for n in rob.attacks}
    out |= {f"acc_pgd_{e:g}": attacked("pgd", e, cfg.pgd) for e in rob.pgd_eps}
    aa = sorted([i for i in order() if i in set(robust)][:rob.autoattack_images])
    out[f"acc_autoattack_{rob.autoattack_eps:g}"] = autoattack_accuracy(
        model, test.images[aa], test.labels[aa], eps=rob.autoattack_eps / 255, seed=seed,
        batch_size=rob.batch_size, square_queries=rob.autoattack_square_queries)
    for i, sigma in enumerate(rob.noise_sigmas):
        gen = torch.Generator().manual_seed(derive_seed(seed, 1000 + i))
        noisy = (test.images + sigma * torch.randn(test.images.shape, generator=gen)).clamp(0, 1)
        out[f"acc_noise_{sigma:g}"] = accuracy(model, noisy, test.labels)
    shift = acquisition_shift_accuracy(model, test.images, test.labels,
                                       seed=derive_seed(seed, 2000))
    out |= {k: v for k, v in shift.items() if k != "shift_mean"}
    out["acc_shift_mean"] = shift["shift_mean"]
    out["acc_chain"] = attacked("chain", 8.0, cfg.chain)
    return out


@pytest.fixture(scope="module")
def experiment_columns(test_split) -> dict[str, float]:
    """``result["robust"]`` of the experiment for the tiny model on the 40 images."""
    model, test = test_split
    cfg = validate_config(CONFIG)
    run = Run(cfg, Path("unused"), torch.device("cpu"), test, test, {},
              evaluation.robust_subset(test, cfg), quiet_log)
    return evaluation.robustness(run, model, SEED)


# -- the API is the experiment -------------------------------------------------------------------
def test_the_experiment_columns_are_what_the_experiment_computed_before(test_split,
                                                                        experiment_columns):
    """The running experiments' numbers stay reproducible: same keys, same order, same values."""
    model, test = test_split
    old = old_experiment_robustness(model, test, validate_config(CONFIG), SEED)
    assert list(experiment_columns) == list(old)
    assert experiment_columns == old


def test_robustness_report_reproduces_the_experiment_exactly(test_split, experiment_columns):
    model, test = test_split
    report = robustness_report(model, test.images, test.labels, OPTIONS, seed=SEED)
    assert {k: report[k] for k in experiment_columns} == experiment_columns
    assert set(report) - set(experiment_columns) == {"n", "n_robust", "n_autoattack",
                                                     "accuracy", "ece", "sizes",
                                                     "gradient_masking"}
    assert (report["n"], report["n_robust"], report["n_autoattack"]) == (40, 13, 4)
    probs = torch.softmax(predict_logits(model, test.images), 1).numpy()  # as run.py does
    assert report["ece"] == evaluation.calibration(probs, test.labels, 15)
    assert report["accuracy"] == accuracy(model, test.images, test.labels)


def test_the_config_maps_onto_the_same_options():
    assert evaluation.robustness_options(validate_config(CONFIG)) == OPTIONS


# -- what each column must equal -----------------------------------------------------------------
def test_pgd_accuracy_falls_with_the_budget_on_the_same_images(test_split):
    """clean >= PGD at 2/255 >= PGD at 8/255 on the robustness subset, strictly clean > 8/255."""
    model, test = test_split
    opts = RobustnessOptions(attacks=(), pgd_eps=(2.0, 8.0), pgd_options={"steps": 5},
                             max_images=24, noise_sigmas=())
    cols = robustness_columns(model, test.images, test.labels, opts, seed=0)
    sub, _ = robustness_subsets(test.labels, opts, 3)
    clean = accuracy(model, test.images[sub], test.labels[sub])
    assert set(cols) == {"acc_pgd_2", "acc_pgd_8"}
    assert cols["acc_pgd_8"] <= cols["acc_pgd_2"] <= clean
    assert cols["acc_pgd_8"] < clean


def test_pgd_column_equals_torchattacks_pgd_run_by_hand(test_split, experiment_columns):
    """acc_pgd_2 = accuracy on torchattacks.PGD(eps 2/255, alpha eps/4, 3 steps, random start)
    over the 13 subset images in batches of 5, batch b under torch.manual_seed(derive_seed(5, 0,
    b)); the subset is stratified_subset(labels, 13, seed 3)."""
    model, test = test_split
    sub = stratified_subset(test.labels, 13, seed=3, n_classes=3)
    x, y = test.images[sub], test.labels[sub]
    pgd = torchattacks.PGD(model, eps=2 / 255, alpha=0.5 / 255, steps=3, random_start=True)
    adv = []
    for b, start in enumerate(range(0, 13, 5)):
        with torch.random.fork_rng(), contextlib.redirect_stdout(io.StringIO()):
            torch.manual_seed(derive_seed(SEED, 0, b))
            adv.append(pgd(x[start:start + 5], y[start:start + 5]))
    correct = int((model(torch.cat(adv)).argmax(1) == y).sum())
    assert 0 < correct < 13  # PGD at 2/255 fools some images, not all
    assert experiment_columns["acc_pgd_2"] == float(torch.tensor(float(correct)) / 13)  # float32


def test_noise_columns_equal_the_documented_draws_and_large_noise_changes_accuracy(
        test_split, experiment_columns):
    model, test = test_split
    for i, sigma in enumerate((0.1, 0.5)):
        gen = torch.Generator().manual_seed(derive_seed(SEED, 1000 + i))
        noisy = (test.images + sigma * torch.randn(test.images.shape, generator=gen)).clamp(0, 1)
        assert experiment_columns[f"acc_noise_{sigma:g}"] == accuracy(model, noisy, test.labels)
    assert experiment_columns["acc_noise_0.5"] != accuracy(model, test.images, test.labels)


def test_stratified_subset_class_counts_fill_the_classes_round_robin():
    """Classes of 10 / 6 / 2 images: 11 images take 2 rounds of 3 (6), the small class is spent,
    then rounds of 2 (4) and one more: 5 / 4 / 2; 9 images: 4 / 3 / 2; 3 images: 1 / 1 / 1."""
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 2)[torch.randperm(18)]
    for k, counts in ((11, {0: 5, 1: 4, 2: 2}), (9, {0: 4, 1: 3, 2: 2}), (3, {0: 1, 1: 1, 2: 1})):
        sub = stratified_subset(labels, k, seed=7)
        assert Counter(labels[sub].tolist()) == counts
        assert sub.tolist() == sorted(set(sub.tolist()))
    assert stratified_subset(labels, 40).tolist() == list(range(18))
    with pytest.raises(ValueError, match="subset size"):
        stratified_subset(labels, 0)


def test_stratified_order_deals_one_image_per_class_in_turn():
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0])
    order = stratified_order(labels, 3, seed=0)
    assert sorted(order) == list(range(7))
    assert [int(labels[i]) for i in order] == [0, 1, 2, 0, 1, 2, 0]


def test_the_experiment_subset_is_balanced_and_autoattack_images_lie_inside_it(test_split):
    """13 of 14 / 13 / 13 phantoms: 5 / 4 / 4; AutoAttack's 4 of them: 2 / 1 / 1, a subset
    of the 13; asking for more AutoAttack images than the subset holds gives the subset."""
    _, test = test_split
    sub, auto = robustness_subsets(test.labels, OPTIONS, 3)
    assert Counter(test.labels[sub].tolist()) == {0: 5, 1: 4, 2: 4}
    assert Counter(test.labels[auto].tolist()) == {0: 2, 1: 1, 2: 1}
    assert set(auto.tolist()) < set(sub.tolist())
    cfg = validate_config(CONFIG)
    assert evaluation.robust_subset(test, cfg) == sub.tolist()
    assert evaluation.autoattack_subset(test, cfg) == auto.tolist()
    wide = RobustnessOptions(max_images=13, subset_seed=3, autoattack_images=30)
    assert torch.equal(robustness_subsets(test.labels, wide, 3)[1], sub)


def test_bad_options_are_one_line_errors_naming_the_option(test_split):
    model, test = test_split
    for opts, name in ((RobustnessOptions(attacks=("fgsm",)), "attacks"),
                       (RobustnessOptions(pgd_eps=(0.0,)), "pgd_eps"),
                       (RobustnessOptions(noise_sigmas=(-1.0,)), "noise_sigmas"),
                       (RobustnessOptions(batch_size=0), "batch_size")):
        with pytest.raises(ValueError, match=name):
            robustness_columns(model, test.images, test.labels, opts)


# -- the config mapping and the helpers, value by value (issue 16 mutation testing) ------------
def test_every_non_default_setting_reaches_the_options():
    cfg = validate_config({**CONFIG, "eps": 4.0, "chain": {"rotation": 5.0},
                           "robustness": {**CONFIG["robustness"], "autoattack_eps": 4.0,
                                          "ece_bins": 10, "pgd_eps": [4]}})
    assert evaluation.robustness_options(cfg) == RobustnessOptions(
        attacks=("mladv", "pgd"), eps=4.0, pgd_eps=(4.0,), pgd_options={"steps": 3},
        mladv_options={"steps": 2}, chain_options={"rotation": 5.0}, max_images=13,
        subset_seed=3, autoattack_images=4, autoattack_eps=4.0, square_queries=10,
        noise_sigmas=(0.1, 0.5), acquisition_shift=True, ece_bins=10, batch_size=5)


def test_calibration_is_the_ece_with_the_given_bins():
    from mladv.robustness import expected_calibration_error

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, 3, generator=g, dtype=torch.float64), 1)
    labels = torch.randint(0, 3, (50,), generator=g)
    got = evaluation.calibration(probs.numpy(), labels, 4)
    assert got == expected_calibration_error(probs.float(), labels, 4)
    assert got != expected_calibration_error(probs.float(), labels, 15)


def test_own_model_accuracy_is_adversarial_accuracy_with_eps_in_1_255_units(monkeypatch):
    calls: list = []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return 0.25
    monkeypatch.setattr(evaluation, "adversarial_accuracy", spy)
    model = torch.nn.Identity()
    images = ImageSet(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), ["a", "b"], ["", ""],
                      ["p0", "p1"])
    assert evaluation.own_model_accuracy(model, images, "pgd", 2.0, 7, {"steps": 3, "eps": 9},
                                         5) == 0.25
    assert calls == [((model, images.images, images.labels, "pgd"),
                      {"steps": 3, "eps": 2.0 / 255, "seed": 7, "batch_size": 5})]
