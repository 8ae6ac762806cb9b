"""Every registered attack on a multilabel model (issue 22 item 4), the targeted multilabel threat
and multilabel adversarial training (item 5).

A contract class runs over the registry's attack names (kornia style): output shape, [0, 1],
the eps ball, seed determinism, the model's mode, unknown (NaN) findings masked, one-line label
errors. Expected values are derived by hand from the documented definitions."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from mladv.adversarial_training import AdversarialBatch
from mladv.attacks import ATTACKS, make_attack
from mladv.attacks.chain import Chain
from mladv.attacks.gama import multilabel_margin
from mladv.attacks.multilabel import bernoulli_kl, fooled, nearest_label_partners
from mladv.attacks.references import style_reference
from mladv.attacks.targeted_finding import (
    TargetedFinding,
    targeted_success,
    targeted_success_rate,
)
from mladv.data import ImageSet
from mladv.fingerprint import attack_settings
from mladv.models import build_model
from mladv.tasks import decide
from mladv.training import train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")

NAN = float("nan")
K = 3
EPS = 8 / 255
FAST = {"mladv": {"steps": 2, "refine": 2}, "pgd": {"steps": 2}, "mifgsm": {"steps": 2},
        "pifgsm": {"steps": 2}, "gama": {"steps": 3}, "rays": {"budget": 30}, "fgsm": {},
        "chain": {"steps": 1}, "targeted-finding": {"steps": 2}}
ONE_STEP = {"mladv": {"steps": 1, "refine": 0}, "pgd": {"steps": 1}, "mifgsm": {"steps": 1},
            "pifgsm": {"steps": 1}, "gama": {"steps": 1}, "rays": {"budget": 4}, "fgsm": {},
            "chain": {"steps": 1}, "targeted-finding": {"steps": 1}}
NOT_LINF = {"chain"}  # bounded in its transform parameters, not in an L-inf ball


class Net(nn.Module):
    """A 1-channel CNN with ``k`` logits and fixed weights (its own generator): multilabel."""

    task = "multilabel"

    def __init__(self, k: int = K, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(16, k)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x))
        return out


class FirstOutputs(nn.Module):
    """The first ``k`` logits of ``model``: the same model without its last findings."""

    task = "multilabel"

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(x)[:, :self.k]
        return out


def _images(n: int = 4, size: int = 16, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)


LABELS = torch.tensor([[1.0, 0.0, NAN], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [NAN, 0.0, 1.0]])


def test_the_contract_covers_every_registered_attack():
    assert set(FAST) == set(ATTACKS) == set(ONE_STEP)


@pytest.mark.parametrize("name", sorted(ATTACKS))
class TestEveryAttackOnAMultilabelModel:
    def test_output_has_the_input_shape_and_lies_in_the_unit_range(self, name):
        x = _images()
        adv = make_attack(name, Net(), seed=0, **FAST[name])(x, LABELS)
        assert adv.shape == x.shape and adv.dtype == torch.float32
        assert adv.min() >= 0 and adv.max() <= 1

    def test_perturbation_stays_in_the_eps_ball(self, name):
        if name in NOT_LINF:
            pytest.skip("the chain is bounded in its transform parameters, not in pixels")
        x = _images()
        adv = make_attack(name, Net(), eps=EPS, seed=0, **FAST[name])(x, LABELS)
        assert (adv - x).abs().max() <= EPS + 1e-6

    def test_the_same_seed_gives_the_same_output(self, name):
        x = _images()
        first = make_attack(name, Net(), seed=3, **FAST[name])(x, LABELS)
        again = make_attack(name, Net(), seed=3, **FAST[name])(x, LABELS)
        assert torch.equal(first, again)

    def test_the_model_mode_is_restored(self, name):
        model = Net().train()
        make_attack(name, model, seed=0, **ONE_STEP[name])(_images(), LABELS)
        assert model.training

    def test_an_unknown_finding_is_ignored_as_if_the_model_did_not_predict_it(self, name):
        """Labels with finding 3 unknown (NaN) for every image give exactly the attack on the
        model without output 3: the mask leaves no trace (a loss, partner, margin or decision
        that read NaN as 0 or 1 would differ). float64, so no rounding can flip a sign."""
        model = Net(dtype=torch.float64)
        x = _images(dtype=torch.float64)
        y = LABELS.clone().double()
        y[:, 2] = NAN
        options = {**FAST[name], **({"style_weight": 1.0} if name == "mladv" else {})}
        full = make_attack(name, model, seed=0, **options)(x, y)
        fewer = make_attack(name, FirstOutputs(model, 2), seed=0, **options)(x, y[:, :2])
        assert (full - fewer).abs().max() <= 1e-12
        assert (full - x).abs().max() > 0  # the attack did something

    def test_class_indices_are_refused_in_one_line_naming_labels(self, name):
        atk = make_attack(name, Net(), seed=0, **ONE_STEP[name])
        with pytest.raises(ValueError, match=r"^labels for a multilabel model must have shape "
                                             r"4 x K .*got \(4,\)$"):
            atk(_images(), torch.tensor([0, 1, 2, 0]))

    def test_a_label_other_than_0_1_or_nan_is_refused_in_one_line(self, name):
        atk = make_attack(name, Net(), seed=0, **ONE_STEP[name])
        bad = LABELS.clone()
        bad[0, 0] = 0.5
        with pytest.raises(ValueError, match=r"^labels: .*0, 1 or NaN.*0\.5$"):
            atk(_images(), bad)

    def test_labels_with_another_finding_count_are_refused_before_the_attack(self, name):
        atk = make_attack(name, Net(), seed=0, **ONE_STEP[name])
        with pytest.raises(ValueError, match=r"^labels have 2 columns but the model predicts 3"):
            atk(_images(), LABELS[:, :2])

    def test_takes_bf16_and_channels_last(self, name):
        x = _images()
        adv = make_attack(name, Net(), seed=0, precision="bf16", channels_last=True,
                          **ONE_STEP[name])(x, LABELS)
        assert adv.dtype == torch.float32 and adv.is_contiguous()
        assert name in NOT_LINF or (adv - x).abs().max() <= EPS + 1e-6


# -- the sign-gradient attacks: the masked BCE -------------------------------------------------
@pytest.mark.parametrize("name, options", [
    ("fgsm", {}), ("pgd", {"steps": 3, "random_start": False}), ("mifgsm", {"steps": 3}),
    ("pifgsm", {"steps": 3})])
def test_an_image_whose_every_finding_is_unknown_is_not_moved(name, options):
    """Its masked BCE is 0 with a zero gradient, so sign(0) = 0: it stays the clean image,
    while the image beside it (known findings) moves."""
    x = _images(2)
    y = torch.tensor([[NAN, NAN, NAN], [1.0, 0.0, 1.0]])
    adv = make_attack(name, Net(), seed=0, **options)(x, y)
    assert torch.equal(adv[0], x[0])
    assert (adv[1] - x[1]).abs().max() > 0


def test_pgd_random_start_is_all_an_unknown_image_gets():
    x = _images(2)
    y = torch.tensor([[NAN, NAN, NAN], [1.0, 0.0, 1.0]])
    moved = make_attack("pgd", Net(), seed=0, steps=3)(x, y)
    start = make_attack("pgd", Net(), seed=0, steps=3, alpha=1e-9)(x, y)  # steps move < 1e-8
    assert (moved[0] - start[0]).abs().max() <= 3e-9


def test_targeted_mode_without_target_labels_is_refused_on_a_multilabel_model():
    with pytest.raises(ValueError, match="targeted mode on a multilabel model needs "
                                         "target_labels"):
        make_attack("pgd", Net(), targeted=True)(_images(), LABELS)


def test_a_multilabel_attack_records_its_task_and_a_multiclass_one_does_not():
    """The task enters the settings (and so the reuse keys) only when multilabel."""
    multilabel = attack_settings(make_attack("pgd", Net(), steps=2))
    multiclass = attack_settings(make_attack("pgd", Net(), steps=2, task="multiclass"))
    assert multilabel["task"] == "multilabel"
    assert "task" not in multiclass
    assert {k: v for k, v in multilabel.items() if k != "task"} == multiclass


# -- MLAdv: the nearest-label-set partner ------------------------------------------------------
PARTNER_LABELS = torch.tensor([[1.0, 0.0, NAN], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                               [NAN, 0.0, 1.0]])


def test_nearest_label_partner_by_hand():
    """Hamming distances over the findings known in both (worked out by hand):
    d(0,1)=1 d(0,2)=1 d(0,3)=0 | d(1,2)=3 d(1,3)=2 | d(2,3)=0. Partners: 0->3; 1->0 (1 < 2, 3);
    2->3; 3: d(3,0)=0 ties d(3,2)=0 -> the lowest index, 0. Reading NaN as 0 would give
    d(0,3)=2 and 0->1."""
    assert nearest_label_partners(PARTNER_LABELS).tolist() == [3, 0, 3, 0]


def test_an_image_alone_in_its_batch_is_its_own_partner():
    assert nearest_label_partners(LABELS[:1]).tolist() == [0]


def test_a_pair_with_no_finding_known_in_both_is_at_distance_zero():
    # d(0,1)=0 (nothing known in both) ties d(0,2)=0 -> 1; d(1,2)=1 -> 1's partner 0; 2->0
    y = torch.tensor([[1.0, NAN], [NAN, 0.0], [1.0, 1.0]])
    assert nearest_label_partners(y).tolist() == [1, 0, 0]


def test_mladv_styles_each_image_after_its_nearest_label_set_partner():
    x = _images()
    ref = style_reference(x, PARTNER_LABELS, "same-class", torch.Generator(), multilabel=True)
    assert torch.equal(ref, x[[3, 0, 3, 0]])


# -- success tests, margins and KL by hand -----------------------------------------------------
def test_fooled_means_some_known_finding_disagrees_with_its_label_at_one_half():
    logits = torch.tensor([[2.0, -1.0, 5.0], [2.0, 1.0, -5.0], [-0.1, -1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, NAN], [1.0, 0.0, NAN], [1.0, 0.0, 1.0]])
    # 0: all known right; 1: finding 1 says 1 for a 0; 2: finding 0 says 0 (sigmoid(-0.1) < .5)
    assert fooled(logits, labels).tolist() == [False, True, True]


def test_fooled_uses_the_models_thresholds():
    logits = torch.tensor([[0.5, -1.0]])  # sigmoid(0.5) = 0.622
    labels = torch.tensor([[1.0, 0.0]])
    assert not fooled(logits, labels)[0]
    assert fooled(logits, labels, thresholds=[0.7, 0.5])[0]  # 0.622 < 0.7: finding 0 lost


def test_gama_multilabel_margin_by_hand():
    """m_k = s_k z_k at t = 0.5 (s = +1 present, -1 absent); untargeted max over known -m_k."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, -1.0, 3.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0, NAN], [1.0, 0.0, 0.0], [NAN, NAN, NAN]])
    # row 0: m = (2, 1, -) -> max(-2, -1) = -1; row 1: m = (-0.5, 1, -3) -> 3; row 2: none -> 0
    assert multilabel_margin(logits, labels).tolist() == [-1.0, 3.0, 0.0]


