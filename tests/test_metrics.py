"""mladv.metrics (attack metrics) and mladv.experiment.metrics (Table 2 / Fig. 5 metrics): each
value against what it must equal, computed by hand on a few pixels / six labels."""
import math
import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from sklearn.metrics import roc_curve

from mladv.experiment.metrics import (
    balanced_metrics,
    classification_metrics,
    mean_std,
    roc_per_class,
)
from mladv.metrics import perturbation_norms, psnr, ssim, success_rate, total_variation

# --- mladv.metrics ------------------------------------------------------------------------------

CLEAN_PRED, LABELS = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 0])  # image 2 wrong


def test_success_rate_is_the_share_of_correct_clean_images_misclassified_after_attack():
    adv_pred = torch.tensor([1, 1, 0, 0])  # of the 3 correct: image 0 fooled, 1 and 3 not
    assert success_rate(CLEAN_PRED, adv_pred, LABELS) == pytest.approx(1 / 3)


def test_targeted_success_rate_is_the_share_of_correct_clean_images_sent_to_their_target():
    adv_pred, target = torch.tensor([1, 1, 0, 0]), torch.tensor([1, 1, 0, 2])
    assert success_rate(CLEAN_PRED, adv_pred, LABELS, target) == pytest.approx(2 / 3)


def test_success_rate_is_nan_when_no_clean_image_is_correct():
    assert math.isnan(success_rate(torch.tensor([1, 0]), torch.tensor([1, 0]),
                                   torch.tensor([0, 1])))


def test_perturbation_norms_are_means_over_images_and_the_largest_linf():
    clean = torch.full((2, 1, 2, 2), 0.125)
    adv = clean.clone()
    adv[0, 0, 0] += torch.tensor([0.75, -0.5])  # image 1 unchanged
    norms = perturbation_norms(clean, adv)
    assert norms == pytest.approx({"l1": (1.25 / 4) / 2, "l2": math.sqrt(0.8125) / 2,
                                   "linf": 0.75 / 2, "linf_max": 0.75})


def test_perturbation_norms_of_no_images_have_linf_max_zero():
    assert perturbation_norms(torch.zeros(0, 1, 2, 2), torch.zeros(0, 1, 2, 2))["linf_max"] == 0.0


def wang_ssim(x: np.ndarray, y: np.ndarray, win: int = 11) -> float:
    """Wang et al. (IEEE TIP 2004) written out in numpy: 11 x 11 Gaussian weights (sigma 1.5,
    normalised), population (co)variances, C1 = 0.01^2, C2 = 0.03^2 (L = 1), the map averaged
    over the pixels ``(win - 1) / 2`` from the border; pixels near the border read a mirrored
    image ('symmetric', d c b a | a b c d), which only images under 11 px a side reach."""
    t = np.arange(-5, 6)
    g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    k = np.outer(g, g) / g.sum() ** 2

    def mean(z: np.ndarray) -> np.ndarray:
        return (np.lib.stride_tricks.sliding_window_view(np.pad(z, 5, mode="symmetric"),
                                                         (11, 11)) * k).sum((-1, -2))

    mx, my = mean(x), mean(y)
    vx, vy, cxy = mean(x * x) - mx ** 2, mean(y * y) - my ** 2, mean(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    c = (win - 1) // 2
    return float(m[c:m.shape[0] - c, c:m.shape[1] - c].mean())


def test_ssim_is_wangs_formula_with_an_11x11_gaussian_window_averaged_over_images_channels():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 2, 24, 20, generator=g, dtype=torch.float64)
    adv = (clean + 0.1 * torch.rand(2, 2, 24, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    by_hand = np.mean([wang_ssim(clean[i, c].numpy(), adv[i, c].numpy())
                       for i in range(2) for c in range(2)])
    assert ssim(clean, adv) == pytest.approx(float(by_hand), abs=1e-10)


def test_ssim_is_not_the_7x7_uniform_window():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 1, 24, 24, generator=g, dtype=torch.float64)
    adv = (clean + 0.2 * torch.rand(1, 1, 24, 24, generator=g, dtype=torch.float64)).clamp(0, 1)
    uniform = structural_similarity(clean[0, 0].numpy(), adv[0, 0].numpy(), data_range=1.0,
                                    win_size=7)
    assert abs(ssim(clean, adv) - uniform) > 1e-3


def test_ssim_of_two_flat_images_is_the_luminance_term_by_hand():
    # flat: variances and covariance 0, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1)
    a, b = torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), 0.25)
    c1 = 0.01 ** 2
    assert ssim(a, b) == pytest.approx((2 * 0.5 * 0.25 + c1) / (0.25 + 0.0625 + c1), abs=1e-12)


