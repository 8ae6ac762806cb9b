"""Online / AdvProp crafting on the path the CLI and the experiment use (the attack given by
name, ``"pgd"``): through the twin BatchNorm and not the main one, against the current weights
(no copy made at the start), the documented fraction rows and per-call reseeding."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from mladv.adversarial_training import AdversarialBatch, online_attack_options
from mladv.attacks import make_attack
from mladv.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

EPS, STEPS = 4 / 255, 2  # two steps: PGD with its random start, so the seeds matter too


@pytest.fixture()
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 16, 16, generator=gen) * 0.6 + 0.2, torch.arange(8) % 3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", 3)


def _twins_made_different(adv: AdversarialBatch) -> None:
    """Move every twin BatchNorm's running statistics and affine parameters away from the main
    BN's (as training on adversarial rows would), so that crafting through one or the other
    gives different images."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for twin in adv.split.twins:
            n = twin.num_features
            twin.running_mean.add_(torch.randn(n, generator=gen))
            twin.running_var.mul_(torch.rand(n, generator=gen) * 2 + 0.5)
            twin.weight.mul_(torch.rand(n, generator=gen) + 0.5)
            twin.bias.add_(0.5 * torch.randn(n, generator=gen))


def _with_twins(adv: AdversarialBatch) -> torch.nn.Module:
    """A plain copy of the bound model whose main BatchNorm holds the twins' current tensors:
    the model switched to the auxiliary BN."""
    ref = copy.deepcopy(adv.model)
    ref.load_state_dict({**adv.model.state_dict(), **adv.twin_state_dict()})
    return ref.eval()


def _pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    """PGD run by hand with the online options of ``AdversarialBatch("pgd", ...)``."""
    return make_attack("pgd", model, seed=seed, **online_attack_options("pgd", EPS, STEPS))(x, y)


def test_pgd_by_name_in_advprop_crafts_through_the_twins_not_the_main_bn(batch):
    x, y = batch
    adv = AdversarialBatch("pgd", mode="advprop", eps=EPS, steps=STEPS, seed=3)
    adv.bind(_model())
    _twins_made_different(adv)
    crafted = adv.craft(x, y)  # call 0: attack seed 3 + 0
    assert torch.equal(crafted, _pgd(_with_twins(adv), x, y, seed=3))
    main_bn = copy.deepcopy(adv.model).eval()
    assert not torch.equal(crafted, _pgd(main_bn, x, y, seed=3))


@pytest.mark.parametrize("mode", ["online", "advprop"])
def test_the_next_batch_is_crafted_against_the_weights_after_an_optimizer_step(batch, mode):
    x, y = batch
    adv = AdversarialBatch("pgd", mode=mode, eps=EPS, steps=STEPS, seed=3)
    net = adv.bind(_model())
    if mode == "advprop":
        _twins_made_different(adv)
    target = _with_twins if mode == "advprop" else (lambda a: copy.deepcopy(a.model).eval())
    before = target(adv)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()
    loss = adv.loss(net, x, y)  # call 0
    opt.zero_grad()
    loss.backward()
    opt.step()
    crafted = adv.craft(x, y)  # call 1, after the step
    assert torch.equal(crafted, _pgd(target(adv), x, y, seed=4))
    assert not torch.equal(crafted, _pgd(before, x, y, seed=4))  # the step changed the answer


def test_a_weight_edited_after_bind_reaches_the_next_crafted_batch(batch):
    x, y = batch
    model = _model()
    adv = AdversarialBatch("pgd", mode="online", eps=EPS, steps=STEPS, seed=3)
    adv.bind(model)
    first = adv.craft(x, y)
    assert torch.equal(first, _pgd(copy.deepcopy(model).eval(), x, y, seed=3))
    with torch.no_grad():
        model.net[0][0].weight.neg_()
    assert torch.equal(adv.craft(x, y), _pgd(copy.deepcopy(model).eval(), x, y, seed=4))


def _rows(seed: int, call: int, b: int, k: int) -> torch.Tensor:
    """The documented row choice: the first ``k`` of a permutation seeded ``seed + call``."""
    return torch.randperm(b, generator=torch.Generator().manual_seed(seed + call))[:k]


def test_fraction_replaces_the_documented_rows_with_pgd_of_those_rows(batch):
    x, y = batch
    model = _model().eval()
    adv = AdversarialBatch("pgd", mode="online", eps=EPS, steps=STEPS, fraction=0.3, seed=5)
    adv.bind(model)
    k = math.ceil(0.3 * 8)
    masks = []
    for call in range(2):
        x_in, y_in, mask, _ = adv(x, y)
        rows = _rows(5, call, 8, k)
        want = torch.zeros(8, dtype=torch.bool)
        want[rows] = True
        assert torch.equal(mask, want) and torch.equal(y_in, y)
        assert torch.equal(x_in[~mask], x[~mask])
        assert torch.equal(x_in[rows], _pgd(model, x[rows], y[rows], seed=5 + call))
        masks.append(mask)
    assert not torch.equal(masks[0], masks[1])  # a new draw of rows on every call