def test_gama_multilabel_margin_at_a_threshold():
    logits = torch.tensor([[0.0]])
    labels = torch.tensor([[1.0]])
    # t = 0.8: logit(0.8) = ln 4; m = 0 - ln 4; margin = ln 4 > 0: the finding is lost
    got = multilabel_margin(logits, labels, thresholds=[0.8])
    assert got.item() == pytest.approx(math.log(4.0))


def test_bernoulli_kl_by_hand():
    """p = sigmoid(0) = 1/2, q = sigmoid(ln 3) = 3/4:
    KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(4/3); the masked finding adds 0."""
    clean = torch.tensor([[0.0, 0.0]])
    adv = torch.tensor([[math.log(3.0), 5.0]])
    known = torch.tensor([[True, False]])
    assert bernoulli_kl(clean, adv, known).item() == pytest.approx(0.5 * math.log(4 / 3))
    assert bernoulli_kl(clean, clean).item() == pytest.approx(0.0, abs=1e-7)


def test_the_chains_kl_loss_is_the_per_finding_bernoulli_kl_not_a_softmax_one():
    chain = Chain(Net(), loss="kl")
    clean = torch.tensor([[0.0, 0.0, 2.0]])
    logits = torch.tensor([[math.log(3.0), 0.0, -7.0]])
    labels = torch.tensor([[1.0, 0.0, NAN]])
    got = chain._loss(logits, labels, clean, None)
    assert got.item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)


