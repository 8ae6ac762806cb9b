import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mladv.attacks import MLAdv, check_attack_options, pifgsm
from mladv.attacks.references import same_class_partners
from mladv.features import FeatureTap
from mladv.models import predict_logits

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


def test_targeted_mode_without_targets_attacks_towards_the_targets_it_drew(trained_model,
                                                                           phantoms32):
    x, y = phantoms32[1].images[:12], phantoms32[1].labels[:12]
    atk = MLAdv(trained_model, targeted=True, seed=3, steps=3)
    adv = atk(x, y)
    drawn = atk.last_targets
    assert drawn is not None and drawn.shape == y.shape and (drawn != y).all()
    # the output is the attack towards exactly these targets, not towards other ones
    given = MLAdv(trained_model, targeted=True, seed=3, steps=3)
    assert torch.equal(given(x, y, target_labels=drawn), adv)
    other = 3 - y - drawn  # the wrong class that was not drawn
    assert not torch.equal(given(x, y, target_labels=other), adv)
    assert MLAdv(trained_model, steps=1, refine=0).last_targets is None


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


def test_all_realism_terms_off_equals_torchattacks_pifgsm_on_three_channels(trained_model,
                                                                          phantoms32):
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


def _tiny_double_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()


def _eq2_by_hand(model, x, x_a, x_s, y, tau, origin_sum=True):
    """Eq. 2 with unit weights, written out from SPEC eqs. 4-7 (not with the library's losses):
    tau log p_y + sum_l ||G_l(x_s) - G_l(x_a)||^2 + ||D_O(x) - D_O(x_a)||^2 + TV(x_a)."""
    convs = [model[0], model[2]]

    def feats(inp):
        out = []
        handles = [c.register_forward_hook(lambda _m, _i, o: out.append(o)) for c in convs]
        logits = model(inp)
        for h in handles:
            h.remove()
        return logits, out

    def gram(f):
        flat = f.flatten(2)
        return flat @ flat.transpose(1, 2) / flat[0].numel()

    logits, fa = feats(x_a)
    with torch.no_grad():
        _, fs = feats(x_s)
        _, fx = feats(x)
    l_adv = torch.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    l_s = sum((gram(a) - gram(s)).pow(2).flatten(1).sum(1) for a, s in zip(fa, fs))
    sq = (fa[1] - fx[1]).pow(2).flatten(1)
    l_o = sq.sum(1) if origin_sum else sq.mean(1)
    l_d = ((x_a[..., :-1, :] - x_a[..., 1:, :]).pow(2).flatten(1).sum(1)
           + (x_a[..., :, :-1] - x_a[..., :, 1:]).pow(2).flatten(1).sum(1))
    return (tau * l_adv + l_s + l_o + l_d).sum()