def test_ssim_of_an_image_with_itself_is_one():
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("h", "w", "win"), [(6, 8, 5), (8, 6, 5), (8, 5, 5), (5, 8, 5),
                                             (9, 9, 9), (12, 13, 11)])
def test_ssim_of_an_image_under_11_px_averages_the_largest_odd_interior_that_fits(h, w, win):
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    adv = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    by_hand = wang_ssim(clean[0, 0].numpy(), adv[0, 0].numpy(), win)
    assert ssim(clean, adv) == pytest.approx(by_hand, abs=1e-10)


def test_ssim_of_no_images_is_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(ssim(torch.zeros(0, 1, 8, 8), torch.zeros(0, 1, 8, 8)))


def test_psnr_is_the_mean_over_images_of_10_log10_of_one_over_the_mse():
    clean = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    adv = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.01)]).double()
    assert psnr(clean, adv) == pytest.approx((20.0 + 40.0) / 2)


def test_psnr_takes_the_mse_over_each_whole_image_before_the_log():
    clean = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    adv = torch.tensor([[[[0.1, 0.3]]]], dtype=torch.float64)  # mse 0.05, not per pixel
    assert psnr(clean, adv) == pytest.approx(10 * math.log10(20.0))


def test_psnr_of_identical_images_is_inf():
    assert psnr(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)) == math.inf


def test_total_variation_is_the_mean_per_image_of_vertical_plus_horizontal_steps():
    delta = torch.zeros(2, 1, 2, 3)
    delta[0, 0, 0, 1] = 1.0  # vertical steps 1, horizontal 2; image 1 flat
    delta[1, 0, :, 2] = 0.5  # vertical 0, horizontal 2 x 0.5
    assert total_variation(delta) == pytest.approx((3.0 + 1.0) / 2)


def test_total_variation_by_hand_on_a_3x3_delta():
    delta = torch.tensor([[[[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.25]]]])
    # vertical: 0.5 + 0.5 + 0.25 (columns); horizontal: 0.5 + 0 + 0.25 (rows)
    assert total_variation(delta) == pytest.approx(2.0)


# --- mladv.experiment.metrics -------------------------------------------------------------------

CLASSES = ("a", "b", "c")
Y = [0, 0, 1, 1, 2, 2]
PROBS = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3],
                  [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.4, 0.1, 0.5]])  # predicts 0 1 1 1 2 2


def test_classification_metrics_by_hand_on_six_images():
    """Per class (support 2 each): precision 1, 2/3, 1; recall 1/2, 1, 1; F1 2/3, 4/5, 1;
    AUC (pairs ranked right of 8) 7/8, 7/8, 8/8; weighted = plain means."""
    m = classification_metrics(Y, PROBS, CLASSES)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["recall"] == pytest.approx(5 / 6)
    assert m["precision"] == pytest.approx(8 / 9)
    assert m["f1"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    assert m["auc_per_class"] == pytest.approx({"a": 7 / 8, "b": 7 / 8, "c": 1.0})
    assert m["auc_macro"] == pytest.approx((7 / 8 + 7 / 8 + 1) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 2]]


def test_balanced_accuracy_and_macro_f1_by_hand_on_unbalanced_classes():
    """Supports 4 / 1 / 1 (rows true): recalls 3/4, 1, 0 -> balanced accuracy 7/12 where plain
    accuracy is 4/6; F1 per class 2*3/(4+4) = 3/4, 2*1/(1+2) = 2/3, 0 -> macro-F1
    (3/4 + 2/3) / 3."""
    m = balanced_metrics([[3, 1, 0], [0, 1, 0], [1, 0, 0]])
    assert m == {"balanced_accuracy": pytest.approx(7 / 12),
                 "macro_f1": pytest.approx((3 / 4 + 2 / 3 + 0) / 3)}