def test_rays_succeeds_exactly_where_a_known_finding_crosses_its_threshold():
    model = Net()
    x = _images()
    atk = make_attack("rays", model, budget=60, eps=32 / 255)
    adv = atk(x, LABELS)
    with torch.no_grad():
        logits = model(adv)
    wrong = ((logits >= 0) != (LABELS == 1)) & ~torch.isnan(LABELS)
    assert atk.last_success.tolist() == wrong.any(1).tolist()


# -- the targeted multilabel threat ------------------------------------------------------------
def test_targeted_success_by_hand():
    clean = torch.tensor([[-1.0, 2.0, -3.0]] * 4)
    adv = torch.tensor([[0.5, 2.0, -3.0],    # f reached 1, others held: success
                        [-0.5, 2.0, -3.0],   # f still 0
                        [0.5, -1.0, -3.0],   # f reached, finding 1 lost
                        [0.5, 2.0, 1.0]])    # f reached, finding 2 added
    assert targeted_success(clean, adv, 0, 1).tolist() == [True, False, False, False]


def test_targeted_finding_refuses_a_multiclass_model_and_bad_options():
    multiclass = build_model("tiny_cnn", 3)
    with pytest.raises(ValueError, match="multilabel model"):
        make_attack("targeted-finding", multiclass)
    with pytest.raises(ValueError, match="to must be 0 .* or 1"):
        make_attack("targeted-finding", Net(), to=2)
    with pytest.raises(ValueError, match="finding 'Mass' is a name but the model carries no"):
        make_attack("targeted-finding", Net(), finding="Mass")
    with pytest.raises(ValueError, match=r"finding must be an index in \[0, 2\], got 3"):
        make_attack("targeted-finding", Net(), finding=3)(_images(), LABELS)


