"""The speed paths give the reference results: bf16 autocast (within tolerance of fp32),
channels_last, pinned copies, and the fused Gram loss of :mod:`mladv.losses` (equal to the
plain autograd formula). GPU checks run only where CUDA is available."""
from __future__ import annotations

import pytest
import torch

from mladv.attacks import make_attack
from mladv.data import make_phantoms
from mladv.losses import (
    gram_distance,
    gram_matrix,
    origin_loss,
    style_loss,
)
from mladv.models import build_model, predict_logits
from mladv.training import amp_context, to_device, train_classifier

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _reference_style_loss(grams, feats):
    """Eq. 4 written plainly (the formula the fused version must reproduce)."""
    return sum((gram_matrix(f) - g).pow(2).flatten(1).sum(1) for g, f in zip(grams, feats))


@pytest.fixture(scope="module")
def data():
    return make_phantoms(8, 16, seed=2)


# -- fused Gram loss ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (2, 16, 2, 2), (2, 3, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_style_loss_and_gradient_equal_the_plain_formula(shape, channels_last):
    torch.manual_seed(0)
    feats = [torch.randn(*shape), torch.randn(shape[0], 2, 6, 6)]
    grams = [gram_matrix(torch.randn(1, *f.shape[1:])) for f in feats]  # 1 x C x C, broadcast
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    weights = torch.rand(shape[0])  # non-uniform upstream gradient per sample
    got_in = [f.clone().requires_grad_(True) for f in feats]
    want_in = [f.clone().requires_grad_(True) for f in feats]
    got = style_loss(grams, got_in)
    want = _reference_style_loss(grams, want_in)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    g_got = torch.autograd.grad((got * weights).sum(), got_in)
    g_want = torch.autograd.grad((want * weights).sum(), want_in)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        if channels_last and b.shape[-1] > 1:
            assert a.is_contiguous(memory_format=torch.channels_last)


def test_fused_gram_gradient_passes_gradcheck_in_double():
    torch.manual_seed(1)
    feat = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    ref = gram_matrix(torch.randn(2, 3, 4, 4, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda f: gram_distance(ref, f), (feat,))


def test_fused_gram_works_with_batched_gradients():
    """``is_grads_batched`` (vmap over the backward) gives each term's gradient in one call."""
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    feat = x * 2.0
    ref = gram_matrix(torch.randn(1, 3, 4, 4))
    losses = torch.stack([style_loss([ref], [feat]).sum(), origin_loss([feat * 0], [feat]).sum()])
    batched = torch.autograd.grad(losses, x, torch.eye(2), retain_graph=True,
                                  is_grads_batched=True)[0]
    one = torch.autograd.grad(losses[0], x, retain_graph=True)[0]
    torch.testing.assert_close(batched[0], one)


def test_gram_stays_float32_under_bf16_autocast():
    feat = torch.rand(2, 4, 8, 8)
    with amp_context("cpu", "bf16"):
        g = gram_matrix(feat.bfloat16())
        loss = style_loss([gram_matrix(feat)], [feat.bfloat16()])
    assert g.dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(g, gram_matrix(feat), rtol=2e-2, atol=1e-3)


# -- autocast, channels_last, pinned copies -------------------------------------------------
def test_amp_context_rejects_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of"):
        amp_context("cpu", "fp8")
    with pytest.raises(ValueError, match="precision must be one of"):
        train_classifier(build_model("tiny_cnn", 3), make_phantoms(2, 16), precision="half")


def test_bf16_predictions_are_within_tolerance_of_fp32(data):
    torch.manual_seed(0)
    model = build_model("small_cnn", 3).eval()
    fp32 = predict_logits(model, data.images)
    bf16 = predict_logits(model, data.images, precision="bf16")
    assert bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)  # the bf16 path really ran
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)
    assert (bf16.argmax(1) == fp32.argmax(1)).float().mean() >= 0.9


def test_bf16_training_runs_and_stays_close_to_fp32(data):
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model("tiny_cnn", 3)
        hist = train_classifier(model, data, epochs=3, batch_size=8, lr=3e-3, seed=0,
                                progress=False, precision=precision)
        runs[precision] = (hist, model)
    (h32, m32), (h16, m16) = runs["fp32"], runs["bf16"]
    assert h16 != h32  # a different numeric path was taken
    for a, b in zip(h32, h16):
        assert b["loss"] == pytest.approx(a["loss"], abs=0.05)
    for p32, p16 in zip(m32.parameters(), m16.parameters()):
        assert p16.dtype == torch.float32  # autocast keeps the master weights in fp32
        torch.testing.assert_close(p16, p32, rtol=0.1, atol=0.02)


def test_channels_last_training_matches_contiguous_training(data):
    out = {}
    for cl in (False, True):
        torch.manual_seed(0)
        model = build_model("small_cnn", 3)
        out[cl] = (train_classifier(model, data, epochs=2, batch_size=8, seed=0, progress=False,
                                    channels_last=cl), model)
    for a, b in zip(out[False][0], out[True][0]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    conv = next(m for m in out[True][1].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # memory format restored after training


def test_bf16_attack_under_amp_context_respects_the_budget(data):
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 3).eval()
    x, y = data.images[:6], data.labels[:6]
    atk = make_attack("pgd", model, eps=4 / 255, steps=3, seed=0)
    with amp_context("cpu", "bf16"):
        adv = atk(x, y)
    assert adv.dtype == torch.float32
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6 and (adv != x).any()


def test_to_device_on_cpu_is_a_no_op_copy():
    x = torch.rand(2, 1, 4, 4)
    assert to_device(x, torch.device("cpu"), pin_memory=True) is x
    rgb = torch.rand(2, 3, 4, 4)  # 1 channel is channels_last and contiguous at once: use 3
    moved = to_device(rgb, torch.device("cpu"), channels_last=True)
    assert moved.is_contiguous(memory_format=torch.channels_last) and not moved.is_contiguous()
    assert torch.equal(moved, rgb)


@cuda
def test_cuda_bf16_channels_last_pinned_training_runs(data):
    torch.manual_seed(0)
    model = build_model("small_cnn", 3).cuda()
    hist = train_classifier(model, data, epochs=2, batch_size=8, seed=0, progress=False,
                            precision="bf16", channels_last=True)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    cpu = build_model("small_cnn", 3)
    cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    torch.testing.assert_close(predict_logits(model, data.images, precision="bf16"),
                               predict_logits(cpu, data.images), rtol=0.05, atol=0.05)


@cuda
def test_cuda_pinned_copy_is_non_blocking_and_correct():
    x = torch.rand(4, 1, 8, 8)
    y = to_device(x, torch.device("cuda"), pin_memory=True, channels_last=True)
    torch.cuda.synchronize()
    assert y.is_cuda and torch.equal(y.cpu(), x)


@cuda
def test_cuda_bf16_channels_last_mladv_stays_in_the_box(data):
    torch.manual_seed(0)
    model = build_model("small_cnn", 3).cuda().eval()
    x, y = data.images[:8], data.labels[:8]
    atk = make_attack("mladv", model, eps=4 / 255, steps=3, seed=0, precision="bf16",
                      channels_last=True)
    adv = atk(x, y)
    assert adv.is_cuda and adv.dtype == torch.float32 and adv.is_contiguous()
    assert (adv.cpu() - x).abs().max() <= 4 / 255 + 1e-6 and (adv.cpu() != x).any()
    assert next(model.parameters()).is_contiguous()
