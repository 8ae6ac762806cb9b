"""The Attack base's speed options: ``precision="bf16"`` (autocast around the attack, the
perturbation and its projection in float32) and ``channels_last``, for MLAdv and every attack,
on the CPU (CPU autocast bf16 is the same code path as CUDA's)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mladv.attacks import (
    ATTACKS,
    MLAdv,
    MLAdvVariant,
    accepted_options,
    check_attack_options,
    heuristic_projection,
    make_attack,
    parse_options,
    projection_kernel,
)
from mladv.attacks.base import channels_last_model

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 4 / 255
FAST = {"mladv": {"steps": 3}, "pgd": {"steps": 2}, "mifgsm": {"steps": 2},
        "pifgsm": {"steps": 2}, "gama": {"steps": 3}, "rays": {"budget": 30}, "fgsm": {},
        "chain": {"steps": 1}, "targeted-finding": {"steps": 2}}
MULTILABEL_ONLY = {"targeted-finding"}  # covered by tests/test_attacks_multilabel.py
NOT_LINF = {"chain"}  # a physical chain: bounded in its parameters, not in an L-inf ball


def _fooled(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(adv).argmax(1) != y


@pytest.fixture(scope="module")
def batch(tiny_trained):
    model, x, y = tiny_trained
    with torch.no_grad():
        right = model(x).argmax(1) == y
    return model, x[right][:40], y[right][:40]  # correctly classified: fooling is not free


class DtypeSpy:
    """Records the dtype and memory format of every Conv2d's input and output during a call."""

    def __init__(self, model: nn.Module) -> None:
        self.seen: list[tuple[torch.dtype, bool]] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, nn.Conv2d)]

    def _hook(self, module, inputs, output) -> None:
        weight_cl = module.weight.is_contiguous(memory_format=torch.channels_last)
        self.seen.append((output.dtype, weight_cl and module.weight.shape[1] > 1))

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# -- bf16 ---------------------------------------------------------------------------------------
def test_bf16_mladv_runs_the_model_in_bf16_and_keeps_the_perturbation_float32(batch):
    model, x, y = batch
    spy = DtypeSpy(model)
    try:
        adv16 = MLAdv(model, eps=EPS, steps=3, refine=0, seed=0, precision="bf16")(x, y)
        seen16 = list(spy.seen)
        spy.seen.clear()
        adv32 = MLAdv(model, eps=EPS, steps=3, refine=0, seed=0)(x, y)
        seen32 = list(spy.seen)
    finally:
        spy.close()
    assert seen16 and {d for d, _ in seen16} == {torch.bfloat16}  # autocast really ran
    assert {d for d, _ in seen32} == {torch.float32}
    assert adv16.dtype == torch.float32 and adv16.shape == x.shape
    assert (adv16 - x).abs().max() <= EPS + 1e-6
    assert adv16.min() >= 0 and adv16.max() <= 1
    assert not torch.equal(adv16, adv32)  # a different numeric path was taken
    # the steps are signs: float32 arithmetic keeps every pixel on the alpha grid of fp32's
    assert (adv16 != x).float().mean() > 0.5


@pytest.mark.parametrize("refine", [0, 10])
def test_bf16_mladv_fools_the_model_about_as_often_as_fp32(batch, refine):
    model, x, y = batch
    rates = {}
    for precision in ("fp32", "bf16"):
        atk = make_attack("mladv", model, eps=EPS, steps=3, refine=refine, seed=0,
                          precision=precision)
        rates[precision] = _fooled(model, atk(x, y), y).float().mean().item()
    assert rates["fp32"] >= 0.6  # the comparison is meaningful: fp32 does fool it
    assert rates["bf16"] >= rates["fp32"] - 0.1, rates


def test_bf16_style_and_origin_terms_stay_finite_and_in_the_box(batch):
    model, x, y = batch
    atk = MLAdv(model, eps=EPS, steps=2, refine=0, seed=0, style_weight=1.0, origin_weight=1.0,
                balance="calibrated", precision="bf16")
    adv = atk(x[:8], y[:8])
    assert torch.isfinite(adv).all() and (adv - x[:8]).abs().max() <= EPS + 1e-6