def test_targeted_finding_takes_a_finding_name_from_the_models_classes():
    model = Net()
    model.classes = ("Mass", "Nodule", "Effusion")  # type: ignore[assignment]
    by_name = make_attack("targeted-finding", model, finding="Nodule", seed=0, steps=2)
    by_index = make_attack("targeted-finding", model, finding=1, seed=0, steps=2)
    assert torch.equal(by_name(_images(), LABELS), by_index(_images(), LABELS))


def _patterned(n: int, gen: torch.Generator, size: int = 16, amp: float = 0.08
               ) -> tuple[Tensor, Tensor]:
    """Findings as visible patterns: finding 0 brightens the top-left quadrant, 1 the top-right,
    2 the bottom half, each by ``amp``, on grey noise. Labels ``n x 3``, each finding 1 w.p. 1/2."""
    y = (torch.rand(n, 3, generator=gen) < 0.5).float()
    x = 0.5 + 0.02 * torch.randn(n, 1, size, size, generator=gen)
    h = size // 2
    x[:, 0, :h, :h] += amp * y[:, 0, None, None]
    x[:, 0, :h, h:] += amp * y[:, 1, None, None]
    x[:, 0, h:, :] += amp * y[:, 2, None, None]
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def pattern_model():
    """small_cnn trained (train_classifier, masked BCE) on 64 patterned images, 6 epochs, and
    32 held-out images whose finding 0 the model calls absent."""
    gen = torch.Generator().manual_seed(0)
    x, y = _patterned(64, gen)
    data = ImageSet(x, y, ["a", "b", "c"], [f"{i}.png" for i in range(64)],
                    [str(i) for i in range(64)], task="multilabel")
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    train_classifier(model, data, epochs=6, batch_size=16, lr=1e-2, seed=0, progress=False,
                     transform=None)
    model.task = "multilabel"
    model.eval()
    xt, yt = _patterned(32, gen)
    with torch.no_grad():
        absent = model(xt)[:, 0] < 0
    return model, xt[absent], yt[absent]


