import pytest
import torch

from mladv.attacks import cut_noise, heuristic_projection, projection_kernel


@pytest.mark.parametrize("size", [3, 5, 7])
def test_kernel_has_zero_centre_and_sums_to_one(size):
    k = projection_kernel(size)
    assert k.shape == (size, size)
    assert k[size // 2, size // 2] == 0
    assert torch.isclose(k.sum(), torch.tensor(1.0))
    off = k.clone()
    off[size // 2, size // 2] = 1 / (size * size - 1)
    assert torch.allclose(off, torch.full_like(k, 1 / (size * size - 1)))


@pytest.mark.parametrize("size", [2, 4, 1])
def test_kernel_rejects_even_or_tiny_sizes(size):
    with pytest.raises(ValueError, match="odd"):
        projection_kernel(size)


def test_cut_noise_is_zero_within_budget_and_the_excess_beyond():
    a = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.1, 0.3])
    assert torch.allclose(cut_noise(a, 0.1), torch.tensor([-0.4, 0.0, 0.0, 0.0, 0.0, 0.2]))


def test_projection_is_zero_when_amplified_noise_is_within_eps():
    a = torch.rand(2, 1, 8, 8) * 0.05
    assert torch.count_nonzero(heuristic_projection(a, 0.05, 0.01, projection_kernel(3))) == 0


def test_projection_moves_excess_to_neighbours_not_to_the_pixel_itself():
    a = torch.zeros(1, 1, 5, 5)
    a[0, 0, 2, 2] = 1.0
    proj = heuristic_projection(a, 0.1, 0.02, projection_kernel(3))
    assert proj[0, 0, 2, 2] == 0  # kernel centre is 0
    assert torch.allclose(proj[0, 0, 1:4, 1:4].sum(), torch.tensor(8 * 0.02))
    assert proj.abs().sum() == pytest.approx(8 * 0.02)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_projection_is_per_channel(channels):
    a = torch.zeros(1, channels, 6, 6)
    a[0, 0, 3, 3] = 1.0
    proj = heuristic_projection(a, 0.1, 0.02, projection_kernel(3))
    assert proj.shape == a.shape
    assert torch.count_nonzero(proj[0, 1:]) == 0


def test_default_kernel_is_the_papers_3x3():
    assert torch.equal(projection_kernel(), projection_kernel(3))


def test_kernel_has_the_requested_dtype_and_device():
    k = projection_kernel(3, dtype=torch.float64, device="meta")
    assert (k.dtype, k.device.type) == (torch.float64, "meta")


def test_5x5_projection_spreads_a_spike_over_its_24_neighbours_in_float64():
    """Eq. 9 with w = 5 (padding 2, same size out) on a float64 ``A`` (the kernel follows it)."""
    a = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    a[0, 0, 3, 3] = 1.0
    proj = heuristic_projection(a, 0.1, 0.02, projection_kernel(5))
    expected = torch.full((5, 5), 0.02, dtype=torch.float64)
    expected[2, 2] = 0.0
    assert proj.dtype == torch.float64
    assert torch.equal(proj[0, 0, 1:6, 1:6], expected)
    assert torch.count_nonzero(proj) == 24
