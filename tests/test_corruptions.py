"""mladv.evaluation.corruptions: the ImageNet-C / MedMNIST-C corruption protocol on float images.
Each parameter against the published table, each value against its definition by hand."""
import math
import warnings

import pytest
import torch

import mladv.evaluation.corruptions as corruptions_module
from mladv.evaluation.corruptions import (
    CORRUPTIONS,
    corrupt,
    corruption_error,
    motion_kernel_offsets,
)

# Copied from MedMNIST-C, CORRUPTIONS_DS['chestmnist'] in medmnistc/corruptions/registry.py of
# github.com/francescodisalvo05/medmnistc-api @ 8acfd2710c6e0e8b2745be8b1fa1c17b94b8f8a7
# (gaussian_blur lists a sixth size, 13, that severities 1..5 never read).
MEDMNISTC_CHEST = {
    "pixelate": [0.30, 0.25, 0.20, 0.15, 0.10],
    "jpeg_compression": [50, 30, 15, 10, 7],
    "gaussian_noise": [0.04, .08, .12, 0.18, 0.26],
    "speckle_noise": [0.05, 0.15, 0.2, 0.35, 0.45],
    "impulse_noise": [0.01, 0.03, 0.06, 0.09, 0.17],
    "shot_noise": [60, 25, 18, 10, 5],
    "gaussian_blur": [3, 5, 7, 9, 11],
    "brightness_up": [1.1, 1.2, 1.3, 1.4, 1.5],
    "brightness_down": [0.9, 0.8, 0.7, 0.6, 0.5],
    "contrast_up": [1.1, 1.2, 1.3, 1.4, 1.6],
    "contrast_down": [0.9, 0.8, 0.7, 0.6, 0.4],
    "gamma_corr_up": [1.1, 1.2, 1.3, 1.4, 1.6],
    "gamma_corr_down": [0.9, 0.8, 0.7, 0.6, 0.4],
}
# Copied from ImageNet-C, motion_blur in ImageNet-C/imagenet_c/imagenet_c/corruptions.py of
# github.com/hendrycks/robustness @ 712bfcd18ba1159df5f7ed46f4e6cae611bfe60e (no chest value in
# MedMNIST-C).
IMAGENET_C_MOTION_BLUR = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]

KINDS = {"gaussian_noise": "noise", "shot_noise": "noise", "impulse_noise": "noise",
         "speckle_noise": "noise", "gaussian_blur": "blur", "motion_blur": "blur",
         "jpeg_compression": "digital", "pixelate": "digital", "brightness_up": "intensity",
         "brightness_down": "intensity", "contrast_up": "intensity",
         "contrast_down": "intensity", "gamma_corr_up": "intensity",
         "gamma_corr_down": "intensity"}
NOISE_AND_BLUR = [n for n, k in KINDS.items() if k in ("noise", "blur")]
RANDOM = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur"]


def image(n: int = 2, size: int = 32, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed),
                      dtype=dtype)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the tables ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MEDMNISTC_CHEST))
def test_severity_parameters_are_medmnist_cs_published_chest_table(name):
    assert list(CORRUPTIONS[name].params) == MEDMNISTC_CHEST[name]


def test_motion_blur_parameters_are_imagenet_cs_published_table():
    assert list(CORRUPTIONS["motion_blur"].params) == IMAGENET_C_MOTION_BLUR
    assert "ImageNet-C" in CORRUPTIONS["motion_blur"].source


def test_the_registry_holds_exactly_the_protocols_families_with_their_kind():
    assert {n: c.kind for n, c in CORRUPTIONS.items()} == KINDS


# --- every family -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NOISE_AND_BLUR)
def test_noise_and_blur_move_the_image_further_from_clean_with_each_severity(name):
    x = image()
    mse = [float(((corrupt(x, name, s, gen(1)) - x) ** 2).mean()) for s in range(1, 6)]
    assert mse == sorted(mse) and len(set(mse)) == 5, mse


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_is_in_0_1_with_the_shape_and_dtype_kept(name, dtype):
    x = image(dtype=dtype)
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0], dtype=dtype)
    out = corrupt(x, name, 5, gen())
    assert out.shape == x.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", RANDOM)
def test_the_same_seed_gives_the_same_output_and_another_seed_another(name):
    x = image()
    assert torch.equal(corrupt(x, name, 3, gen(5)), corrupt(x, name, 3, gen(5)))
    assert not torch.equal(corrupt(x, name, 3, gen(5)), corrupt(x, name, 3, gen(6)))


