"""Behaviour of MLAdv's options (balance, layers, refine), of the exploratory variants of
``docs/method.md`` (MLAdvVariant: hinge, gating, DI, TI, momentum, schedules, two-phase, keep) and
of MLAdv's defaults on a tiny model trained inside the test."""
from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from mladv.attacks import MLAdv, MLAdvVariant, pifgsm
from mladv.attacks.mladv import logit_margin
from mladv.attacks.variants import (
    depthwise,
    gaussian_kernel,
    margin_loss,
    schedule_factor,
    transform,
)
from mladv.data import make_phantoms
from mladv.features import conv_layers
from mladv.losses import detail_loss
from mladv.metrics import total_variation
from mladv.models import build_model
from mladv.training import train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 8 / 255
# the first reading (SPEC "Measured"): every term of eq. 2 on, detail on the image, no fallback
FULL = dict(style_weight=1.0, origin_weight=1.0, detail_weight=1.0, detail_on="image",
            realism_scale=0.5, kernel_size=3, refine=0)
# the same terms combined as eq. 2 is written, tau = 0.5 weighing L_adv
FULL_LITERAL = dict({k: v for k, v in FULL.items() if k != "realism_scale"}, balance="literal",
                    tau=0.5)


@pytest.fixture(scope="module")
def tiny(one_thread):
    """A small CNN trained inside the tests (a few seconds) on 16 px phantoms, and up to 8
    images per class that it classifies correctly."""
    data = make_phantoms(30, 16, seed=3)
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    train_classifier(model, data, epochs=8, batch_size=16, lr=3e-3, seed=0, progress=False)
    model.eval()
    with torch.no_grad():
        ok = model(data.images).argmax(1) == data.labels
    keep = torch.cat([torch.nonzero(ok & (data.labels == c)).flatten()[:8] for c in range(3)])
    assert len(keep) >= 16, "the small model must classify some images correctly"
    return model, data.images[keep], data.labels[keep]