def test_balanced_metrics_agree_with_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    cm = np.zeros((3, 3), dtype=int)
    np.add.at(cm, (y, pred), 1)
    m = balanced_metrics(cm)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_balanced_metrics_skip_an_absent_class_in_recall_and_count_it_zero_in_f1():
    m = balanced_metrics([[2, 0, 0], [0, 0, 0], [0, 0, 2]])  # class b neither present nor predicted
    assert m == {"balanced_accuracy": 1.0, "macro_f1": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="K x K"):
        balanced_metrics([[1, 2]])


def test_balanced_metrics_of_one_class_are_its_recall_and_f1():
    assert balanced_metrics([[3]]) == {"balanced_accuracy": 1.0, "macro_f1": 1.0}


def test_balanced_metrics_of_no_image_are_nan_and_zero_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" on the way
        m = balanced_metrics([[0, 0], [0, 0]])
    assert math.isnan(m["balanced_accuracy"]) and m["macro_f1"] == 0.0


def test_classification_metrics_hold_balanced_accuracy_and_macro_f1():
    m = classification_metrics(Y, PROBS, CLASSES)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)


def test_classification_metrics_precision_counts_a_never_predicted_class_as_zero_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics([0, 1], np.array([[0.9, 0.1], [0.8, 0.2]]), ("a", "b"))
    assert m["precision"] == pytest.approx(0.25)  # class a: 1/2, class b: 0 (no warning)


def test_two_class_macro_auc_is_the_auc_of_the_second_column():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    m = classification_metrics([0, 0, 1, 1], probs, ("a", "b"))
    assert m["auc_macro"] == pytest.approx(0.75)  # (0.3 > 0.1) + (0.8 > 0.1, 0.6) of 4 pairs


def test_a_class_missing_from_the_labels_has_nan_auc_and_macro_averages_the_others():
    y, probs = [0, 0, 1, 1], PROBS[:4]
    m = classification_metrics(y, probs, CLASSES)
    assert math.isnan(m["auc_per_class"]["c"])
    assert m["auc_per_class"]["a"] == pytest.approx(1.0)  # 0.7, 0.3 over 0.2, 0.1
    assert m["auc_per_class"]["b"] == pytest.approx(0.75)  # 0.5 < 0.6 only
    assert m["auc_macro"] == pytest.approx((1.0 + 0.75) / 2)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]  # K x K, class c too


def test_one_label_only_gives_nan_macro_auc_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics([1, 1], PROBS[:2], CLASSES)
    assert math.isnan(m["auc_macro"])


@pytest.mark.parametrize("shape", [(6, 2), (5, 3), (6,)])
def test_probs_of_the_wrong_shape_is_one_line_naming_probs(shape):
    with pytest.raises(ValueError, match=r"^probs must have shape \(6, 3\)"):
        classification_metrics(Y, np.full(shape, 1 / 3), CLASSES)


def test_roc_per_class_is_sklearns_one_vs_rest_curve_and_empty_where_a_class_is_absent():
    y = [0, 0, 2, 2]  # class 1 absent
    curves = roc_per_class(y, PROBS[:4])
    assert len(curves) == 3
    for i in (0, 2):
        fpr, tpr, _ = roc_curve([int(v == i) for v in y], PROBS[:4, i])
        assert np.array_equal(curves[i][0], fpr) and np.array_equal(curves[i][1], tpr)
    assert curves[1][0].size == 0 and curves[1][1].size == 0


def test_mean_std_is_the_mean_and_sample_std_leaving_nan_and_none_out():
    assert mean_std([1.0, float("nan"), 2.0, None, 6.0]) == {
        "mean": 3.0, "std": pytest.approx(math.sqrt(7.0)), "n": 3}


def test_mean_std_of_two_seeds_has_their_sample_std():
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2.0)), "n": 2}


def test_mean_std_of_one_seed_has_no_std_and_of_none_no_mean():
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