# --- values by hand -----------------------------------------------------------------------------

HALF = torch.full((1, 1, 64, 64), 0.5, dtype=torch.float64)


@pytest.mark.parametrize(("name", "severity", "value"), [
    ("brightness_up", 3, 0.5 * 1.3), ("brightness_down", 5, 0.5 * 0.5),
    ("gamma_corr_up", 5, 0.5 ** 1.6), ("gamma_corr_down", 5, 0.5 ** 0.4),
    ("contrast_up", 5, 0.5), ("contrast_down", 5, 0.5)])  # a constant image is its own mean
def test_intensity_families_on_a_constant_image_by_hand(name, severity, value):
    assert torch.allclose(corrupt(HALF, name, severity), torch.full_like(HALF, value))


def test_brightness_up_clips_at_one():
    x = torch.full((1, 1, 4, 4), 0.8)
    assert torch.equal(corrupt(x, "brightness_up", 5), torch.ones_like(x))  # 0.8 * 1.5 -> 1


def test_contrast_scales_about_the_images_mean():
    x = torch.tensor([0.2, 0.6]).repeat(1, 1, 4, 2)  # mean 0.4, deviations -0.2 / +0.2
    out = corrupt(x.double(), "contrast_up", 5)  # factor 1.6
    assert torch.allclose(out, torch.tensor([0.08, 0.72]).double().repeat(1, 1, 4, 2))


def test_gaussian_noise_adds_zero_mean_noise_of_the_tables_sigma():
    noise = corrupt(HALF, "gaussian_noise", 1, gen()) - 0.5  # sigma 0.04, no clipping at 0.5
    assert float(noise.mean()) == pytest.approx(0.0, abs=3 * 0.04 / 64)
    assert float(noise.std()) == pytest.approx(0.04, rel=0.03)


def test_shot_noise_is_poisson_counts_of_lambda_x_over_lambda():
    out = corrupt(HALF, "shot_noise", 1, gen())  # lambda 60: counts ~ Poisson(30)
    counts = out * 60
    assert torch.allclose(counts, counts.round())
    assert float(out.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(out.var()) == pytest.approx(0.5 / 60, rel=0.05)  # var = x / lambda


def test_speckle_noise_has_std_x_times_sigma():
    noise = corrupt(HALF, "speckle_noise", 1, gen()) - 0.5  # sigma 0.05
    assert float(noise.std()) == pytest.approx(0.5 * 0.05, rel=0.03)


def test_impulse_noise_sets_the_tables_share_of_pixels_to_0_or_1_in_equal_parts():
    x = torch.full((4, 1, 64, 64), 0.5)
    out = corrupt(x, "impulse_noise", 5, gen())  # amount 0.17
    assert set(out.unique().tolist()) == {0.0, 0.5, 1.0}
    changed = (out != 0.5).float().mean().item()
    assert changed == pytest.approx(0.17, abs=0.01)
    assert (out == 1).float().mean().item() == pytest.approx(0.17 / 2, abs=0.01)


def test_gaussian_blur_of_a_point_has_torchvisions_default_sigma():
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[0, 0, 4, 4] = 1.0
    # kernel 3: sigma = 0.3 ((3 - 1) / 2 - 1) + 0.8 = 0.8; 1-D weights (w, 1, w) / (1 + 2 w)
    w = math.exp(-1 / (2 * 0.8 ** 2))
    g = torch.tensor([w, 1.0, w], dtype=torch.float64) / (1 + 2 * w)
    out = corrupt(x, "gaussian_blur", 1)
    assert torch.allclose(out[0, 0, 3:6, 3:6], torch.outer(g, g))
    assert float(out.sum()) == pytest.approx(1.0)


def test_motion_kernel_is_imagemagicks_one_sided_gaussian_streak():
    offsets, weights = motion_kernel_offsets(10, 3, 0.0)
    assert offsets == [(0, i) for i in range(21)]  # width 2 * 10 + 1, along +x
    raw = [math.exp(-i * i / 18) for i in range(21)]
    assert weights == pytest.approx([r / sum(raw) for r in raw])
    assert motion_kernel_offsets(10, 3, 90.0)[0] == [(i, 0) for i in range(21)]
    # 45 degrees: tap i reads (ceil(i / sqrt 2 - 1/2), same): 0, 1, 1, 2
    assert motion_kernel_offsets(2, 1, 45.0)[0][:4] == [(0, 0), (1, 1), (1, 1), (2, 2)]


def test_motion_blur_keeps_a_constant_image_constant_edges_included():
    x = torch.full((2, 1, 16, 16), 0.3, dtype=torch.float64)
    assert torch.allclose(corrupt(x, "motion_blur", 5, gen()), x)


def test_pixelate_replaces_each_block_with_its_mean():
    x = image(1, 20).double()  # severity 5: factor 0.10 -> 2 x 2 blocks of 10 x 10
    out = corrupt(x, "pixelate", 5)
    for r in (0, 10):
        for c in (0, 10):
            block = x[0, 0, r:r + 10, c:c + 10]
            assert torch.allclose(out[0, 0, r:r + 10, c:c + 10],
                                  block.mean().expand(10, 10), atol=1e-6)


def test_jpeg_returns_8_bit_levels_and_keeps_a_flat_grey():
    out = corrupt(image(), "jpeg_compression", 3)
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)
    flat = torch.full((1, 1, 16, 16), 128 / 255)
    assert torch.allclose(corrupt(flat, "jpeg_compression", 5), flat)


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"severity": 0}, "severity must be one of 1..5"),
    ({"severity": 6}, "severity must be one of 1..5"),
    ({"images": torch.full((1, 1, 4, 4), 2.0)}, r"images must be in \[0, 1\]"),
    ({"images": torch.zeros(1, 4, 4)}, "images must be a floating N x C x H x W"),
    ({"images": torch.zeros(1, 1, 4, 4, dtype=torch.uint8)}, "images must be a floating"),
    ({"name": "fog"}, "unknown name 'fog'")])