class PassCounter:
    """Counts backward passes through ``model`` independently of the attack: a tensor hook on
    the output of its first convolution (every gradient through the model to the input passes
    it) adds the share of the batch each pass covers."""

    def __init__(self, model: nn.Module, batch: int) -> None:
        self.first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        self.batch, self.passes = batch, 0.0

    def _hook(self, _module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        if out.requires_grad:
            out.register_hook(self._count)

    def _count(self, grad: torch.Tensor) -> None:
        self.passes += grad.shape[0] / self.batch

    def __enter__(self) -> PassCounter:
        self.handle = self.first.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def fooled(model: nn.Module, adv: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(adv).argmax(1) != labels).float().mean().item()


def test_defaults_attack_a_tiny_model_at_99_percent(tiny):
    model, x, y = tiny
    adv = MLAdv(model, seed=0)(x, y)
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert fooled(model, adv, y) >= 0.99


def test_pifgsm_still_matches_torchattacks(tiny):
    model, x, y = tiny
    x3, y3 = x[:6].expand(-1, 3, -1, -1).contiguous(), y[:6]
    ours = pifgsm(model, eps=EPS, seed=0)(x3, y3)
    ref = torchattacks.PIFGSM(model, max_epsilon=EPS)(x3, y3)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_realism_off_with_other_defaults_is_pifgsm(tiny):
    model, x, y = tiny
    atk = MLAdv(model, seed=0, style_weight=0, origin_weight=0, detail_weight=0, kernel_size=3,
                refine=0)
    assert torch.equal(atk(x, y), pifgsm(model, eps=EPS, seed=0)(x, y))


@pytest.mark.parametrize("opts", [{}, FULL, dict(FULL, balance="calibrated"), FULL_LITERAL])
def test_variant_with_neutral_knobs_is_mladv_bit_for_bit(tiny, opts):
    model, x, y = tiny
    ours = MLAdvVariant(model, seed=0, **opts)(x, y)
    assert torch.equal(ours, MLAdv(model, seed=0, **opts)(x, y))


def test_default_noise_is_smoother_than_pifgsm_on_the_same_model(tiny):
    """What sets the default apart from PI-FGSM + the PGD fallback: the detail term on delta
    (and the 5 x 5 kernel) give noise of clearly lower total variation."""
    model, x, y = tiny
    ours = MLAdv(model, seed=0)(x, y)
    pi = pifgsm(model, eps=EPS, seed=0)(x, y)
    assert total_variation(ours - x) < 0.9 * total_variation(pi - x)
    no_detail = MLAdv(model, seed=0, detail_weight=0)(x, y)
    assert total_variation(ours - x) < total_variation(no_detail - x)


def test_calibrated_needs_one_backward_per_step_after_calibration(tiny):
    model, x, y = tiny
    steps = 6
    cal = MLAdv(model, steps=steps, balance="calibrated", seed=0, **FULL)
    with PassCounter(model, len(x)) as counted:
        cal(x, y)
    # step 1: adversarial term only; step 2: one pass per model term (adv, style, origin);
    # then one pass per step
    assert counted.passes == 1 + 3 + (steps - 2) == cal.backward_passes
    gn = MLAdv(model, steps=steps, balance="grad-norm", seed=0, **FULL)
    with PassCounter(model, len(x)) as counted:
        gn(x, y)
    assert counted.passes == 3 * steps == gn.backward_passes


def test_default_needs_one_backward_pass_per_step_counted_by_a_hook(tiny):
    """The README's "one backward pass per step": counted on the model, not by the attack."""
    model, x, y = tiny
    for refine in (0, 10):
        atk = MLAdv(model, seed=0, refine=refine)
        with PassCounter(model, len(x)) as counted:
            atk(x, y)
        assert counted.passes == pytest.approx(atk.backward_passes)
        assert atk.steps <= counted.passes <= atk.steps + (refine > 0)


def test_calibrated_factors_reproduce_grad_norm_mix(tiny):
    """With the factors measured at a point, the one-pass gradient there equals the per-term
    normalised mix (eq.: g_adv + s * sum_k |g_adv|/|g_k| g_k, divided by |g_adv|, s the
    realism_scale)."""
    model, x, y = tiny
    atk = MLAdv(model, balance="calibrated", style="self", seed=0, **FULL)
    grams, origin = atk._references(x, x)
    xt = (x + EPS * torch.randn_like(x).sign()).clamp(0, 1).requires_grad_(True)
    _, l_adv, terms = atk._terms(xt, x, y, None, grams, origin, True, None)
    g_mix, factors = atk._combine(xt, l_adv, terms, None, None)
    assert factors is not None and set(factors) == {"style", "origin", "detail"}
    _, l_adv, terms = atk._terms(xt, x, y, None, grams, origin, True, None)
    g_one, _ = atk._combine(xt, l_adv, terms, None, factors)
    scale = g_one.abs().flatten(1).mean(1) / g_mix.abs().flatten(1).mean(1)
    assert torch.allclose(g_one, g_mix * scale.view(-1, 1, 1, 1), rtol=1e-3, atol=1e-7)


def test_margin_loss_is_flat_once_fooled_by_kappa():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 5.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    assert torch.allclose(logit_margin(logits, y), torch.tensor([2.0, -5.0]))
    loss = margin_loss(logits, y, None, kappa=2.0)
    assert torch.allclose(loss, torch.tensor([2.0, -2.0]))
    g = torch.autograd.grad(loss.sum(), logits)[0]
    assert g[1].abs().sum() == 0 and g[0].abs().sum() > 0
    targeted = logit_margin(logits, y, torch.tensor([1, 1]))  # max_{j!=t} z_j - z_t
    assert torch.allclose(targeted, torch.tensor([2.0, -4.0]))


def test_after_success_gates_terms_per_sample(tiny):
    model, x, y = tiny
    atk = MLAdvVariant(model, realism="after-success", style="self", seed=0, **FULL)
    grams, origin = atk._references(x, x)
    xt = (x + EPS * torch.randn_like(x).sign()).clamp(0, 1).requires_grad_(True)
    gate = torch.zeros(len(x))
    gate[0] = 1.0
    _, l_adv, terms = atk._terms(xt, x, y, None, grams, origin, True, None)
    g, _ = atk._combine(xt, l_adv, terms, (1.0 - gate, gate), None)
    g_adv = torch.autograd.grad(atk._terms(xt, x, y, None, grams, origin, True, None)[1].sum(),
                                xt)[0]
    # not yet fooled: the adversarial direction alone; fooled: realism alone
    assert torch.equal(g[1:].sign(), g_adv[1:].sign())
    g_det = torch.autograd.grad(detail_loss(xt).sum(), xt)[0]
    assert not torch.equal(g[0].sign(), g_adv[0].sign())
    assert (g[0] * g_det[0]).sum() > 0  # the realism mix pulls along the detail gradient


def _double_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()


def _grads_by_hand(model, x_t, y):
    """The gradients of eq. 7 (log p_y) and of eq. 6 (TV of the image) at ``x_t``, and which
    samples ``x_t`` fools (``N`` bool)."""
    xg = x_t.clone().requires_grad_(True)
    logits = model(xg)
    g_adv = torch.autograd.grad(torch.log_softmax(logits, 1).gather(1, y[:, None]).sum(), xg)[0]
    tv = ((xg[..., :-1, :] - xg[..., 1:, :]).pow(2).sum()
          + (xg[..., :, :-1] - xg[..., :, 1:]).pow(2).sum())
    return g_adv, torch.autograd.grad(tv, xg)[0], logits.argmax(1) != y


def _unit(g):
    return g / g.abs().flatten(1).mean(1).view(-1, 1, 1, 1)


def test_after_success_gate_steps_each_sample_along_one_term_by_hand():
    """Through MLAdv's loop and the variant's weight hook: per step, a sample the iterate
    fools steps down the detail gradient alone, the others down the adversarial one alone."""
    model = _double_model()
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.cat([pred[:2], (pred[2:] + 1) % 3])  # samples 2, 3 fooled from the start
    eps = 8 / 255
    atk = MLAdvVariant(model, eps=eps, steps=3, beta=1.5, projection=False, refine=0,
                       realism="after-success", kappa=0.0, realism_scale=0.3,
                       detail_on="image", seed=0)
    x_t = x
    for _ in range(3):
        g_adv, g_d, fools = _grads_by_hand(model, x_t, y)
        g = torch.where(fools.view(-1, 1, 1, 1), g_d, g_adv)
        x_t = (x + (x_t - atk.alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    assert torch.equal(atk(x, y), x_t)
    # the check can tell: without the gate every sample mixes both terms
    atk.realism = "always"
    assert not torch.equal(atk(x, y), x_t)


def test_momentum_steps_along_the_sign_of_the_accumulated_unit_gradients_by_hand():
    """MI through MLAdv's loop and the variant's direction hook, realism off:
    ``m_t = mu m_{t-1} + u_t / mean|u_t|`` with ``u_t = g_adv / mean|g_adv|``; steps along
    sign(m_t)."""
    model = _double_model()
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    eps, mu = 8 / 255, 0.5
    atk = MLAdvVariant(model, eps=eps, steps=3, beta=1.5, projection=False, refine=0,
                       momentum=mu, detail_weight=0, seed=0)
    x_t, m = x, torch.zeros_like(x)
    for _ in range(3):
        m = mu * m + _unit(_unit(_grads_by_hand(model, x_t, y)[0]))
        x_t = (x + (x_t - atk.alpha * m.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    assert torch.equal(atk(x, y), x_t)
    atk.momentum = 0.0  # the check can tell: without momentum, another result
    assert not torch.equal(atk(x, y), x_t)


def test_detail_on_delta_is_zero_at_the_clean_image(tiny):
    model, x, y = tiny
    for on, zero in (("delta", True), ("image", False)):
        atk = MLAdv(model, detail_on=on, style_weight=0, origin_weight=0, seed=0)
        xt = x.clone().requires_grad_(True)
        _, _, terms = atk._terms(xt, x, y, None, [], [], True, None)
        assert bool(terms[0][1].abs().sum() == 0) is zero


def test_momentum_accumulates_normalised_gradients(tiny):
    model, x, _ = tiny
    atk = MLAdvVariant(model, momentum=0.5, projection=False, seed=0)
    g1, g2 = torch.randn_like(x), torch.randn_like(x)
    _, v1 = atk._boost(g1, torch.zeros_like(x))
    step, v2 = atk._boost(g2, v1)
    unit = lambda g: g / g.abs().flatten(1).mean(1).view(-1, 1, 1, 1)  # noqa: E731
    assert torch.allclose(v2, 0.5 * unit(g1) + unit(g2)) and torch.equal(step, v2)
    x2, _ = atk._update(x, x, step, torch.zeros_like(x), atk.kernel, None, atk.alpha, atk.gamma)
    assert torch.equal(x2, (x - (atk.alpha * v2.sign())).clamp(x - EPS, x + EPS).clamp(0, 1))


def test_input_diversity_transform_keeps_size_and_is_seeded(tiny):
    model, x, y = tiny
    atk = MLAdvVariant(model, diversity=1.0, diversity_scale=0.75, seed=0)
    gen = torch.Generator().manual_seed(0)
    params = [atk._diverse(gen, 16) for _ in range(20)]
    assert all(p is not None and p.resize is not None and 12 <= p.resize[0] < 16 and not p.flip
               for p in params)
    out = transform(x, params[0])
    assert out.shape == x.shape and out.sum() < x.sum()  # shrunk, zero-padded
    assert MLAdvVariant(model, diversity=0.0)._diverse(gen, 16) is None
    flip = MLAdvVariant(model, flip=1.0)._diverse(gen, 16)
    assert flip is not None and flip.resize is None and flip.flip
    assert torch.equal(transform(x, flip), x.flip(-1))
    a, b = atk(x, y), atk(x, y)
    assert torch.equal(a, b) and (a - x).abs().max() <= EPS + 1e-6


def test_smoothing_gives_smoother_noise(tiny):
    model, x, y = tiny
    k = gaussian_kernel(5)
    assert torch.isclose(k.sum(), torch.tensor(1.0)) and torch.equal(k, k.flip(0).flip(1))
    assert depthwise(x, gaussian_kernel(1)).allclose(x)
    opts = dict(style_weight=0, origin_weight=0, detail_weight=0, projection=False, refine=0,
                seed=0)
    rough = MLAdvVariant(model, **opts)(x, y)
    smooth = MLAdvVariant(model, smoothing=7, **opts)(x, y)
    assert total_variation(smooth - x) < total_variation(rough - x)


def test_schedules_decay_from_one():
    assert [schedule_factor("constant", t, 4) for t in range(4)] == [1.0] * 4
    atk = MLAdvVariant(torch.nn.Conv2d(1, 1, 1), schedule="linear")
    assert atk.gamma_schedule == "linear"
    assert MLAdvVariant(torch.nn.Conv2d(1, 1, 1), gamma_schedule="cosine").schedule == "constant"
    assert [schedule_factor("linear", t, 4) for t in range(4)] == [1.0, 0.75, 0.5, 0.25]
    cos = [schedule_factor("cosine", t, 10) for t in range(10)]
    assert cos[0] == 1.0 and all(a >= b for a, b in zip(cos, cos[1:])) and min(cos) >= 0.1


def test_two_phase_counts_passes_and_uses_only_cross_entropy_after(tiny):
    model, x, y = tiny
    atk = MLAdvVariant(model, pre_steps=3, steps=4, seed=0, **FULL)
    with PassCounter(model, len(x)) as counted:
        adv = atk(x, y)
    assert counted.passes == 3 * 3 + 4  # phase 1: adv, style, origin; phase 2: CE only
    assert atk.backward_passes == counted.passes
    assert (adv - x).abs().max() <= EPS + 1e-6


def test_keep_last_adversarial_never_loses_a_fooled_sample(tiny):
    model, x, y = tiny
    opts = dict(realism="after-success", kappa=0.0, seed=0, **dict(FULL, realism_scale=5.0))
    last = MLAdvVariant(model, keep="last", **opts)(x, y)
    kept = MLAdvVariant(model, keep="last-adversarial", **opts)(x, y)
    assert fooled(model, kept, y) >= fooled(model, last, y)
    assert (kept - x).abs().max() <= EPS + 1e-6


def test_refine_finishes_what_the_steps_missed_and_is_free_otherwise(tiny):
    model, x, y = tiny
    weak = dict(style_weight=0, origin_weight=0, detail_weight=0, steps=1, beta=0.5, refine=0,
                seed=0)
    base = MLAdv(model, **weak)
    refined = MLAdv(model, **dict(weak, refine=20))
    a, b = base(x, y), refined(x, y)
    assert fooled(model, b, y) > fooled(model, a, y)
    assert (b - x).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        done = model(b).argmax(1) != y
    assert done.any()
    refined.backward_passes = 0
    again = refined._refine(x[done], y[done], None, b[done], None)
    assert refined.backward_passes == 0 and torch.equal(again, b[done])


def test_gamma_schedule_decays_only_the_projection(tiny):
    model, x, y = tiny
    opts = dict(style_weight=0, origin_weight=0, detail_weight=0, seed=0)
    const = MLAdvVariant(model, **opts)(x, y)
    gamma_lin = MLAdvVariant(model, gamma_schedule="linear", **opts)(x, y)
    both_lin = MLAdvVariant(model, schedule="linear", **opts)(x, y)
    assert not torch.equal(const, gamma_lin) and not torch.equal(gamma_lin, both_lin)
    # no projection: the gamma schedule has nothing to act on
    off = dict(opts, projection=False)
    assert torch.equal(MLAdvVariant(model, **off)(x, y),
                       MLAdvVariant(model, gamma_schedule="linear", **off)(x, y))


def test_layer_choices(tiny):
    model, _, _ = tiny
    convs = conv_layers(model)
    early = MLAdv(model, style_weight=1, style_layers="early-conv").style_layers
    assert early == convs[:max(1, len(convs) // 3)]
    assert MLAdv(model, origin_weight=1, origin_layer=convs).origin_layers == convs
    assert MLAdv(model, style_weight=0).style_layers == []
    assert MLAdv(model, origin_weight=0).origin_layers == []


@pytest.mark.parametrize("bad", [dict(balance="magic"), dict(detail_on="noise"),
                                 dict(style_layers="late-conv"), dict(refine=-1), dict(steps=0),
                                 dict(realism_scale=-0.1), dict(tau=-0.1, balance="literal"),
                                 dict(style_weight=-1), dict(beta=0),
                                 dict(kernel_size=4), dict(style="other-class")])
def test_bad_options_raise_one_clear_error_naming_them(tiny, bad):
    name = "style_weight" if "style_weight" in bad else next(iter(bad))
    with pytest.raises(ValueError, match=name):
        MLAdv(tiny[0], **bad)


@pytest.mark.parametrize("bad", [dict(adv_loss="hinge"), dict(realism="never"),
                                 dict(schedule="step"), dict(keep="best"), dict(momentum=-1),
                                 dict(diversity=2.0), dict(smoothing=4), dict(flip=1.5),
                                 dict(gamma_schedule="step"), dict(kappa=-1),
                                 dict(diversity_scale=0.0), dict(balance="magic")])
def test_bad_variant_options_raise_one_clear_error_naming_them(tiny, bad):
    name = "smoothing" if "smoothing" in bad else next(iter(bad))
    with pytest.raises(ValueError, match=name):
        MLAdvVariant(tiny[0], **bad)


def test_style_term_unchanged_by_options(tiny):
    """The realism terms are still eqs. 4-6: style against the reference's Grams."""
    model, x, y = tiny
    atk = MLAdv(model, style="self", style_weight=1, origin_weight=0, detail_weight=0, seed=0)
    grams, origin = atk._references(x, x)
    _, _, terms = atk._terms(x.clone().requires_grad_(True), x, y, None, grams, origin, True, None)
    assert terms[0][0] == "style" and torch.allclose(terms[0][1], torch.zeros(len(x)), atol=1e-10)
