"""train_classifier's loop: batches augmented after the copy to the device, speed options
resolved per device; on the CPU the trained weights are bit-identical to the plain float32 loop
(augment on the CPU, then forward), recomputed here."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mladv.data import ImageSet, make_phantoms
from mladv.experiment.arms import mix_transform, rotation_transform, trivialaugment_transform
from mladv.models import build_model
from mladv.training import random_hflip, resolve_speed, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_train(model, data, *, epochs, batch_size, lr, seed, transform):
    """The textbook loop train_classifier must equal on the CPU: one permutation per epoch
    from ``gen``, the transform on the CPU batch, AdamW + one-cycle, mean cross-entropy."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = (len(data) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, pct_start=0.2,
                                                total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            x, y = data.images[idx], data.labels[idx]
            if transform is not None:
                x, y = transform(x, y, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


TRANSFORMS = {"none": None, "flips": random_hflip, "rotation": rotation_transform(15.0, 0.5),
              "mixup": mix_transform("mixup", 0.4, 3),
              "trivialaugment": trivialaugment_transform()}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_cpu_weights_equal_the_float32_reference_loop(name):
    data = make_phantoms(8, 16, seed=2)
    torch.manual_seed(0)
    init = build_model("tiny_cnn", 3)
    ours, ref = build_model("tiny_cnn", 3), build_model("tiny_cnn", 3)
    ours.load_state_dict(init.state_dict())
    ref.load_state_dict(init.state_dict())
    train_classifier(ours, data, epochs=2, batch_size=7, lr=3e-3, seed=5,
                     transform=TRANSFORMS[name], progress=False)
    reference_train(ref, data, epochs=2, batch_size=7, lr=3e-3, seed=5,
                    transform=TRANSFORMS[name])
    for (key, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_auto_speed_options_are_off_on_the_cpu_and_on_for_cuda():
    assert resolve_speed(torch.device("cpu")) == ("fp32", False)
    assert resolve_speed(torch.device("cuda")) == ("bf16", True)
    assert resolve_speed(torch.device("cuda"), "fp32", False) == ("fp32", False)
    assert resolve_speed(torch.device("cpu"), "bf16", True) == ("bf16", True)


def test_bad_speed_options_are_refused_before_training():
    data = make_phantoms(2, 16, seed=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        train_classifier(build_model("tiny_cnn", 3), data, precision="fp16", progress=False)
    with pytest.raises(ValueError, match="channels_last must be True, False or 'auto'"):
        train_classifier(build_model("tiny_cnn", 3), data, channels_last="yes", progress=False)


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_trains_in_that_format_and_restores_the_model(channels_last):
    """3-channel images (a 1-channel tensor is channels_last and contiguous at once, so it could
    not tell the formats apart): with ``channels_last=True`` every training forward gets a
    channels_last batch and a channels_last first convolution, and the model is contiguous
    again afterwards; with ``False`` the batches stay contiguous."""
    data = make_phantoms(4, 16, seed=2)
    data = ImageSet(data.images.repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.9, 0.8]).view(1, 3, 1, 1),
                    data.labels, data.classes, data.paths, data.groups)
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    conv = model.net[0][0]
    seen: list[tuple[bool, bool, bool]] = []

    def hook(module, args):
        if module.training:
            (x,) = args
            seen.append((x.is_contiguous(memory_format=torch.channels_last), x.is_contiguous(),
                         conv.weight.is_contiguous(memory_format=torch.channels_last)))
    model.register_forward_pre_hook(hook)
    train_classifier(model, data, epochs=1, batch_size=6, lr=1e-3, progress=False,
                     channels_last=channels_last)
    assert seen == [(channels_last, not channels_last, channels_last)] * 2  # 12 images, 2 steps
    assert conv.weight.is_contiguous()
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
