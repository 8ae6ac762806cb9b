"""GAMA-PGD: schedule, budget, any number of classes, and that it beats FGSM."""
import pytest
import torch

from mladv.attacks import GAMA, fgsm, make_attack
from mladv.attacks.gama import margin_on_softmax
from mladv.metrics import success_rate
from mladv.models import build_model, predict_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_matches_the_paper_at_100_steps():
    atk = GAMA(build_model("tiny_cnn", 3), eps=8 / 255)
    assert atk.steps == 100
    assert atk.lambda_at(0) == 50 and atk.lambda_at(25) == 0 and atk.lambda_at(99) == 0
    assert atk.lambda_at(12) == pytest.approx(50 * (1 - 12 / 25))
    two_eps = 2 * 8 / 255
    assert atk.step_at(0) == pytest.approx(two_eps) and atk.step_at(59) == pytest.approx(two_eps)
    assert atk.step_at(60) == pytest.approx(two_eps / 10)
    assert atk.step_at(85) == pytest.approx(two_eps / 100)


def test_margin_is_positive_exactly_when_misclassified():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    m = margin_on_softmax(p, torch.tensor([0, 0]))
    assert m[0] == pytest.approx(0.2 - 0.7) and m[1] == pytest.approx(0.5 - 0.2)
    t = margin_on_softmax(p, torch.tensor([0, 0]), torch.tensor([1, 1]))
    assert t[0] == pytest.approx(0.2 - 0.7) and t[1] == pytest.approx(0.5 - 0.3)


def test_gama_beats_fgsm_on_a_trained_model(tiny_trained):
    trained_model, x, y = tiny_trained
    eps = 1 / 255  # small enough that FGSM is far from 100%
    clean = predict_logits(trained_model, x).argmax(1)
    rates = {}
    for name, atk in {"fgsm": fgsm(trained_model, eps=eps),
                      "gama": GAMA(trained_model, eps=eps, steps=20, seed=0)}.items():
        adv = atk(x, y)
        rates[name] = success_rate(clean, predict_logits(trained_model, adv).argmax(1), y)
    assert rates["fgsm"] < 0.95
    assert rates["gama"] > rates["fgsm"], rates


@pytest.mark.parametrize("classes", [2, 5])
def test_any_number_of_classes_within_budget_and_one_channel(classes):
    torch.manual_seed(0)
    model = build_model("tiny_cnn", classes)
    x = torch.rand(4, 1, 16, 16)
    y = torch.arange(4) % classes
    eps = 4 / 255
    adv = GAMA(model, eps=eps, steps=5, seed=1)(x, y)
    assert adv.shape == x.shape
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_targeted_reaches_the_target_more_often(tiny_trained):
    trained_model, x, y = tiny_trained
    targets = (y + 1) % 3
    clean_hits = (predict_logits(trained_model, x).argmax(1) == targets).float().mean()
    adv = GAMA(trained_model, eps=8 / 255, steps=10, targeted=True, seed=0)(
        x, y, target_labels=targets)
    hits = (predict_logits(trained_model, adv).argmax(1) == targets).float().mean()
    assert hits > clean_hits + 0.2


def test_seeded_runs_repeat_and_mode_is_restored(tiny_trained):
    trained_model, x, y = tiny_trained[0], tiny_trained[1][:6], tiny_trained[2][:6]
    trained_model.train()
    try:
        a = GAMA(trained_model, steps=3, seed=3)(x, y)
        assert trained_model.training
        b = GAMA(trained_model, steps=3, seed=3)(x, y)
    finally:
        trained_model.eval()
    assert torch.equal(a, b)


def test_registry_and_bad_arguments():
    model = build_model("tiny_cnn", 3)
    assert isinstance(make_attack("gama", model, steps=4), GAMA)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="eps"):
            GAMA(model, eps=bad)
    with pytest.raises(ValueError, match="steps"):
        GAMA(model, steps=0)


def _gama_by_hand(model, x, y, eps, steps, lam, relax_steps, with_lambda=True):
    """GAMA-PGD written out from the paper: signed ascent of
    ``max_{j!=y} p_j - p_y + lambda_t ||p(x_0) - p(x~)||^2``, keeping the best-margin iterate.
    (Same random start as the attack: seed 0's signs.)"""
    gen = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, x.shape, generator=gen).to(x) * 2 - 1
    x_t = (x + eps * sign).clamp(0, 1)
    with torch.no_grad():
        p0 = torch.softmax(model(x_t), 1)
    best, best_m = x_t.clone(), torch.full((len(x),), float("-inf"), dtype=x.dtype)
    for t in range(steps + 1):
        xg = x_t.clone().requires_grad_(True)
        p = torch.softmax(model(xg), 1)
        own = p.gather(1, y[:, None]).squeeze(1)
        other = p.scatter(1, y[:, None], -1.0).amax(1)
        margin = other - own
        better = margin.detach() > best_m
        best[better], best_m[better] = x_t[better], margin.detach()[better]
        if t == steps:
            break
        lam_t = lam * max(0.0, 1 - t / relax_steps) if with_lambda else 0.0
        loss = (margin + lam_t * (p0 - p).pow(2).sum(1)).sum()
        g = torch.autograd.grad(loss, xg)[0]
        x_t = (x + (x_t + 2 * eps * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return best


def test_the_relaxation_term_is_in_the_loss():
    """GAMA equals a hand computation WITH the lambda term, and not the same computation
    without it (at x_0 the term has no gradient, so steps >= 2 with lambda still > 0)."""
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 3).double().eval()
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    eps, steps = 4 / 255, 4
    atk = GAMA(model, eps=eps, steps=steps, relax_fraction=1.0, drop_at=(), seed=0)
    assert atk.relax_steps == steps and atk.lambda_at(2) > 0
    got = atk(x, y)
    expected = _gama_by_hand(model, x, y, eps, steps, 50.0, steps)
    assert torch.allclose(got, expected, atol=1e-12)
    assert not torch.allclose(_gama_by_hand(model, x, y, eps, steps, 50.0, steps, False),
                              expected, atol=1e-12)
