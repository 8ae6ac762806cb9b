"""BM3D in a process pool, the image cap, and the share of perturbation energy removed."""
import pytest
import torch

from mladv.data import make_phantoms
from mladv.denoise import bm3d_denoise, energy_removed, select_for_bm3d


@pytest.fixture(scope="module")
def smooth_images():
    return make_phantoms(1, 16, seed=0).images  # 3 images, 16 px


def test_bm3d_removes_gaussian_noise(smooth_images):
    x = smooth_images[:2]
    gen = torch.Generator().manual_seed(0)
    noisy = (x + 0.06 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    out = bm3d_denoise(noisy, 0.06, workers=1)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).pow(2).mean() < 0.6 * (noisy - x).pow(2).mean()


def test_process_pool_gives_the_same_images_as_one_process(smooth_images):
    x = smooth_images[:2]
    assert torch.allclose(bm3d_denoise(x, 8 / 255, workers=2), bm3d_denoise(x, 8 / 255, workers=1))


def test_cap_warns_and_samples_with_the_seed():
    with pytest.warns(UserWarning, match="cap of 4"):
        a = select_for_bm3d(10, 4, seed=3)
    with pytest.warns(UserWarning):
        b = select_for_bm3d(10, 4, seed=3)
    assert torch.equal(a, b) and len(a) == 4 and len(set(a.tolist())) == 4
    assert torch.equal(a, a.sort().values) and a.max() < 10
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(select_for_bm3d(4, 4, seed=3), torch.arange(4))
        assert torch.equal(select_for_bm3d(4, None, seed=3), torch.arange(4))
    with pytest.raises(ValueError, match="cap"):
        select_for_bm3d(4, 0, seed=0)


def test_energy_removed_bounds():
    clean = torch.rand(3, 1, 8, 8) * 0.5
    adv = clean + 0.03
    assert torch.allclose(energy_removed(clean, adv, clean, adv), torch.zeros(3))
    assert torch.allclose(energy_removed(clean, adv, clean, clean), torch.ones(3))
    half = energy_removed(clean, adv, clean, clean + 0.03 / 2 ** 0.5)
    assert torch.allclose(half, torch.full((3,), 0.5), atol=1e-5)
    assert torch.isnan(energy_removed(clean, clean, clean, clean)).all()


def test_bad_sigma_is_refused(smooth_images):
    with pytest.raises(ValueError, match="sigma"):
        bm3d_denoise(smooth_images, 0.0)
