import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mladv.attacks import MLAdv, pifgsm
from mladv.features import FeatureTap
from mladv.training import predict_logits

EPS = 8 / 255


def _success(model, x, y, x_adv, target=None):
    clean = predict_logits(model, x).argmax(1)
    adv = predict_logits(model, x_adv).argmax(1)
    ok = clean == y
    hit = adv != y if target is None else adv == target
    return hit[ok].float().mean().item()


@settings(max_examples=15, deadline=None)
@given(channels=st.integers(1, 4), h=st.integers(6, 20), w=st.integers(6, 20),
       n=st.integers(1, 4), eps=st.floats(0.005, 0.2), projection=st.booleans(),
       balance=st.sampled_from(["grad-norm", "literal"]))
def test_output_stays_in_unit_box_and_eps_ball(channels, h, w, n, eps, projection, balance):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(n, channels, h, w)
    y = torch.randint(0, 3, (n,))
    adv = MLAdv(model, eps=eps, steps=3, projection=projection, balance=balance, seed=0)(x, y)
    assert adv.shape == x.shape
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-6


def test_untargeted_success_is_at_least_90_percent(trained_model, phantoms32):
    test = phantoms32[1]
    adv = MLAdv(trained_model, eps=EPS, seed=0)(test.images, test.labels)
    assert _success(trained_model, test.images, test.labels, adv) >= 0.9


def test_targeted_mode_reaches_the_target_more_often_than_untargeted(trained_model, phantoms32):
    x, y = phantoms32[1].images, phantoms32[1].labels
    target = (y + 1) % 3
    eps = 2 / 255  # small budget, so reaching a given class is not automatic
    tgt = MLAdv(trained_model, eps=eps, targeted=True, seed=0)(x, y, target_labels=target)
    untgt = MLAdv(trained_model, eps=eps, seed=0)(x, y)
    hit = (predict_logits(trained_model, tgt).argmax(1) == target).float().mean()
    hit_untargeted = (predict_logits(trained_model, untgt).argmax(1) == target).float().mean()
    assert hit > hit_untargeted


def test_targeted_mode_without_targets_draws_other_classes(trained_model, phantoms32):
    x, y = phantoms32[1].images[:8], phantoms32[1].labels[:8]
    atk = MLAdv(trained_model, targeted=True, seed=3, steps=2)
    assert atk(x, y).shape == x.shape
    targets = atk.random_targets(y, 3, atk.generator())
    assert (targets != y).all()


def test_same_seed_gives_same_output(trained_model, phantoms32):
    x, y = phantoms32[1].images[:10], phantoms32[1].labels[:10]
    a = MLAdv(trained_model, seed=7, steps=3)(x, y)
    b = MLAdv(trained_model, seed=7, steps=3)(x, y)
    assert torch.equal(a, b)


def test_delta_is_zero_outside_the_mask(trained_model, phantoms32):
    x, y = phantoms32[1].images[:6], phantoms32[1].labels[:6]
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 4:28] = 1
    adv = MLAdv(trained_model, mask=mask, seed=0, steps=4)(x, y)
    delta = adv - x
    assert torch.count_nonzero(delta * (1 - mask)) == 0
    assert torch.count_nonzero(delta * mask) > 0


def test_one_channel_input_gives_one_channel_perturbation(trained_model, phantoms32):
    x, y = phantoms32[1].images[:4], phantoms32[1].labels[:4]
    assert x.shape[1] == 1
    assert MLAdv(trained_model, steps=2, seed=0)(x, y).shape == x.shape


def test_all_realism_terms_off_equals_torchattacks_pifgsm_on_three_channels(trained_model, phantoms32):
    import torchattacks

    x = phantoms32[1].images[:8].repeat(1, 3, 1, 1)
    y = phantoms32[1].labels[:8]
    ours = pifgsm(trained_model, eps=EPS, steps=10)(x, y)
    theirs = torchattacks.PIFGSM(trained_model, max_epsilon=EPS, num_iter_set=10)(x, y)
    assert (ours - theirs).abs().max() < 1e-5


def test_style_and_origin_features_come_from_the_same_forward_pass(trained_model, phantoms32):
    x, y = phantoms32[1].images[:4], phantoms32[1].labels[:4]
    calls = []
    handle = trained_model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        MLAdv(trained_model, steps=3, style="self", style_weight=1.0, origin_weight=1.0,
              refine=0, seed=0)(x, y)
    finally:
        handle.remove()
    assert len(calls) == 1 + 3  # one reference pass, then one per step


def test_hooks_are_released_after_the_attack(trained_model, phantoms32):
    x, y = phantoms32[1].images[:2], phantoms32[1].labels[:2]
    MLAdv(trained_model, steps=1, seed=0)(x, y)
    assert all(not m._forward_hooks for m in trained_model.modules())


def test_feature_tap_names_a_missing_layer(trained_model):
    with pytest.raises(ValueError, match="no module named"):
        FeatureTap(trained_model, ["net.does_not_exist"])


def test_style_tensor_of_wrong_shape_is_refused(trained_model, phantoms32):
    x, y = phantoms32[1].images[:2], phantoms32[1].labels[:2]
    with pytest.raises(ValueError, match="style images"):
        MLAdv(trained_model, steps=1)(x, y, style_images=torch.rand(1, 1, 8, 8))


def test_literal_reading_is_eq2_with_unit_weights(trained_model, phantoms32):
    x, y = phantoms32[1].images[:4], phantoms32[1].labels[:4]
    adv = MLAdv(trained_model, balance="literal", steps=2, seed=0)(x, y)
    assert (adv - x).abs().max() <= EPS + 1e-6
