"""Online / AdvProp training in the training loop: current weights, separate BN statistics,
replaced counts, checkpoints, option errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mladv.adversarial_training import AdversarialBatch, adversarial_from_options
from mladv.attacks import make_attack
from mladv.data import make_phantoms
from mladv.models import build_model, load_checkpoint, save_checkpoint
from mladv.splitbn import SplitBN
from mladv.training import train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return make_phantoms(8, 16, seed=2)  # 24 images, 3 classes, 16 px


def _first_conv(module: torch.nn.Module) -> torch.Tensor:
    return next(p for p in module.parameters() if p.dim() == 4)


class Spy:
    """An attack factory that records what the attack saw: the first conv weight of the model
    it was built on, its mode, whether parameters required gradients; returns ``1 - x``."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []
        self.modes: list[bool] = []
        self.grads: list[bool] = []

    def __call__(self, model: torch.nn.Module):
        def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            self.weights.append(_first_conv(model).detach().clone())
            self.modes.append(model.training)
            self.grads.append(any(p.requires_grad for p in model.parameters()))
            return 1.0 - x
        return attack


@pytest.mark.parametrize("mode", ["online", "advprop"])
def test_online_crafting_sees_the_current_weights_in_eval_mode(data, mode):
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    spy = Spy()
    trained: list[torch.Tensor] = []  # the weights of each training forward (train mode)
    model.register_forward_pre_hook(
        lambda m, _a: trained.append(_first_conv(m).detach().clone()) if m.training else None)
    train_classifier(model, data, epochs=2, batch_size=8, lr=1e-2, progress=False,
                     adversarial=AdversarialBatch(spy, mode=mode, fraction=0.5))
    steps = 2 * 3
    assert len(spy.weights) == steps
    # advprop: two training forwards per step (clean rows, then adversarial rows through twins)
    per_step = trained[::2] if mode == "advprop" else trained
    assert len(per_step) == steps
    for seen, used in zip(spy.weights, per_step, strict=True):
        assert torch.equal(seen, used)          # crafted against the weights trained that step
    assert all(not torch.equal(a, b) for a, b in zip(spy.weights, spy.weights[1:]))
    assert spy.modes == [False] * steps and spy.grads == [False] * steps
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def _first_bn_mean(images: torch.Tensor, model) -> torch.Tensor:
    """What the first BatchNorm's running mean becomes after one train-mode pass over
    ``images`` from its initial 0 (momentum 0.1): 0.1 x the batch mean of conv1's output."""
    with torch.no_grad():
        x = (images.expand(-1, 3, -1, -1) - model.mean) / model.std
        return 0.1 * model.net[0][0](x).mean((0, 2, 3))


