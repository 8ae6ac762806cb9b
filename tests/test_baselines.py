"""mladv's own FGSM / PGD / MI-FGSM: equal to torchattacks (the test-only reference) pixel for
pixel on single-label models, the pluggable objective, bounds, seeds, mode, and the settings
record that committed runs' reuse keys are made of."""
from __future__ import annotations

import contextlib
import io

import pytest
import torch
import torchattacks
from torch import Tensor, nn

from mladv.attacks import fgsm, make_attack, mifgsm, pgd
from mladv.attacks.baselines import TorchAttack
from mladv.fingerprint import attack_fingerprint, attack_settings

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 8 / 255


def small_cnn(channels: int, seed: int = 0) -> nn.Module:
    """A 3-class CNN with BatchNorm (its mode matters), seeded, in eval mode."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 3))
    return model.eval()


def batch(channels: int) -> tuple[Tensor, Tensor, Tensor]:
    """6 images of 12 px in [0, 1] (some pixels at 0 and 1, so clipping matters), labels and
    targets (the next class)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, channels, 12, 12, generator=g)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return x, y, (y + 1) % 3


def theirs(name: str, model: nn.Module) -> torchattacks.Attack:
    """torchattacks' attack with the settings of mladv's defaults at EPS (PGD: step eps/4,
    10 steps, random start; MI: step eps/10, 10 steps, decay 1)."""
    if name == "fgsm":
        return torchattacks.FGSM(model, eps=EPS)
    if name == "pgd":
        return torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=10, random_start=True)
    return torchattacks.MIFGSM(model, eps=EPS, alpha=EPS / 10, steps=10, decay=1.0)


OURS = {"fgsm": fgsm, "pgd": pgd, "mifgsm": mifgsm}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ["fgsm", "pgd", "mifgsm"])
def test_untargeted_equals_torchattacks_pixel_for_pixel(name, channels):
    """Same operations in the same order: bit-identical images (PGD: torchattacks draws its
    random start from the global generator, seeded here with the attack's seed)."""
    model = small_cnn(channels)
    x, y, _ = batch(channels)
    ours = OURS[name](model, eps=EPS, seed=7)(x, y)
    torch.manual_seed(7)
    ref = theirs(name, model)(x, y)
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, x)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ["fgsm", "pgd", "mifgsm"])
def test_targeted_equals_torchattacks_pixel_for_pixel(name, channels):
    """Targeted: both descend the cross-entropy of the given target labels."""
    model = small_cnn(channels)
    x, y, t = batch(channels)
    ours = OURS[name](model, eps=EPS, targeted=True, seed=7)(x, y, target_labels=t)
    ref_atk = theirs(name, model)
    with contextlib.redirect_stdout(io.StringIO()):  # torchattacks prints the mode change
        ref_atk.set_mode_targeted_by_function(lambda _x, _y: t)
    torch.manual_seed(7)
    assert torch.equal(ours, ref_atk(x, y))


def test_targeted_without_targets_aims_at_the_seeded_other_class():
    """No target_labels: target = (y + U{1, K-1}) mod K, drawn from a generator seeded with
    ``seed`` (the base class's rule), i.e. torchattacks with those targets."""
    model = small_cnn(1)
    x, y, _ = batch(1)
    offset = torch.randint(1, 3, y.shape, generator=torch.Generator().manual_seed(4))
    targets = (y + offset) % 3
    ref = torchattacks.FGSM(model, eps=EPS)
    with contextlib.redirect_stdout(io.StringIO()):
        ref.set_mode_targeted_by_function(lambda _x, _y: targets)
    assert torch.equal(fgsm(model, eps=EPS, targeted=True, seed=4)(x, y), ref(x, y))


@pytest.mark.parametrize("name", ["fgsm", "pgd", "mifgsm"])
def test_output_stays_within_eps_of_the_input_and_in_0_1(name):
    """||x_adv - x||_inf <= eps (up to float32 rounding of x + delta: 1e-7) and 0 <= x_adv <= 1
    exactly, on images with pixels at 0 and 1."""
    model = small_cnn(1)
    x, y, _ = batch(1)
    adv = OURS[name](model, eps=4 / 255, seed=0)(x, y)
    assert (adv - x).abs().max().item() <= 4 / 255 + 1e-7
    assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0


