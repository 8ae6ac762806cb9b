"""RayS: hard-label only, within eps, within its query budget, and successful on a tiny model."""
import pytest
import torch
from torch import nn

from mladv.attacks import RayS, make_attack
from mladv.models import build_model, predict_logits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def correct_images(tiny_trained):
    """8 images per class that the model classifies correctly."""
    model, x, y = tiny_trained
    ok = predict_logits(model, x).argmax(1) == y
    idx = torch.cat([(ok & (y == c)).nonzero().flatten()[:8] for c in range(3)])
    return x[idx], y[idx]


@pytest.fixture(scope="module")
def model(tiny_trained):
    return tiny_trained[0]


class HardLabel(nn.Module):
    """Exposes only the predicted label (as a one-hot 'logit' vector)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        return nn.functional.one_hot(logits.argmax(1), logits.shape[1]).float()


def test_succeeds_on_most_images_within_eps_and_budget(model, correct_images):
    x, y = correct_images
    eps, budget = 8 / 255, 300
    atk = RayS(model, eps=eps, budget=budget)
    adv = atk(x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().amax() <= eps + 1e-6
    assert atk.last_queries.shape == (x.shape[0],)
    assert atk.last_queries.max() <= budget and atk.last_queries.min() >= 1
    fooled = predict_logits(model, adv).argmax(1) != y
    assert fooled.float().mean() >= 0.75
    # every image RayS counts as a success is truly misclassified, within eps
    assert fooled[atk.last_success].all()
    assert (atk.last_radius[atk.last_success] <= eps).all()


def test_never_exceeds_a_small_budget(model, correct_images):
    x, y = correct_images
    atk = RayS(model, eps=1 / 255, budget=15)
    adv = atk(x, y)
    assert atk.last_queries.max() <= 15
    assert (atk.last_queries == 15).any()  # some images ran out of queries
    assert (adv - x).abs().amax() <= 1 / 255 + 1e-6


def test_uses_only_the_predicted_label(model, correct_images):
    x, y = correct_images[0][:8], correct_images[1][:8]
    a = RayS(model, eps=16 / 255, budget=60)(x, y)
    hard = HardLabel(model)
    b = RayS(hard, eps=16 / 255, budget=60)(x, y)
    assert torch.equal(a, b)


def test_already_misclassified_images_cost_one_query_and_stay_clean(tiny_trained):
    model, x, y = tiny_trained
    wrong = predict_logits(model, x).argmax(1) != y
    assert wrong.any()
    atk = RayS(model, eps=8 / 255, budget=30)
    adv = atk(x[wrong][:4], y[wrong][:4])
    assert (atk.last_queries == 1).all()
    assert torch.equal(adv, x[wrong][:4])


def test_bad_budget_and_eps_are_refused():
    model = build_model("tiny_cnn", 3)
    for budget in (0, -5, 2.5):
        with pytest.raises(ValueError, match="budget"):
            RayS(model, budget=budget)
    for eps in (0.0, -1 / 255, 1.01):
        with pytest.raises(ValueError, match="eps"):
            RayS(model, eps=eps)
    with pytest.raises(ValueError, match="budget"):
        make_attack("rays", model, budget=0)


def test_found_radius_is_close_to_the_boundary_along_its_direction(model, correct_images):
    """With a budget too small for eps (no early stop), the radius RayS reports for a direction
    is within 2 tol of the first adversarial radius a fine line search finds along it."""
    x, y = correct_images[0][:8], correct_images[1][:8]
    tol = 2e-3
    atk = RayS(model, eps=1e-6, budget=150, tol=tol)
    adv = atk(x, y)
    signs = (adv - x).sign()  # the direction (pixels clipped at 0 or 1 move for no radius)
    found = atk.last_radius
    assert torch.isfinite(found).sum() >= 6 and not atk.last_success.any()
    grid = torch.arange(0.0, float(found[torch.isfinite(found)].max()) + tol, tol / 4)
    gaps = []
    for i in torch.isfinite(found).nonzero().flatten():
        points = (x[i] + grid.view(-1, 1, 1, 1) * signs[i]).clamp(0, 1)
        hit = predict_logits(model, points).argmax(1) != y[i]
        first = grid[hit.nonzero().flatten()[0]]  # the first adversarial radius on the ray
        at_found = (x[i] + found[i] * signs[i]).clamp(0, 1)[None]
        assert predict_logits(model, at_found).argmax(1) != y[i]  # adversarial at its radius
        gaps.append(float(found[i] - first))
    assert min(gaps) >= -tol / 4 - 1e-9  # no adversarial point was missed before it ...
    assert sorted(gaps)[len(gaps) // 2] <= 2 * tol  # ... and it is at the boundary
    assert sum(g <= 2 * tol for g in gaps) >= 0.75 * len(gaps)