@pytest.mark.parametrize("mode", ["online", "advprop"])
def test_adversarial_rows_leave_the_main_bn_statistics_alone_only_in_advprop(data, mode):
    """One step, learning rate 0 (weights fixed): in advprop the main BN's running mean is the
    clean rows' alone and the twin's the adversarial rows'; online (shared BN) mixes them."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    crafted: list[torch.Tensor] = []

    def factory(target):
        atk = make_attack("pgd", target, eps=64 / 255, steps=1, alpha=64 / 255,
                          random_start=False)
        return lambda x, y: crafted.append(atk(x, y)) or crafted[-1]

    adv = AdversarialBatch(factory, mode=mode)
    train_classifier(model, data, epochs=1, batch_size=len(data), lr=0.0, transform=None,
                     progress=False, adversarial=adv)
    clean = data.images
    (x_adv,) = crafted
    main = model.net[0][1]
    mixed = _first_bn_mean(torch.cat([clean, x_adv]), model)
    assert not torch.allclose(mixed, _first_bn_mean(clean, model), atol=1e-4)  # discriminates
    if mode == "online":
        torch.testing.assert_close(main.running_mean, mixed, atol=1e-6, rtol=1e-5)
        return
    tol = {"atol": 1e-6, "rtol": 1e-5}
    torch.testing.assert_close(main.running_mean, _first_bn_mean(clean, model), **tol)
    twin = adv.split.twins[0]
    torch.testing.assert_close(twin.running_mean, _first_bn_mean(x_adv, model), **tol)
    assert int(main.num_batches_tracked) == int(twin.num_batches_tracked) == 1


@pytest.mark.parametrize("fraction,replaced,rows", [(0.25, 3, 10), (0.01, 1, 10), (1.0, 10, 10),
                                                    (None, 10, 20)])
def test_fraction_replaces_the_right_count(fraction, replaced, rows):
    adv = AdversarialBatch(Spy(), mode="online", fraction=fraction)
    adv.bind(build_model("tiny_cnn", 3))
    x, y = torch.rand(10, 1, 8, 8), torch.arange(10) % 3
    x_in, y_in, mask, w = adv(x, y, torch.ones(10))
    assert x_in.shape[0] == rows == y_in.shape[0] == w.shape[0] and int(mask.sum()) == replaced
    if fraction is None:
        assert torch.equal(x_in[:10], x) and torch.equal(x_in[10:], 1 - x)
        assert torch.equal(y_in, torch.cat([y, y])) and mask[10:].all()
    else:
        assert torch.equal(x_in[mask], 1 - x[mask]) and torch.equal(x_in[~mask], x[~mask])
        assert torch.equal(y_in, y)


@pytest.mark.parametrize("attack", ["pgd", "mladv"])
def test_advprop_checkpoint_loads_into_a_plain_model_with_the_same_eval_logits(data, tmp_path,
                                                                                attack):
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    adv = AdversarialBatch(attack, mode="advprop", eps=4 / 255)
    train_classifier(model, data, epochs=1, batch_size=8, lr=3e-3, progress=False,
                     adversarial=adv)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, classes=["a", "b", "c"], image_size=16, **adv.checkpoint_extra())
    plain, ckpt = load_checkpoint(path)
    x = data.images[:6]
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), adv.split.eval()(x), rtol=0, atol=0)
        reloaded = SplitBN(plain)
        reloaded.load_twin_state_dict(ckpt["twin_bn"])
        torch.testing.assert_close(reloaded.eval()(x, adversarial=True),
                                   adv.split(x, adversarial=True), rtol=0, atol=0)
        assert not torch.allclose(plain(x), adv.split(x, adversarial=True))  # twins differ
    assert ckpt["adversarial"] == {"mode": "advprop", "attack": attack, "eps": 4.0, "steps": 1,
                                   "fraction": None, "options": {}}


def test_online_pgd_one_step_is_fgsm_at_eps():
    """The online PGD default at 1 step: alpha = eps, no random start -> every pixel moves by
    exactly eps (where not clipped), in the sign of the input gradient."""
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 3).eval()
    adv = AdversarialBatch("pgd", mode="online", eps=2 / 255, fraction=1.0)
    adv.bind(model)
    x, y = torch.rand(4, 1, 8, 8) * 0.5 + 0.25, torch.tensor([0, 1, 2, 0])
    x_adv = adv.craft(x, y)
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)[0]
    torch.testing.assert_close(x_adv, x + 2 / 255 * grad.sign(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "bogus"}, r"adversarial mode must be one of \('offline', 'online', 'advprop'\)"),
    ({"mode": "online", "adv_eps": 0}, r"adv_eps must be in \(0, 255\]"),
    ({"mode": "online", "adv_eps": -1}, r"adv_eps must be in \(0, 255\]"),
    ({"mode": "advprop", "adv_fraction": 0.0}, r"adv_fraction must be in \(0, 1\], got 0.0"),
    ({"mode": "advprop", "adv_fraction": 1.5}, r"adv_fraction must be in \(0, 1\], got 1.5"),
    ({"mode": "online", "adv_steps": 0}, r"adv_steps must be an integer >= 1, got 0"),
    ({"mode": "online", "attack": "nope"}, r"unknown attack 'nope'"),
    ({"mode": "online", "attack": "fgsm", "adv_steps": 3}, r"'fgsm' has no steps option"),
    ({"mode": "online", "attack": "mladv", "options": {"beta": "big"}}, r"beta must be float"),
])
def test_option_errors_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        adversarial_from_options(**kwargs)
    assert "\n" not in str(err.value)


def test_offline_is_no_per_batch_work_and_not_a_batch_mode():
    assert adversarial_from_options("offline") is None
    with pytest.raises(ValueError, match="offline copies are crafted before training"):
        AdversarialBatch("pgd", mode="offline")


def test_hand_written_loop_with_the_readme_example(data):
    torch.manual_seed(0)
    model = build_model("small_cnn", 3)
    adv = AdversarialBatch("pgd", mode="advprop", eps=1 / 255, steps=1)
    net = adv.bind(model)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    net.train()
    before = adv.split.twins[0].weight.detach().clone()
    for i in range(0, 24, 8):
        loss = adv.loss(net, data.images[i:i + 8], data.labels[i:i + 8])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and adv.calls == 3
    assert not torch.equal(adv.split.twins[0].weight, before)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "efficientnet_b0",
                                  "shufflenet_v2_x1_0"])
def test_advprop_trains_every_batchnorm_architecture(arch, tmp_path):
    """One advprop step (MLAdv, 1 step) per kind of architecture (resnet34 / 50 differ from
    resnet18 only in depth and block: their twins are tested in test_splitbn): the twins leave
    the main BN's statistics alone, and the checkpoint loads into a plain model."""
    torch.manual_seed(0)
    data = make_phantoms(2, 32, seed=3)  # 6 images: one batch
    model = build_model(arch, 3)
    adv = AdversarialBatch("mladv", mode="advprop", eps=8 / 255, options={"steps": 1})
    train_classifier(model, data, epochs=1, batch_size=6, lr=1e-3, progress=False,
                     adversarial=adv)
    first = adv.split.bn_names[0]
    main_mean = model.state_dict()[f"{first}.running_mean"]
    assert not torch.allclose(main_mean, adv.twin_state_dict()[f"{first}.running_mean"])
    save_checkpoint(tmp_path / "m.pt", model, classes=["a", "b", "c"], image_size=32,
                    **adv.checkpoint_extra())
    plain, _ = load_checkpoint(tmp_path / "m.pt")
    torch.testing.assert_close(plain.state_dict()[f"{first}.running_mean"], main_mean)