def test_the_pattern_model_learned_the_findings(pattern_model):
    model, x, y = pattern_model
    with torch.no_grad():
        right = ((model(x) >= 0) == (y == 1)).float().mean()
    assert right >= 0.9 and len(x) >= 8


def test_targeted_finding_adds_the_finding_and_keeps_the_others_on_most_images(pattern_model):
    """On images where the trained model calls finding 0 absent, adding it at eps 8/255 must
    succeed (finding 0 reads present, findings 1 and 2 as before) on >= 80 % of them, and on
    more of them than untargeted PGD keeps findings 1 and 2 (which it is free to flip)."""
    model, x, y = pattern_model
    adv = make_attack("targeted-finding", model, finding=0, to=1, eps=EPS, steps=10,
                      seed=0)(x, y)
    rate = targeted_success_rate(model, x, adv, 0, 1)
    pgd = make_attack("pgd", model, eps=EPS, steps=10, seed=0)(x, y)
    with torch.no_grad():
        kept = ((model(x)[:, 1:] >= 0) == (model(pgd)[:, 1:] >= 0)).all(1).float().mean()
    assert rate >= 0.8
    assert rate > kept


def test_targeted_finding_removes_a_present_finding(pattern_model):
    """Removing takes a larger budget than adding here (the pattern is 0.08 = 20/255 bright):
    at eps 16/255 >= 80 % of the images where the model sees finding 1 lose it alone."""
    model, _, _ = pattern_model
    x, y = _patterned(32, torch.Generator().manual_seed(5))
    with torch.no_grad():
        present = model(x)[:, 1] >= 0
    x, y = x[present], y[present]
    adv = TargetedFinding(model, finding=1, to=0, eps=16 / 255, steps=10, seed=0)(x, y)
    assert targeted_success_rate(model, x, adv, 1, 0) >= 0.8


# -- adversarial training ----------------------------------------------------------------------
def _bn_multilabel() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("small_cnn", K)
    model.task = "multilabel"
    return model


def test_advprop_crafts_a_multilabel_batch_with_the_masked_bce():
    """The labels reach the attack as N x K (not arg-maxed): an image with every finding
    unknown has a zero gradient and stays clean under one FGSM-like PGD step, the other moves
    by eps."""
    adv = AdversarialBatch("pgd", mode="advprop", eps=2 / 255)
    adv.bind(_bn_multilabel())
    x = _images(2)
    y = torch.tensor([[NAN, NAN, NAN], [1.0, 0.0, 1.0]])
    x_in, y_in, mask, _ = adv(x, y)
    assert x_in.shape == (4, 1, 16, 16) and mask.tolist() == [False, False, True, True]
    torch.testing.assert_close(y_in[2:], y, equal_nan=True)
    assert torch.equal(x_in[2], x[0])
    assert (x_in[3] - x[1]).abs().max() == pytest.approx(2 / 255, abs=1e-6)


def test_adversarial_batch_loss_is_the_masked_bce_over_clean_and_adversarial_rows():
    """``-mean over known entries of [y log p + (1 - y) log(1 - p)]`` over the 2B rows (eval
    mode, so crafting twice gives the same rows)."""
    adv = AdversarialBatch("pgd", mode="online", eps=2 / 255)
    net = adv.bind(_bn_multilabel()).eval()
    x = _images(2)
    y = torch.tensor([[1.0, NAN, 0.0], [0.0, 1.0, 1.0]])
    loss = adv.loss(net, x, y)
    x_in = adv(x, y)[0]
    with torch.no_grad():
        z = net(x_in)
    yy = torch.cat([y, y])
    known = ~torch.isnan(yy)
    p = torch.sigmoid(z)
    by_hand = -(torch.where(yy == 1, p.log(), (1 - p).log()))[known].mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-4)


