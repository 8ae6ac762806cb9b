"""Grad-CAM through pytorch-grad-cam (hooks released, mode restored) and the aggregation number."""
import pytest
import torch
from torch import nn

from mladv.cam import aggregation, default_cam_layer, grad_cam, top_region
from mladv.models import build_model


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_top_region_is_exactly_the_top_share():
    cam = torch.rand(3, 10, 10)
    mask = top_region(cam, 0.2)
    assert mask.shape == cam.shape
    assert (mask.flatten(1).sum(1) == 20).all()
    for i in range(3):
        assert cam[i][mask[i]].min() >= cam[i][~mask[i]].max()


def test_uniform_noise_gives_about_the_top_share():
    gen = torch.Generator().manual_seed(0)
    cam = torch.rand(8, 32, 32, generator=gen)
    delta = (torch.rand(8, 1, 32, 32, generator=gen) * 2 - 1) * 8 / 255
    agg = aggregation(delta, cam, top=0.2)
    assert agg.shape == (8,)
    assert agg.mean().item() == pytest.approx(0.2, abs=0.02)


def test_noise_only_in_the_top_region_gives_one_and_outside_gives_zero():
    cam = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = top_region(cam, 0.2)[:, None].float()
    noise = torch.full((4, 1, 16, 16), 8 / 255)
    assert torch.allclose(aggregation(noise * mask, cam), torch.ones(4))
    assert torch.allclose(aggregation(noise * (1 - mask), cam), torch.zeros(4))
    # channels are summed: a 3-channel delta behaves the same
    assert torch.allclose(aggregation((noise * mask).expand(-1, 3, -1, -1), cam), torch.ones(4))


def test_zero_delta_is_nan_and_shapes_are_checked():
    cam = torch.rand(2, 8, 8)
    assert torch.isnan(aggregation(torch.zeros(2, 1, 8, 8), cam)).all()
    with pytest.raises(ValueError, match="delta"):
        aggregation(torch.zeros(2, 1, 8, 9), cam)
    with pytest.raises(ValueError, match="top"):
        aggregation(torch.ones(2, 1, 8, 8), cam, top=0.0)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_grad_cam_shape_range_hooks_released_and_mode_restored(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3)
    model.train()
    before = hook_count(model)
    x = torch.rand(3, 1, 32, 32)
    cam = grad_cam(model, x, batch_size=2)
    assert cam.shape == (3, 32, 32)
    assert cam.min() >= 0 and cam.max() <= 1 + 1e-6
    assert hook_count(model) == before  # the context manager released its hooks
    assert model.training  # grad-cam calls model.eval(); the mode is restored
    assert all(p.grad is None for p in model.parameters())


def test_repeated_calls_do_not_leak_hooks():
    model = build_model("tiny_cnn", 3).eval()
    before = hook_count(model)
    for _ in range(5):
        grad_cam(model, torch.rand(2, 1, 16, 16))
    assert hook_count(model) == before
    assert not model.training


def test_default_layer_and_named_layer():
    resnet = build_model("resnet18", 3)
    assert default_cam_layer(resnet) is resnet.net.layer4
    small = build_model("small_cnn", 3)
    assert default_cam_layer(small) is small.net[3]  # the block before global pooling
    cam = grad_cam(small, torch.rand(2, 1, 32, 32), layer="net.2")
    assert cam.shape == (2, 32, 32)
    with pytest.raises(ValueError, match="not found"):
        grad_cam(small, torch.rand(1, 1, 32, 32), layer="net.nope")