def test_pgd_with_a_seed_gives_the_same_images_and_leaves_the_global_generator_alone():
    model = small_cnn(1)
    x, y, _ = batch(1)
    state = torch.get_rng_state()
    first = pgd(model, steps=2, seed=3)(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(pgd(model, steps=2, seed=3)(x, y), first)
    assert not torch.equal(pgd(model, steps=2, seed=4)(x, y), first)


def test_the_model_is_attacked_in_eval_mode_and_its_training_mode_is_restored():
    """BatchNorm's running statistics must not move under attack; the caller's mode returns."""
    model = small_cnn(1).train()
    before = model[1].running_mean.clone()
    x, y, _ = batch(1)
    pgd(model, steps=2, seed=0)(x, y)
    assert model.training and torch.equal(model[1].running_mean, before)


def test_the_training_mode_is_restored_when_the_objective_raises():
    model = small_cnn(1).train()
    x, y, _ = batch(1)

    def broken(logits: Tensor, labels: Tensor) -> Tensor:
        raise RuntimeError("objective failed")
    with pytest.raises(RuntimeError, match="objective failed"):
        mifgsm(model, objective=broken)(x, y)
    assert model.training


def linear_model() -> tuple[nn.Module, Tensor]:
    """``z = W flatten(x) + b`` for 1 x 2 x 2 images and 3 classes, with W's row 0 =
    [1, -2, 3, -4] (the gradient of z_0 w.r.t. x)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.5, 0.5, 0.5, 0.5],
                                            [-1.0, 0.0, 1.0, 0.0]]))
        model[1].bias.zero_()
    return model.eval(), torch.tensor([1.0, -1.0, 1.0, -1.0]).view(1, 1, 2, 2)


def logit_0(logits: Tensor, labels: Tensor) -> Tensor:
    """An objective: the sum of class 0's logits (ascending it raises that logit)."""
    return logits[:, 0].sum()


def test_a_custom_objective_is_the_one_ascended():
    """FGSM on ``sum z_0``: x + eps * sign(W_0) = x + eps * [+, -, +, -], clipped; class 0's
    logit then rises by eps * |W_0|_1 = 10 eps for an interior image."""
    model, sign_w0 = linear_model()
    x = torch.full((2, 1, 2, 2), 0.5)
    adv = fgsm(model, eps=EPS, objective=logit_0)(x, torch.tensor([1, 2]))
    assert torch.equal(adv, (x + EPS * sign_w0).clamp(0, 1))
    rise = model(adv)[:, 0] - model(x)[:, 0]
    assert torch.allclose(rise, torch.full((2,), 10 * EPS), atol=1e-6)


def test_targeted_mode_descends_the_objective_on_the_target_labels():
    """Targeted: the objective sees the target labels and is descended: x - eps * sign(W_0)."""
    model, sign_w0 = linear_model()
    x = torch.full((2, 1, 2, 2), 0.5)
    seen: list[Tensor] = []

    def recorded(logits: Tensor, labels: Tensor) -> Tensor:
        seen.append(labels.clone())
        return logits[:, 0].sum()
    adv = fgsm(model, eps=EPS, targeted=True, objective=recorded)(
        x, torch.tensor([1, 2]), target_labels=torch.tensor([0, 1]))
    assert torch.equal(adv, (x - EPS * sign_w0).clamp(0, 1))
    assert [s.tolist() for s in seen] == [[0, 1]]


def test_mifgsm_keeps_an_image_with_zero_gradient_unchanged_not_nan():
    """A constant model has a zero gradient: 0 / mean|0| would be NaN; the image stays put."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
    x = torch.rand(2, 1, 2, 2)
    assert torch.equal(mifgsm(model.eval(), steps=3)(x, torch.tensor([0, 1])), x)


def test_a_non_callable_objective_is_one_line_naming_it():
    with pytest.raises(ValueError, match=r"^attack 'pgd': objective must be a callable"):
        make_attack("pgd", small_cnn(1), objective="bce")


# Literal settings and keys, obtained BEFORE mladv had its own loops (commit dab2523, the
# torchattacks wrapper) by running, on build_model("tiny_cnn", 3):
#   attack_settings(a), attack_fingerprint(a)  for each attack below
# Committed experiment / transfer run-states are keyed by them: they must not change.
BEFORE = {
    "fgsm": ({}, {"class": "TorchAttack", "channels_last": False, "eps": 0.03137254901960784,
                  "inner_options": {}, "name": "FGSM", "precision": "fp32",
                  "targeted": False}, "3eeb3e8aba26ad1d"),
    "pgd": ({}, {"class": "TorchAttack", "channels_last": False, "eps": 0.03137254901960784,
                 "inner_options": {"alpha": 0.00784313725490196, "steps": 10,
                                   "random_start": True},
                 "name": "PGD", "precision": "fp32", "targeted": False}, "ecd4aaf4f22ce14d"),
    "mifgsm": ({}, {"class": "TorchAttack", "channels_last": False, "eps": 0.03137254901960784,
                    "inner_options": {"alpha": 0.003137254901960784, "steps": 10, "decay": 1.0},
                    "name": "MIFGSM", "precision": "fp32", "targeted": False},
               "88c4a711b2e230ac"),
    "pgd-seeded": ({"eps": 2 / 255, "steps": 3, "seed": 0},
                   {"class": "TorchAttack", "channels_last": False, "eps": 0.00784313725490196,
                    "inner_options": {"alpha": 0.00196078431372549, "steps": 3,
                                      "random_start": True},
                    "name": "PGD", "precision": "fp32", "targeted": False}, "0fe33d451775c8b4"),
    "pgd-targeted": ({"alpha": 1 / 255, "random_start": False, "targeted": True, "seed": 5},
                     {"class": "TorchAttack", "channels_last": False,
                      "eps": 0.03137254901960784,
                      "inner_options": {"alpha": 0.00392156862745098, "steps": 10,
                                        "random_start": False},
                      "name": "PGD", "precision": "fp32", "targeted": True}, "6297d03605c05ebf"),
    "mifgsm-options": ({"steps": 2, "decay": 0.5, "seed": 1},
                       {"class": "TorchAttack", "channels_last": False,
                        "eps": 0.03137254901960784,
                        "inner_options": {"alpha": 0.01568627450980392, "steps": 2,
                                          "decay": 0.5},
                        "name": "MIFGSM", "precision": "fp32", "targeted": False},
                       "8b0b3df9905a4e89"),
    "fgsm-compute": ({"eps": 4 / 255, "targeted": True, "seed": 3, "precision": "bf16",
                      "channels_last": True},
                     {"class": "TorchAttack", "channels_last": True, "eps": 0.01568627450980392,
                      "inner_options": {}, "name": "FGSM", "precision": "bf16",
                      "targeted": True}, "5caa624670d9989d"),
}


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_settings_and_fingerprint_are_the_ones_recorded_before_the_own_loops(case):
    options, settings, fingerprint = BEFORE[case]
    attack = make_attack(case.split("-")[0], small_cnn(1), **options)
    assert attack_settings(attack) == settings
    assert attack_fingerprint(attack) == fingerprint


def test_a_custom_objective_is_part_of_the_settings():
    """Work crafted with another objective is another recipe: its name enters the key."""
    model = small_cnn(1)
    plain, custom = pgd(model), pgd(model, objective=logit_0)
    assert attack_settings(custom)["inner_options"]["objective"] == (
        f"{logit_0.__module__}.logit_0")
    assert attack_fingerprint(custom) != attack_fingerprint(plain)


def test_the_torchattacks_wrapper_is_kept_for_other_attacks_and_agrees():
    """TorchAttack (any torchattacks class, not used by mladv) around torchattacks.PGD, seeded,
    gives mladv's PGD images."""
    model = small_cnn(1)
    x, y, _ = batch(1)
    wrapped = TorchAttack(model, torchattacks.PGD, eps=EPS, alpha=EPS / 4, steps=3, seed=2)
    assert torch.equal(wrapped(x, y), pgd(model, steps=3, seed=2)(x, y))
