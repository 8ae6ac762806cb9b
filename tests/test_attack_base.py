import pytest
import torch
from torch import nn

from mladv.attacks import MLAdv, eval_mode
from mladv.models import build_model


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_model("tiny_cnn", 3)


def test_rejects_images_outside_unit_range_naming_min_and_max(model):
    x = torch.rand(2, 1, 16, 16) * 2 - 0.5
    with pytest.raises(ValueError, match=r"min=.*max="):
        MLAdv(model)(x, torch.tensor([0, 1]))


def test_rejects_wrong_shape_naming_it(model):
    with pytest.raises(ValueError, match=r"\(1, 16, 16\)"):
        MLAdv(model)(torch.rand(1, 16, 16), torch.tensor([0]))


def test_rejects_labels_of_wrong_length(model):
    with pytest.raises(ValueError, match="labels"):
        MLAdv(model)(torch.rand(2, 1, 16, 16), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5])
def test_rejects_eps_outside_unit_interval(model, eps):
    with pytest.raises(ValueError, match="eps"):
        MLAdv(model, eps=eps)


def test_model_mode_is_restored_after_attack(model):
    model.train()
    MLAdv(model, steps=1)(torch.rand(2, 1, 16, 16), torch.tensor([0, 1]))
    assert model.training


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        assert not self.training, "attack must run the model in eval mode"
        raise RuntimeError("boom")


def test_model_mode_is_restored_after_an_exception():
    m = Exploding().train()
    with pytest.raises(RuntimeError, match="boom"):
        MLAdv(m, steps=1, origin_weight=0)(torch.rand(1, 1, 8, 8), torch.tensor([0]))
    assert m.training


def test_eval_mode_restores_eval_too(model):
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training


def test_target_labels_on_an_untargeted_attack_are_refused(model):
    with pytest.raises(ValueError, match="targeted=True"):
        MLAdv(model, steps=1)(torch.rand(2, 1, 16, 16), torch.tensor([0, 1]),
                              target_labels=torch.tensor([1, 2]))


def test_a_double_model_is_attacked_in_double():
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 3).double()
    adv = MLAdv(model, steps=2, seed=0)(torch.rand(2, 1, 16, 16), torch.tensor([0, 1]))
    assert adv.dtype == torch.float64