# -- a practitioner's model: torchxrayvision's DenseNet-121, random weights --------------------
def _xrv_densenet() -> nn.Module:
    """mladv's adapter (``xrv_model(weights=None)``: no download) where it exists, else xrv's
    DenseNet wrapped here: [0, 1] -> 2048 x - 1024, calibrated thresholds off (raw logits)."""
    xrv = pytest.importorskip("torchxrayvision")
    try:
        from mladv.adapters import xrv_model
    except ImportError:
        return _XrvWrap(xrv.models.DenseNet(weights=None))
    return xrv_model("densenet121-res224-all", weights=None)


class _XrvWrap(nn.Module):
    task = "multilabel"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        net.op_threshs = None  # type: ignore[assignment]

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x * 2048.0 - 1024.0)
        return out


@pytest.fixture(scope="module")
def xrv_densenet() -> nn.Module:
    torch.manual_seed(0)
    return _xrv_densenet().eval()  # the clean decisions below as the attacks see them


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_torchxrayvision_densenet_is_attacked_by_every_attack(xrv_densenet, name):
    """One image, one step each (about 10 s for all on one thread), every third finding unknown.
    Random weights saturate the logits (|z| in the hundreds), so the BCE gradient of a finding
    the model gets right is exactly 0 in float32: the gradient attacks get the model's clean
    decisions flipped (a non-zero gradient); RayS, gradient-free, gets the decisions themselves
    (an image the model gets right: something to search for)."""
    model = xrv_densenet
    x = _images(1, size=64)
    with torch.no_grad():
        y = decide(model(x), "multilabel", getattr(model, "thresholds", None)).float()
    if name != "rays":
        y = 1.0 - y
    y[0, ::3] = NAN
    adv = make_attack(name, model, eps=EPS, seed=0, **ONE_STEP[name])(x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert name in NOT_LINF or (adv - x).abs().max() <= EPS + 1e-6
    assert (adv - x).abs().max() > 0


# -- the exploratory variants and the torchattacks wrapper -------------------------------------
def test_the_margin_variant_hinges_the_per_finding_margin_on_a_multilabel_model():
    """-M with M = max over known findings of -m_k (m_k = s_k z_k at 0.5), floored at -kappa:
    row 0: m = (2, 1) -> M = -1 -> 1; row 1: m = (-0.5, 1, -3) -> M = 3 -> max(-3, -1) = -1."""
    from mladv.attacks import MLAdvVariant
    variant = MLAdvVariant(Net(), adv_loss="margin", kappa=1.0)
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.5, -1.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0, NAN], [1.0, 0.0, 0.0]])
    assert variant._adv_loss(logits, labels, None).tolist() == [1.0, -1.0]


def test_the_torchattacks_wrapper_refuses_a_multilabel_model_in_one_line():
    from mladv.attacks import TorchAttack
    with pytest.raises(ValueError, match="^TorchAttack: torchattacks hard-wires the "
                                         "cross-entropy"):
        TorchAttack(Net(), object)


def test_train_classifier_runs_advprop_on_a_multilabel_set():
    """The path of ``mladv train nih:... --adv-mode advprop``: the model carries its task
    (reuse.train_or_reuse sets it from the data), the batch labels are N x K with NaN."""
    gen = torch.Generator().manual_seed(2)
    x, y = _patterned(32, gen)
    y[::4, 1] = NAN
    data = ImageSet(x, y, ["a", "b", "c"], [f"{i}.png" for i in range(32)],
                    [str(i) for i in range(32)], task="multilabel")
    model = _bn_multilabel()
    adv = AdversarialBatch("pgd", mode="advprop", eps=1 / 255)
    history = train_classifier(model, data, epochs=1, batch_size=16, seed=0, progress=False,
                               adversarial=adv)
    assert math.isfinite(history[-1]["loss"]) and adv.calls == 2
