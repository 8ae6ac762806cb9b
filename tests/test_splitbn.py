"""The twin BatchNorm wrapper (AdvProp): separate statistics, separate gradients, plain keys."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mladv.models import build_model
from mladv.splitbn import SplitBN, batchnorm_names

pytestmark = pytest.mark.usefixtures("one_thread")


def _bn_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()
            if any(s in k for s in ("running_mean", "running_var", "num_batches_tracked"))}


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "resnet34", "resnet50",
                                  "efficientnet_b0", "shufflenet_v2_x1_0"])
def test_adversarial_pass_moves_only_the_twin_statistics(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3)
    split = SplitBN(model).train()
    assert len(split.twins) == len(batchnorm_names(model)) > 0
    main_before, twin_before = _bn_state(model), split.twin_state_dict()
    split(torch.rand(3, 1, 32, 32), adversarial=True)
    for k, v in _bn_state(model).items():
        assert torch.equal(v, main_before[k]), k          # main BN untouched
    twin_after = split.twin_state_dict()
    assert twin_after != {} and all(
        not torch.equal(twin_after[k], twin_before[k]) for k in twin_after
        if k.endswith(("running_mean", "num_batches_tracked")))
    split(torch.rand(3, 1, 32, 32))                        # a clean pass: now only main moves
    for k, v in split.twin_state_dict().items():
        assert torch.equal(v, twin_after[k]), k
    assert int(model.state_dict()[f"{batchnorm_names(model)[0]}.num_batches_tracked"]) == 1


def test_plain_model_keys_and_no_twin_in_its_state_dict():
    model = build_model("resnet18", 3)
    keys = set(build_model("resnet18", 3).state_dict())
    split = SplitBN(model)
    assert set(split.model.state_dict()) == keys
    assert set(split.twin_state_dict()) <= keys          # twins are keyed like the main BN
    assert len(split.twin_state_dict()) == 5 * len(batchnorm_names(model))


def test_gradients_of_an_adversarial_loss_reach_the_twins_not_the_main_bn():
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    split = SplitBN(model).train()
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(split(x, adversarial=True), y).backward()
    bn = dict(model.named_modules())[split.bn_names[0]]
    assert bn.weight.grad is None and bn.bias.grad is None
    assert split.twins[0].weight.grad is not None and split.twins[0].weight.grad.abs().sum() > 0
    assert model.net[0][0].weight.grad is not None        # convolutions are shared


def test_mask_routes_rows_and_keeps_their_order():
    torch.manual_seed(0)
    split = SplitBN(build_model("small_cnn", 3)).eval()
    with torch.no_grad():
        for twin in split.twins:
            twin.weight.mul_(3.0)
            twin.running_mean.add_(0.5)
    x = torch.rand(6, 1, 16, 16)
    mask = torch.tensor([True, False, False, True, True, False])
    with torch.no_grad():
        out = split(x, adv_mask=mask)
        torch.testing.assert_close(out[~mask], split.model(x[~mask]))
        torch.testing.assert_close(out[mask], split(x[mask], adversarial=True))
        assert not torch.allclose(out[mask], split.model(x[mask]), atol=1e-3)


def test_bad_mask_and_foreign_twin_state_are_one_line_errors():
    split = SplitBN(build_model("small_cnn", 3))
    with pytest.raises(ValueError, match="adv_mask must be a bool tensor of shape"):
        split(torch.rand(2, 1, 16, 16), adv_mask=torch.tensor([1, 0]))
    other = SplitBN(build_model("resnet18", 3)).twin_state_dict()
    with pytest.raises(ValueError, match="twin BatchNorm state does not fit") as err:
        split.load_twin_state_dict(other)
    assert "\n" not in str(err.value)


def test_a_model_without_batchnorm_has_no_twins_and_is_itself():
    model = build_model("tiny_cnn", 3).eval()
    split = SplitBN(model)
    x = torch.rand(2, 1, 16, 16)
    assert len(split.twins) == 0 and split.twin_state_dict() == {}
    torch.testing.assert_close(split(x, adversarial=True), model(x))


def test_bad_mask_message_gives_the_batch_size_dtype_and_shape():
    split = SplitBN(build_model("small_cnn", 3))
    with pytest.raises(ValueError) as err:
        split(torch.rand(2, 1, 16, 16), adv_mask=torch.tensor([1, 0, 1]))
    assert str(err.value) == "adv_mask must be a bool tensor of shape (2,), got torch.int64 (3,)"


@pytest.mark.parametrize("all_adversarial", [True, False])
def test_a_mask_of_one_value_is_one_pass_through_that_bn(all_adversarial):
    torch.manual_seed(0)
    split = SplitBN(build_model("small_cnn", 3)).eval()
    with torch.no_grad():
        for twin in split.twins:
            twin.running_mean.add_(0.5)
        x = torch.rand(3, 1, 16, 16)
        out = split(x, adv_mask=torch.full((3,), all_adversarial))
        assert torch.equal(out, split(x, adversarial=all_adversarial))


def test_foreign_twin_state_names_the_first_three_missing_and_unexpected_keys():
    split = SplitBN(build_model("small_cnn", 3))
    own = sorted(split.twin_state_dict())
    assert len(own) >= 4
    with pytest.raises(ValueError) as err:
        split.load_twin_state_dict({})
    assert str(err.value) == ("twin BatchNorm state does not fit this model: missing "
                              f"{own[:3]}, unexpected []")
    extra = {**split.twin_state_dict(), **{k: torch.zeros(1) for k in "abcd"}}
    with pytest.raises(ValueError) as err:
        split.load_twin_state_dict(extra)
    assert str(err.value) == ("twin BatchNorm state does not fit this model: missing [], "
                              "unexpected ['a', 'b', 'c']")
