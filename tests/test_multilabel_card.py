"""The multilabel report card (issue 22 item 6): per-finding AUROC, macro AUROC and its drop,
sensitivity / specificity at the thresholds, flip rates, patient CIs; mladv evaluate on nih14."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mladv.cli import main
from mladv.evaluation.multilabel_report import multilabel_report
from mladv.evaluation.stats import bootstrap_ci
from mladv.robustness import RobustnessOptions
from model_helpers import Rows
from nih_helpers import require_nih14

pytestmark = pytest.mark.usefixtures("one_thread")
NAN = math.nan
LOGITS = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.5, 5.0], [1.0, -1.0]])
TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, NAN], [0.0, 1.0]])
NONE = RobustnessOptions(attacks=(), pgd_eps=(), noise_sigmas=(), max_images=None)



def _report(opts=NONE, **kw):
    return multilabel_report(Rows(LOGITS), torch.zeros(4, 1, 2, 2), TARGETS, opts, **kw)


def test_per_finding_and_macro_auroc_by_hand():
    """Finding 0: positives 2, 0.5 against negatives -1, 1: 3 of 4 pairs -> 3/4. Finding 1 over
    its known rows 0, 1, 3: positives 1, -1 against negative 0: 1 of 2 -> 1/2. Macro 5/8."""
    r = _report()
    assert r["auroc"]["clean"] == [0.75, 0.5]
    assert r["macro"]["clean"] == 0.625 and r["n_defined"]["clean"] == 2


def test_sensitivity_and_specificity_at_the_default_threshold_by_hand():
    """At 0.5 (logit 0, inclusive): finding 0 calls rows 0, 2, 3: both positives (1), one of
    two negatives cleared (1/2); finding 1 calls 0, 1, 2: positive 1 found, 3 missed (1/2), its
    one negative (row 0) called (0)."""
    op = _report()["operating_point"]
    assert op["sensitivity"] == [1.0, 0.5] and op["specificity"] == [0.5, 0.0]
    assert op["positives"] == [2, 2] and op["negatives"] == [2, 1]


def test_noise_that_cannot_move_the_logits_drops_nothing_and_flips_nothing():
    r = _report(RobustnessOptions(attacks=(), pgd_eps=(), noise_sigmas=(0.3,), max_images=None))
    assert r["auroc"]["auroc_noise_0.3"] == [0.75, 0.5]
    assert r["drop"]["auroc_noise_0.3"] == 0.0 and r["flip_rate"]["auroc_noise_0.3"] == [0, 0]


def test_the_macro_auroc_ci_resamples_patients():
    """Patients a a b c: the CI is the patient bootstrap of the macro AUROC with the options'
    resamples, level and the seed (rebuilt here by hand from per-finding AUROCs): every
    resample averages the findings defined on all images; a resample where one of them has a
    single class is undefined (skipped), so a rare finding never drops in and out of the mean."""
    from sklearn.metrics import roc_auc_score

    def auroc(idx, k):
        rows = [int(i) for i in idx if not math.isnan(TARGETS[int(i), k])]
        y = [float(TARGETS[i, k]) for i in rows]
        return roc_auc_score(y, [float(LOGITS[i, k]) for i in rows]) if len(set(y)) == 2 \
            else NAN

    defined = [k for k in range(2) if not math.isnan(auroc(range(4), k))]

    def macro(idx):
        vals = [auroc(idx, k) for k in defined]
        return NAN if not vals or any(math.isnan(v) for v in vals) else sum(vals) / len(vals)

    opts = RobustnessOptions(attacks=(), pgd_eps=(), noise_sigmas=(), max_images=None,
                             bootstrap=40)
    r = _report(opts, seed=2, patients=["a", "a", "b", "c"])
    want = bootstrap_ci(macro, ["a", "a", "b", "c"], n_boot=40, seed=2)
    assert r["ci"]["clean"]["low"] == pytest.approx(want.low)
    assert r["ci"]["clean"]["high"] == pytest.approx(want.high)
    assert r["ci"]["clean"]["n_patients"] == 3


def test_mladv_evaluate_writes_the_multilabel_card_for_an_nih_checkpoint(tmp_path):
    """A small_cnn trained one epoch on nih14 at 32 px; the card: 14 findings' AUROC clean and
    under PGD, their flip rates, a macro AUROC with its CI, the per-finding table."""
    root = require_nih14()
    ckpt = tmp_path / "train"
    with pytest.raises(SystemExit) as exc:
        main(["train", f"nih:{root}", "--arch", "small_cnn", "--image-size", "32", "--epochs",
              "1", "--out", str(ckpt)])
    assert exc.value.code == 0
    out = tmp_path / "card"
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(ckpt / "model.pt"), f"nih:{root}", "--max-images", "8",
              "--pgd-eps", "2", "--pgd-steps", "2", "--no-mladv", "--noise-sigma", "0.05",
              "--bootstrap", "20", "--out", str(out)])
    assert exc.value.code == 0
    card = json.loads((out / "report.json").read_text())
    assert card["task"] == "multilabel" and len(card["findings"]) == 14
    assert set(card["auroc"]) == {"clean", "clean_subset", "auroc_pgd_2", "auroc_noise_0.05"}
    assert len(card["auroc"]["auroc_pgd_2"]) == 14 and len(card["flip_rate"]["auroc_pgd_2"]) == 14
    assert card["sizes"]["auroc_pgd_2"] == 8 and card["sizes"]["clean"] == card["n"]
    assert set(card["ci"]) == set(card["auroc"])
    md = (out / "report.md").read_text()
    assert "## Per finding" in md and "| Cardiomegaly |" in md


def test_the_multilabel_card_names_the_options_it_does_not_measure():
    from mladv.evaluate import multilabel_not_measured

    asked = RobustnessOptions(acquisition_shift=True, corruptions=("gaussian_noise",),
                              autoattack_images=4, min_eps_images=2, bm3d_images=0)
    assert multilabel_not_measured(asked) == ["acquisition shift", "adversarial chain",
                                              "corruptions", "AutoAttack",
                                              "smallest flipping eps"]
    assert multilabel_not_measured(RobustnessOptions()) == []