def test_projection_is_float32_and_unchanged_under_bf16_autocast():
    torch.manual_seed(0)
    amplified = (torch.rand(2, 3, 16, 16) - 0.5) * 0.2
    kernel = projection_kernel(5)
    plain = heuristic_projection(amplified, EPS, 0.01, kernel)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = heuristic_projection(amplified, EPS, 0.01, kernel)
    assert under.dtype == torch.float32
    assert torch.equal(under, plain)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_takes_bf16_and_channels_last(batch, name):
    if name in MULTILABEL_ONLY:
        pytest.skip("multilabel only: covered by tests/test_attacks_multilabel.py")
    model, x, y = batch
    x, y = x[:6], y[:6]
    atk = make_attack(name, model, eps=EPS, seed=0, precision="bf16", channels_last=True,
                      **FAST[name])
    adv = atk(x, y)
    assert adv.dtype == torch.float32 and adv.is_contiguous()
    assert adv.min() >= 0 and adv.max() <= 1
    assert name in NOT_LINF or (adv - x).abs().max() <= EPS + 1e-6
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous()  # the model's memory format is restored


# -- channels_last -----------------------------------------------------------------------------
@pytest.mark.parametrize("balance", ["grad-norm", "calibrated"])
def test_channels_last_gives_the_contiguous_result(batch, balance):
    model, x, y = batch
    options = {"eps": EPS, "steps": 3, "seed": 0, "balance": balance, "origin_weight": 1.0}
    spy = DtypeSpy(model)
    try:
        plain = MLAdv(model, **options)(x, y)
        assert not any(cl for _, cl in spy.seen)
        spy.seen.clear()
        fast = MLAdv(model, channels_last=True, **options)(x, y)
        assert any(cl for _, cl in spy.seen)  # the model really ran in channels_last
    finally:
        spy.close()
    # sign steps: a float-rounding difference could flip a pixel whose gradient is ~0
    assert (fast == plain).float().mean() >= 0.999
    torch.testing.assert_close(fast, plain, atol=2 * EPS, rtol=0)


def test_a_model_already_in_channels_last_stays_so(batch):
    model, x, y = batch
    model.to(memory_format=torch.channels_last)
    try:
        with channels_last_model(model):
            pass
        conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1]
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        MLAdv(model, eps=EPS, steps=1, refine=0, channels_last=True)(x[:2], y[:2])
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    finally:
        model.to(memory_format=torch.contiguous_format)


def test_channels_last_model_restores_the_format_after_an_error(batch):
    model, _, _ = batch
    with pytest.raises(RuntimeError, match="boom"), channels_last_model(model):
        raise RuntimeError("boom")
    assert all(p.is_contiguous() for p in model.parameters())


# -- the options go through the registry's checks ----------------------------------------------
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_lists_the_compute_options(name):
    accepted = accepted_options(name)
    assert "precision" in accepted and "channels_last" in accepted


def test_bad_precision_is_one_line_naming_the_option(batch):
    model, _, _ = batch
    with pytest.raises(ValueError, match=r"^attack 'mladv': precision must be one of 'fp32', "
                                         r"'bf16', got 'fp16'$"):
        make_attack("mladv", model, precision="fp16")
    with pytest.raises(ValueError, match="attack 'pgd': channels_last must be bool"):
        check_attack_options("pgd", {"channels_last": "yes"})
    with pytest.raises(ValueError, match="precision must be one of"):
        MLAdv(model, precision="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        MLAdv(model, channels_last=1)  # type: ignore[arg-type]


def test_cli_style_options_reach_the_attack(batch):
    model, _, _ = batch
    opts = parse_options(["precision=bf16", "channels-last=true", "refine=0"])
    check_attack_options("mladv", opts)
    atk = make_attack("mladv", model, **opts)
    assert atk.precision == "bf16" and atk.channels_last is True
    variant = MLAdvVariant(model, momentum=0.5, precision="bf16")
    assert variant.precision == "bf16"