# -- defaults, option translation and refusals, value by value (issue 16 mutation testing) -----
def test_online_attack_options_are_the_documented_defaults_with_options_on_top():
    from mladv.adversarial_training import online_attack_options

    assert online_attack_options("pgd", 0.1, 1) == {"eps": 0.1, "steps": 1, "alpha": 0.1,
                                                    "random_start": False}
    assert online_attack_options("pgd", 0.1, 2) == {"eps": 0.1, "steps": 2, "alpha": 0.125,
                                                    "random_start": True}
    assert online_attack_options("fgsm", 0.1, 1) == {"eps": 0.1}
    assert online_attack_options("mladv", 0.1, 1, {"refine": 3}) == {"eps": 0.1, "steps": 1,
                                                                     "refine": 3}


def test_defaults_of_the_batch_and_of_the_option_translation():
    assert adversarial_from_options() is None  # mode "offline"
    expected = {"attack": "pgd", "eps": 1.0, "steps": 1, "fraction": None, "options": {}}
    made = adversarial_from_options("online")
    assert made is not None and made.describe() == {"mode": "online", **expected}
    assert made.seed == 0
    plain = AdversarialBatch()
    assert plain.describe() == {"mode": "advprop", **expected} and plain.seed == 0
    assert plain.trainable is None  # before bind


def test_option_translation_passes_mode_and_seed_and_accepts_adv_eps_255():
    made = adversarial_from_options("online", adv_eps=255, seed=5)
    assert made is not None and (made.mode, made.eps, made.seed) == ("online", 1.0, 5)
    with pytest.raises(ValueError, match=r"^adv_eps must be in \(0, 255\] \(1/255 units\), "
                                         r"got 255.5$"):
        adversarial_from_options("online", adv_eps=255.5)


@pytest.mark.parametrize("mode, message", [
    ("bogus", "adversarial mode must be one of ('online', 'advprop'), got 'bogus'"),
    ("offline", "adversarial mode must be one of ('online', 'advprop'), got 'offline' (offline "
                "copies are crafted before training: mladv augment)")])
def test_a_batch_mode_refusal_is_exactly_one_line(mode, message):
    with pytest.raises(ValueError) as err:
        AdversarialBatch("pgd", mode=mode)
    assert str(err.value) == message