def test_literal_balance_steps_along_the_sign_of_the_gradient_of_eq2():
    """Two steps of balance="literal" equal two hand-computed signed steps down eq. 2 (every
    term on, unit weights, eq. 5 summed as SPEC writes it); the origin term only has a gradient
    from step 2 on, so step 2 is where the sum matters."""
    model = _tiny_double_model()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 12, 12, generator=gen, dtype=torch.float64)
    x_s = torch.rand(3, 1, 12, 12, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    eps, tau = 8 / 255, 0.5
    atk = MLAdv(model, eps=eps, steps=2, beta=1.0, projection=False, refine=0, balance="literal",
                tau=tau, style_weight=1, origin_weight=1, detail_weight=1, detail_on="image",
                style=x_s, origin_layer="2", kernel_size=3, seed=0)
    assert atk.style_layers == ["0", "2"]
    adv = atk(x, y)

    def by_hand(origin_sum):
        x_t = x
        for _ in range(2):
            xg = x_t.clone().requires_grad_(True)
            g = torch.autograd.grad(_eq2_by_hand(model, x, xg, x_s, y, tau, origin_sum), xg)[0]
            x_t = (x + (x_t - atk.alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
        return x_t

    expected = by_hand(origin_sum=True)
    assert torch.allclose(adv, expected, atol=1e-12)
    # the check can tell: averaging eq. 5 (or dropping the realism terms) gives another result
    assert not torch.allclose(by_hand(origin_sum=False), expected, atol=1e-12)
    plain = MLAdv(model, eps=eps, steps=2, beta=1.0, projection=False, refine=0,
                  balance="literal", tau=tau, detail_weight=0, seed=0)(x, y)
    assert not torch.allclose(plain, expected, atol=1e-12)


def _tv_by_hand(x_a):
    """Eq. 6 per sample: squared differences to the lower and right neighbours."""
    return ((x_a[..., :-1, :] - x_a[..., 1:, :]).pow(2).flatten(1).sum(1)
            + (x_a[..., :, :-1] - x_a[..., :, 1:]).pow(2).flatten(1).sum(1))


def _unit(g):
    """``g / mean|g|`` per sample."""
    return g / g.abs().flatten(1).mean(1).view(-1, 1, 1, 1)


def test_grad_norm_steps_along_the_sign_of_the_normalised_mix_by_hand():
    """Two steps of the default balance equal two hand-computed signed steps down
    ``g = g_adv/|g_adv| + s g_d/|g_d|`` (``s = realism_scale``, ``|.|`` the per-sample mean
    absolute value, g_d the gradient of eq. 6 on the image)."""
    model = _tiny_double_model()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 12, 12, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    eps, scale = 8 / 255, 0.3
    atk = MLAdv(model, eps=eps, steps=2, beta=1.0, projection=False, refine=0,
                realism_scale=scale, detail_on="image", seed=0)
    x_t = x
    for _ in range(2):
        xg = x_t.clone().requires_grad_(True)
        l_adv = torch.log_softmax(model(xg), 1).gather(1, y[:, None]).sum()  # eq. 7
        g = (_unit(torch.autograd.grad(l_adv, xg)[0])
             + scale * _unit(torch.autograd.grad(_tv_by_hand(xg).sum(), xg)[0]))
        x_t = (x + (x_t - atk.alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    assert torch.allclose(atk(x, y), x_t, atol=1e-12)
    # the check can tell: another realism_scale gives another result
    other = MLAdv(model, eps=eps, steps=2, beta=1.0, projection=False, refine=0,
                  realism_scale=3.0, detail_on="image", seed=0)(x, y)
    assert not torch.allclose(other, x_t, atol=1e-12)


def test_tau_is_eq2s_weight_of_l_adv_and_realism_scale_the_weight_of_the_normalised_mix():
    model = _tiny_double_model()
    default = MLAdv(model)
    assert (default.tau, default.realism_scale) == (None, 0.1)
    literal = MLAdv(model, balance="literal")
    assert (literal.tau, literal.realism_scale) == (0.1, None)
    assert MLAdv(model, balance="literal", tau=0.5).tau == 0.5
    assert MLAdv(model, balance="calibrated", realism_scale=0.25).realism_scale == 0.25


@pytest.mark.parametrize("balance", ["grad-norm", "calibrated"])
def test_tau_given_with_a_normalised_balance_is_one_line_naming_realism_scale(balance):
    with pytest.raises(ValueError) as err:
        check_attack_options("mladv", {"tau": 0.3, "balance": balance})
    assert str(err.value) == (
        f"attack 'mladv': tau is eq. 2's weight of L_adv (balance='literal' only); with "
        f"balance='{balance}' the realism terms' weight relative to the adversarial one is "
        f"realism_scale (e.g. realism_scale=0.3)")


def test_realism_scale_given_with_literal_balance_is_one_line_naming_tau():
    with pytest.raises(ValueError) as err:
        check_attack_options("mladv", {"realism_scale": 0.3, "balance": "literal"})
    assert str(err.value) == ("attack 'mladv': realism_scale applies to balance 'grad-norm' / "
                              "'calibrated'; with balance='literal' eq. 2's weight of L_adv is tau")


def test_style_term_on_a_model_without_conv_layers_is_refused():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(ValueError, match="style_weight > 0 but the model has no Conv2d"):
        MLAdv(flat, style_weight=1.0)
    with pytest.raises(ValueError, match="no Conv2d layer to take origin"):
        MLAdv(flat, origin_weight=1.0)
    adv = MLAdv(flat, steps=2, seed=0)(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    assert adv.shape == (2, 1, 8, 8)  # the default (style off) runs on it
    assert MLAdv(flat, style_weight=1.0, style_layers=["1"]).style_layers == ["1"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_is_one_clear_error(dtype):
    model = _tiny_double_model().to(dtype)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"attacks need a float32 model: call model\.float\(\)"):
        MLAdv(model, steps=1)(x, y)
    with pytest.raises(ValueError, match="float32 model"):
        pifgsm(model, steps=1)(x, y)


def test_same_class_partner_comes_from_the_batch_and_a_lone_sample_styles_itself():
    labels = torch.tensor([0, 0, 1, 0, 2, 1])
    partner = same_class_partners(labels, torch.Generator().manual_seed(0))
    assert torch.equal(labels[partner], labels)
    assert partner[4] == 4  # alone in its class in this batch
    others = torch.tensor([0, 1, 2, 3, 5])
    assert (partner[others] != others).all()