def test_bad_input_is_one_line_naming_the_argument(kwargs, match):
    args = {"images": torch.zeros(1, 1, 4, 4), "name": "gaussian_noise", "severity": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        corrupt(**args)


# --- the protocol -------------------------------------------------------------------------------

TABLE = {"a": [0.1, 0.2, 0.3, 0.4, 0.5], "b": [0.2] * 5}  # E_a = 0.3, E_b = 0.2


def test_corruption_error_per_family_is_the_mean_over_severities_and_its_rise_over_clean():
    r = corruption_error(TABLE, 0.1)
    assert r.families["a"].error == pytest.approx(0.3)
    assert r.families["a"].relative == pytest.approx(0.2)
    assert r.families["b"].error == pytest.approx(0.2)
    assert r.families["b"].relative == pytest.approx(0.1)
    assert r.families["a"].ce is None and r.families["a"].relative_ce is None


def test_mean_corruption_error_is_the_unnormalised_mean_over_families_without_a_baseline():
    r = corruption_error(TABLE, 0.1)
    assert r.all.mce == pytest.approx(0.25) and r.all.relative_mce == pytest.approx(0.15)
    assert r.all.normalised_mce is None and r.all.normalised_relative_mce is None


def test_trained_and_unseen_families_are_reported_apart():
    r = corruption_error(TABLE, 0.1, trained={"a", "not_in_table"})
    assert r.trained.families == ("a",) and r.unseen.families == ("b",)
    assert r.trained.mce == pytest.approx(0.3) and r.unseen.mce == pytest.approx(0.2)
    assert r.trained.relative_mce == pytest.approx(0.2)
    assert r.unseen.relative_mce == pytest.approx(0.1)


def test_no_trained_family_gives_a_nan_trained_group():
    r = corruption_error(TABLE, 0.1)
    assert r.trained.families == () and math.isnan(r.trained.mce)
    assert r.unseen.mce == pytest.approx(0.25)


def test_a_baseline_gives_medmnist_cs_normalised_and_relative_errors():
    # ce = E_c / E_c^b: 0.3 / 0.6, 0.2 / 0.5; relative = (E_c - 0.1) / (E_c^b - 0.2): 0.2 / 0.4,
    # 0.1 / 0.3
    r = corruption_error(TABLE, 0.1, baseline={"a": 0.6, "b": 0.5}, baseline_clean_err=0.2)
    assert r.families["a"].ce == pytest.approx(0.5)
    assert r.families["b"].ce == pytest.approx(0.4)
    assert r.families["a"].relative_ce == pytest.approx(0.5)
    assert r.families["b"].relative_ce == pytest.approx(1 / 3)
    assert r.all.normalised_mce == pytest.approx(0.45)
    assert r.all.normalised_relative_mce == pytest.approx((0.5 + 1 / 3) / 2)


def test_a_baseline_without_its_clean_error_gives_ce_but_no_relative_ce():
    r = corruption_error(TABLE, 0.1, baseline={"a": 0.6, "b": 0.5})
    assert r.all.normalised_mce == pytest.approx(0.45)
    assert r.families["a"].relative_ce is None and r.all.normalised_relative_mce is None


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    (({}, 0.1), {}, "err_by_family_severity: no family"),
    (({"a": []}, 0.1), {}, r"err_by_family_severity\['a'\]: no severity"),
    ((TABLE, 0.1), {"baseline": {"a": 0.5}}, "baseline: no error for b"),
    ((TABLE, 0.1), {"baseline_clean_err": 0.2}, "baseline_clean_err: needs baseline")])
