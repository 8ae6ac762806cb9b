import pytest
import torch

from mladv.losses import adversarial_loss, detail_loss, gram_matrix, origin_loss, style_loss


def test_gram_matrix_is_normalised_by_element_count():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # 1 x 2 x 2 x 2
    g = gram_matrix(f)
    # F = [[1,2,3,4],[0,1,0,1]]; F F^T = [[30, 6], [6, 2]]; C*H*W = 8
    assert torch.allclose(g, torch.tensor([[[30.0, 6.0], [6.0, 2.0]]]) / 8)


def test_style_loss_is_zero_for_equal_features_and_sums_squares():
    f = torch.randn(2, 3, 4, 4)
    assert torch.allclose(style_loss([gram_matrix(f)], [f]), torch.zeros(2))
    ref = torch.zeros(1, 3, 3)
    expected = gram_matrix(f).pow(2).flatten(1).sum(1)
    assert torch.allclose(style_loss([ref], [f]), expected)


def test_origin_loss_is_mean_squared_difference_per_sample():
    a, b = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    b[1] *= 2
    assert torch.allclose(origin_loss([a], [b]), torch.tensor([1.0, 4.0]))


def test_origin_loss_sum_is_eq5_as_written():
    """``reduction="sum"``: the squared L2 norm of eq. 5, summed over the layers of O."""
    a, b = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    b[1] *= 2
    c, d = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    got = origin_loss([a, c], [b, d], reduction="sum")
    assert torch.allclose(got, torch.tensor([12 * 1.0 + 16 * 0.25, 12 * 4.0 + 16 * 0.25]))
    mean = origin_loss([a, c], [b, d])
    assert torch.allclose(mean, torch.tensor([1.0 + 0.25, 4.0 + 0.25]))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        origin_loss([a], [b], reduction="max")  # type: ignore[arg-type]


def test_detail_loss_is_total_variation_of_own_neighbours():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # vertical: (0-2)^2 + (1-4)^2 = 13 ; horizontal: (0-1)^2 + (2-4)^2 = 5
    assert torch.allclose(detail_loss(x), torch.tensor([18.0]))
    assert detail_loss(torch.full((1, 1, 5, 5), 0.3)).item() == 0.0


def test_adversarial_loss_untargeted_is_log_p_true():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    expected = torch.log_softmax(logits, 1)[0, 0]
    assert torch.allclose(adversarial_loss(logits, torch.tensor([0])), expected[None])


def test_adversarial_loss_targeted_adds_minus_log_p_target():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logp = torch.log_softmax(logits, 1)[0]
    got = adversarial_loss(logits, torch.tensor([0]), torch.tensor([2]))
    assert torch.allclose(got, (logp[0] - logp[2])[None])