@pytest.mark.parametrize("eps", [0.0, 1.5])
def test_eps_outside_0_1_is_refused_and_1_accepted(eps):
    with pytest.raises(ValueError) as err:
        AdversarialBatch("pgd", eps=eps)
    assert str(err.value) == f"eps must be in (0, 1] ([0, 1] units, e.g. 1/255), got {eps:g}"
    assert AdversarialBatch("pgd", eps=1.0).eps == 1.0


@pytest.mark.parametrize("steps", [True, 2.0])
def test_steps_that_are_not_an_int_are_refused(steps):
    with pytest.raises(ValueError, match=r"^adv_steps must be an integer >= 1, got "):
        AdversarialBatch("pgd", steps=steps)


def test_crafting_before_bind_is_one_line():
    with pytest.raises(RuntimeError) as err:
        AdversarialBatch("pgd").craft(torch.rand(1, 1, 8, 8), torch.tensor([0]))
    assert str(err.value) == "AdversarialBatch.bind(model) must be called before crafting"


def test_soft_labels_are_attacked_at_their_arg_max_and_the_dtype_is_kept():
    seen: list[torch.Tensor] = []

    def factory(model):
        def attack(x, y):
            seen.append(y)
            return x.double()
        return attack

    adv = AdversarialBatch(factory, mode="online")
    adv.bind(build_model("tiny_cnn", 3))
    soft = torch.tensor([[0.1, 0.7, 0.2], [0.0, 0.0, 1.0]])
    out = adv.craft(torch.rand(2, 1, 8, 8), soft)
    assert torch.equal(seen[0], torch.tensor([1, 2])) and out.dtype == torch.float32


def test_describe_names_a_factory_and_rounds_eps_to_6_decimals_of_1_255():
    def my_factory(model):
        return lambda x, y: x

    class Factory:
        def __call__(self, model):
            return lambda x, y: x

    assert AdversarialBatch(my_factory, eps=2.5000004 / 255).describe()["attack"] == "my_factory"
    assert AdversarialBatch(Factory()).describe()["attack"] == "Factory"
    assert AdversarialBatch("pgd", eps=2.5000004 / 255).describe()["eps"] == 2.5


def test_an_online_batch_has_no_twin_state_in_its_checkpoint():
    adv = AdversarialBatch("pgd", mode="online")
    adv.bind(build_model("small_cnn", 3))
    assert adv.twin_state_dict() is None
    assert adv.checkpoint_extra() == {"adversarial": adv.describe()}


def test_check_advprop_refuses_a_frozen_backbone_and_a_model_without_batchnorm():
    from mladv.adversarial_training import check_advprop

    check_advprop("small_cnn")  # has BatchNorm: no error
    with pytest.raises(ValueError, match="^--adv-mode advprop with --freeze-backbone: "):
        check_advprop("small_cnn", True)
    with pytest.raises(ValueError) as err:
        check_advprop("small_cnn", True, mode_name="mode", freeze_name="freeze")
    assert str(err.value) == ("mode advprop with freeze: the frozen backbone's BatchNorm layers "
                              "do not train, so advprop would be plain online training; use "
                              "--adv-mode online")
    with pytest.raises(ValueError) as err:
        check_advprop("tiny_cnn")
    assert str(err.value) == ("--adv-mode advprop: tiny_cnn has no BatchNorm layer to give a "
                              "twin, so advprop would be plain online training; use --adv-mode "
                              "online")


def test_check_advprop_leaves_the_global_random_state_as_it_was():
    from mladv.adversarial_training import check_advprop

    torch.manual_seed(3)
    check_advprop("small_cnn")
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))


def test_the_doubled_batch_mask_is_made_on_the_images_device_not_the_default_one():
    adv = AdversarialBatch(lambda model: lambda x, y: x, mode="online")
    adv.bind(build_model("tiny_cnn", 3))
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    with torch.device("meta"):  # the default device: a tensor made without device= lands here
        x_in, y_in, mask, _ = adv(images, labels)
    assert (x_in.device.type, y_in.device.type, mask.device.type) == ("cpu", "cpu", "cpu")