def test_corruption_error_bad_input_is_one_line_naming_the_argument(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        corruption_error(*args, **kwargs)


# --- mutation testing (issue 25 item 7) ---------------------------------------------------------

def _message(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_non_tensor_images_are_refused_naming_their_type():
    assert _message(corrupt, [[0.5]], "gaussian_noise", 1) == (
        "gaussian_noise: images must be a floating N x C x H x W tensor, got list")


def test_three_d_images_are_refused_naming_their_shape():
    assert _message(corrupt, torch.zeros(1, 4, 4), "pixelate", 1) == (
        "pixelate: images must be a floating N x C x H x W tensor, got (1, 4, 4)")


def test_an_unknown_family_is_refused_listing_the_known_ones_comma_separated():
    message = _message(corrupt, torch.zeros(1, 1, 4, 4), "fog", 1)
    assert message.startswith("corruption: unknown name 'fog'; known: gaussian_noise, "
                              "shot_noise, impulse_noise, speckle_noise, gaussian_blur, ")


def test_contrast_scales_each_image_about_its_own_mean():
    # image 0: 0.2 / 0.6 (mean 0.4); image 1: constant 0.8 (its own mean: unchanged)
    x = torch.cat([torch.tensor([0.2, 0.6]).repeat(1, 1, 4, 2),
                   torch.full((1, 1, 4, 4), 0.8)]).double()
    out = corrupt(x, "contrast_down", 5)  # factor 0.4: 0.4 -+ 0.4 * 0.2
    assert torch.allclose(out[0], torch.tensor([0.32, 0.48]).double().repeat(1, 4, 2))
    assert torch.allclose(out[1], torch.full((1, 4, 4), 0.8).double())


def test_gaussian_noise_is_the_generators_standard_normal_draw_in_the_images_dtype():
    # x + sigma n with n = torch.randn from the same seed, drawn in float64 like the images
    n = torch.randn(HALF.shape, generator=gen(3), dtype=torch.float64)
    out = corrupt(HALF, "gaussian_noise", 2, gen(3))  # sigma 0.08
    assert torch.allclose(out, (0.5 + 0.08 * n).clamp(0, 1), rtol=0, atol=1e-15)


def test_impulse_noise_uses_two_uniform_draws_of_the_generator_in_the_images_dtype():
    # flipped = u1 <= amount, salted = u2 <= 0.5, u drawn in float64 like the images
    g = gen(4)
    u1 = torch.rand(HALF.shape, generator=g, dtype=torch.float64)
    u2 = torch.rand(HALF.shape, generator=g, dtype=torch.float64)
    expected = torch.where(u1 <= 0.17, (u2 <= 0.5).double(), HALF)
    assert torch.equal(corrupt(HALF, "impulse_noise", 5, gen(4)), expected)


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "speckle_noise",
                                  "shot_noise", "motion_blur"])
def test_a_random_family_without_a_generator_draws_from_torchs_global_generator(name):
    torch.manual_seed(7)
    a = corrupt(image(), name, 3)
    torch.manual_seed(7)
    assert torch.equal(a, corrupt(image(), name, 3))