def test_same_seed_same_batches_and_each_call_reseeds_the_attack(batch):
    x, y = batch

    def two_calls(seed: int) -> list[torch.Tensor]:
        adv = AdversarialBatch("pgd", mode="online", eps=EPS, steps=STEPS, fraction=0.5,
                               seed=seed)
        adv.bind(_model())
        return [adv(x, y)[0] for _ in range(2)]
    first, again, other = two_calls(7), two_calls(7), two_calls(8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # reproducible
    assert not torch.equal(first[0], other[0])  # the seed matters
    # the same images attacked on two calls: the random start is drawn anew (seed + call)
    adv = AdversarialBatch("pgd", mode="online", eps=EPS, steps=STEPS, seed=7)
    model = adv.bind(_model())
    a, b = adv.craft(x, y), adv.craft(x, y)
    assert torch.equal(a, _pgd(model.eval(), x, y, seed=7))
    assert torch.equal(b, _pgd(model.eval(), x, y, seed=8)) and not torch.equal(a, b)



def test_online_defaults_madry_pgd_above_one_step_and_mladv_without_refine(batch):
    """The module's documented online defaults, by name: ``pgd`` at ``steps > 1`` is Madry's
    PGD (random start, ``alpha = 2.5 eps / steps``); ``mladv`` gets ``refine=0``."""
    x, y = batch
    model = _model().eval()
    adv = AdversarialBatch("pgd", mode="online", eps=EPS, steps=4, seed=2)
    adv.bind(model)
    madry = make_attack("pgd", model, eps=EPS, steps=4, alpha=2.5 * EPS / 4, random_start=True,
                        seed=2)
    assert torch.equal(adv.craft(x, y), madry(x, y))
    mladv = AdversarialBatch("mladv", mode="online", eps=EPS, seed=2)
    assert mladv.attack_options == {"eps": EPS, "steps": 1, "refine": 0}
    mladv.bind(model)
    plain = make_attack("mladv", model, eps=EPS, steps=1, refine=0, seed=2)
    assert torch.equal(mladv.craft(x, y), plain(x, y))

# -- the experiment's path: grid fraction and pretrained weights reach every training --------
EXPERIMENT = {"name": "mini-fraction", "data": "phantoms:8", "image_size": 16, "arch": "small_cnn",
              "seeds": 1, "arms": ["none", "pgd-advprop"],
              "train": {"epochs": 1, "batch_size": 8, "lr": 0.01},
              "online": {"grid": {"eps": [2], "fraction": [0.5]},
                         "selection": {"val_size": 0.25, "seed": 0}},
              "robustness": {"attacks": ["pgd"], "max_images": 3, "noise_sigmas": [0.05]},
              "pgd": {"steps": 1}, "progress": False}


@pytest.fixture(scope="module")
def experiment_spies(tmp_path_factory, one_thread):
    """A mini experiment (flips + pgd-advprop at grid fraction 0.5, a pretrained small_cnn
    backbone from a state-dict file) with spies on every model construction (``weights``) and
    every training call (``desc`` -> the ``AdversarialBatch`` it got) of the selection and the
    seeds; returns ``(weights file, built, trained)``."""
    import mladv.experiment.selection as sel_mod
    import mladv.reuse as reuse_mod
    from experiment_helpers import run_quietly

    folder = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(11)
    weights = folder / "small_cnn.pt"
    torch.save(build_model("small_cnn", 3).net.state_dict(), weights)
    built: list[object] = []
    trained: dict[str, AdversarialBatch | None] = {}
    with pytest.MonkeyPatch.context() as mp:
        for module in (sel_mod, reuse_mod):
            def build_spy(*args, real=module.build_model, **kwargs):
                built.append(kwargs.get("weights"))
                return real(*args, **kwargs)

            def train_spy(model, data, *args, real=module.train_classifier, **kwargs):
                trained[kwargs["desc"]] = kwargs.get("adversarial")
                return real(model, data, *args, **kwargs)
            mp.setattr(module, "build_model", build_spy)
            mp.setattr(module, "train_classifier", train_spy)
        run_quietly(tmp_path_factory, "fraction", {**EXPERIMENT, "weights": str(weights)})
    return str(weights), built, trained


def test_the_grid_fraction_reaches_the_selection_and_the_seed_training(experiment_spies):
    _, _, trained = experiment_spies
    assert sorted(trained) == ["seed 0 none: train", "seed 0 pgd-advprop: train",
                               "select none", "select pgd-advprop eps2-steps1-frac0.5"]
    for desc in ("select pgd-advprop eps2-steps1-frac0.5", "seed 0 pgd-advprop: train"):
        adv = trained[desc]
        assert adv is not None and adv.fraction == 0.5 and adv.calls > 0, desc
        assert (adv.attack, adv.mode, adv.eps) == ("pgd", "advprop", 2 / 255), desc
    assert trained["select none"] is None and trained["seed 0 none: train"] is None


def test_pretrained_weights_reach_every_model_of_the_grid_and_the_arms(experiment_spies):
    weights, built, trained = experiment_spies
    assert len(built) == len(trained) == 4  # one model per training: selection 2, seed 0 2
    assert built == [weights] * 4