@pytest.mark.parametrize(("draw", "fn"), [("randn", "_randn"), ("rand", "_rand")])
def test_noise_is_drawn_on_the_generators_device_and_moved_to_the_images(monkeypatch, draw,
                                                                        fn):
    # a CPU generator cannot draw on a GPU; the meta device stands in for one here
    real = getattr(torch, draw)
    devices = []

    def spy(*args, **kwargs):
        devices.append(torch.device(kwargs["device"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, draw, spy)
    x = torch.zeros(2, 1, 4, 4, device="meta", dtype=torch.float64)
    out = getattr(corruptions_module, fn)(x, gen())
    assert devices == [torch.device("cpu")]
    assert out.device.type == "meta" and out.dtype == torch.float64
    devices.clear()
    getattr(corruptions_module, fn)(x, None)  # no generator: drawn on the images' device
    assert devices == [torch.device("meta")]


def test_no_trained_family_gives_a_nan_group_without_a_numpy_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = corruption_error(TABLE, 0.1)
    assert math.isnan(r.trained.mce) and math.isnan(r.trained.relative_mce)


def test_the_result_keeps_the_clean_error():
    assert corruption_error(TABLE, 0.1).clean_error == 0.1


def test_a_baseline_gives_the_normalised_errors_of_the_trained_and_unseen_groups():
    # ce: a 0.3 / 0.6 = 0.5, b 0.2 / 0.5 = 0.4; relative: a 0.2 / 0.4 = 0.5, b 0.1 / 0.3
    r = corruption_error(TABLE, 0.1, trained={"a"}, baseline={"a": 0.6, "b": 0.5},
                         baseline_clean_err=0.2)
    assert r.trained.normalised_mce == pytest.approx(0.5)
    assert r.trained.normalised_relative_mce == pytest.approx(0.5)
    assert r.unseen.normalised_mce == pytest.approx(0.4)
    assert r.unseen.normalised_relative_mce == pytest.approx(1 / 3)


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (({}, 0.1), {}, "err_by_family_severity: no family given"),
    (({"a": [0.1], "b": [0.2], "c": [0.3]}, 0.1), {"baseline": {"a": 0.5}},
     "baseline: no error for b, c"),
    ((TABLE, 0.1), {"baseline_clean_err": 0.2},
     "baseline_clean_err: needs baseline (the baseline's per-family errors)")])
def test_corruption_error_refusals_are_these_exact_lines(args, kwargs, message):
    assert _message(corruption_error, *args, **kwargs) == message


# register(): the registry's own code runs at import; these tests register a family of their
# own (in a copy of the registry) so that every line of it runs under test.

@pytest.fixture()
def registry(monkeypatch):
    copy = dict(CORRUPTIONS)
    monkeypatch.setattr(corruptions_module, "CORRUPTIONS", copy)
    return copy


def _probe(calls):
    def probe(images, param, generator):
        """A probe family."""
        calls.append((images, param, generator))
        # a float64 result outside [0, 1]: -1 where x < 0.5, 2 elsewhere
        return torch.where(images < 0.5, -1.0, 2.0).double()
    return probe


def test_a_registered_family_gets_the_images_the_severitys_parameter_and_the_generator(
        registry):
    calls = []
    apply = corruptions_module.register("probe", "noise", (10, 20, 30, 40, 50), "here")(
        _probe(calls))
    x, g = image(), gen()
    apply(x, 4, g)
    assert len(calls) == 1
    images, param, generator = calls[0]
    assert images is x and param == 40 and generator is g


def test_a_registered_family_is_clipped_to_0_1_in_the_images_dtype(registry):
    apply = corruptions_module.register("probe", "noise", (1, 2, 3, 4, 5))(_probe([]))
    x = torch.tensor([0.2, 0.7]).reshape(1, 1, 1, 2)
    out = apply(x, 1)
    assert out.dtype == torch.float32 and out.tolist() == [[[[0.0, 1.0]]]]


def test_a_registered_family_checks_its_input_under_its_own_name(registry):
    apply = corruptions_module.register("probe", "noise", (1, 2, 3, 4, 5))(_probe([]))
    assert _message(apply, torch.zeros(1, 1, 2, 2), 0) == (
        "probe: severity must be one of 1..5, got 0")
    assert _message(apply, torch.full((1, 1, 2, 2), 2.0), 1) == (
        "probe: images must be in [0, 1], got min 2 max 2")


def test_a_registered_family_enters_the_registry_with_its_table(registry):
    apply = corruptions_module.register("probe", "blur", [1, 2, 3, 4, 5], "a source")(
        _probe([]))
    entry = registry["probe"]
    assert (entry.name, entry.kind, entry.params, entry.source) == (
        "probe", "blur", (1, 2, 3, 4, 5), "a source")
    assert entry.apply is apply
    assert apply.__name__ == "probe" and apply.__doc__ == "A probe family."
    assert torch.equal(corruptions_module.corrupt(torch.zeros(1, 1, 2, 2), "probe", 1),
                       torch.zeros(1, 1, 2, 2))


def test_register_refuses_a_table_without_five_severities(registry):
    assert _message(corruptions_module.register, "probe", "noise", (1, 2, 3, 4)) == (
        "probe: params must hold 5 severities, got 4")


def test_register_refuses_a_name_already_registered(registry):
    assert _message(corruptions_module.register, "pixelate", "digital", (1, 2, 3, 4, 5)) == (
        "corruption 'pixelate' is already registered")
