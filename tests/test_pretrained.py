"""Pretrained backbones (issue 11): a torchvision state dict saved locally (no download), or a
torchvision weights name read from torch hub's cache; offline downloads fail in one line."""
from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
import torchvision

from mladv.models import build_model, head_name, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "mobilenet_v3_small"  # BatchNorm, a multi-layer head, 2.5 M parameters: quick


@pytest.fixture(scope="module")
def tv_state():
    """An ImageNet-shaped (1000-class) torchvision model's state dict, randomly initialised."""
    torch.manual_seed(123)
    net = getattr(torchvision.models, ARCH)(weights=None)
    for m in net.modules():  # non-default BN statistics, so that buffers are compared too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net.state_dict()


@pytest.fixture()
def weights_file(tmp_path, tv_state):
    path = tmp_path / f"{ARCH}-imagenet.pth"
    torch.save(tv_state, path)
    return path


@pytest.fixture()
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache in tmp_path and no network."""
    def no_network(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


def _backbone(model, tv_state):
    head = head_name(model.net) + "."
    return {k: v for k, v in model.net.state_dict().items() if not k.startswith(head)}


def test_local_state_dict_arrives_and_the_head_fits_the_classes(weights_file, tv_state):
    model = build_model(ARCH, 3, weights=weights_file)
    fresh = build_model(ARCH, 3)
    backbone = _backbone(model, tv_state)
    assert len(backbone) == len(tv_state) - 2  # everything but the head's weight and bias
    for k, v in backbone.items():
        assert torch.equal(v, tv_state[k]), k
    stem = "features.0.0.weight"
    assert not torch.equal(fresh.net.state_dict()[stem], tv_state[stem])  # not by chance
    head = head_name(model.net)
    assert head == "classifier.3"
    assert model.net.state_dict()[f"{head}.weight"].shape == (3, 1024)
    assert model.weights == str(weights_file)
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_grey_input_on_the_rgb_stem_is_the_summed_kernel_response(weights_file):
    """The stem sees sum_c W_c * (x - m_c) / s_c: RGB kernels summed over the normalised grey
    channel, equal (borders included) to feeding the grey image as an RGB photograph."""
    model = build_model(ARCH, 3, weights=weights_file).eval()
    x = torch.rand(2, 1, 24, 24)
    stem = model.net.features[0][0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    rgb = (x.repeat(1, 3, 1, 1) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    summed = sum(torch.nn.functional.conv2d(rgb[:, c:c + 1], stem.weight[:, c:c + 1], stride=2,
                                            padding=1) for c in range(3))
    seen = []
    hook = stem.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    hook.remove()
    torch.testing.assert_close(seen[0], summed, rtol=1e-5, atol=1e-5)


def test_fine_tuning_runs_and_freezing_leaves_the_backbone_unchanged(weights_file, tv_state):
    from mladv.data import make_phantoms
    from mladv.training import train_classifier

    data = make_phantoms(4, 32, seed=0)
    for freeze in (False, True):
        torch.manual_seed(0)
        model = build_model(ARCH, 3, weights=weights_file, freeze_backbone=freeze)
        head = head_name(model.net)
        before = {k: v.clone() for k, v in model.net.state_dict().items()}
        train_classifier(model, data, epochs=1, batch_size=6, lr=1e-2, seed=0, progress=False)
        after = model.net.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert f"{head}.weight" in changed
        body_changed = {k for k in changed if not k.startswith(head + ".")
                        and not k.endswith("num_batches_tracked")}
        assert bool(body_changed) != freeze, sorted(body_changed)[:3]
        if freeze:
            assert model.frozen and not model.net.features[0][1].training  # BN kept in eval


def test_freezing_a_random_backbone_is_refused():
    with pytest.raises(ValueError, match="freeze_backbone needs pretrained weights"):
        build_model(ARCH, 3, freeze_backbone=True)


def test_offline_weights_name_says_where_to_put_the_file(offline_hub):
    with pytest.raises(ValueError, match=r"cannot download .*offline, put that file as") as exc:
        build_model("resnet18", 3, weights="IMAGENET1K_V1")
    msg = str(exc.value)
    assert str(offline_hub / "resnet18-f37072fd.pth") in msg and "\n" not in msg


def test_weights_name_is_read_from_torch_hubs_cache_without_network(offline_hub, tv_state):
    offline_hub.mkdir(parents=True)
    from torchvision.models import MobileNet_V3_Small_Weights

    name = MobileNet_V3_Small_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    torch.save(tv_state, offline_hub / name)
    model = build_model(ARCH, 2, weights="IMAGENET1K_V1")
    assert torch.equal(model.net.state_dict()["features.0.0.weight"],
                       tv_state["features.0.0.weight"])


def test_bad_weights_are_one_line_each(tmp_path):
    with pytest.raises(ValueError, match="torchvision has IMAGENET1K_V1, DEFAULT for resnet18"):
        build_model("resnet18", 3, weights="IMAGENET_V9")
    with pytest.raises(ValueError, match="no such file"):
        build_model("resnet18", 3, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="small_cnn has no torchvision weights"):
        build_model("small_cnn", 3, weights="IMAGENET1K_V1")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.pth: not a state-dict file"):
        build_model("resnet18", 3, weights=tmp_path / "junk.pth")


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(torchvision.models.shufflenet_v2_x0_5(weights=None).state_dict(), tmp_path / "s.pth")
    with pytest.raises(ValueError, match="do not fit a mobilenet_v3_small"):
        build_model(ARCH, 3, weights=tmp_path / "s.pth")


def test_checkpoint_records_weights_and_reloads_without_download(weights_file, offline_hub,
                                                                  tmp_path):
    model = build_model(ARCH, 3, weights=weights_file).eval()
    save_checkpoint(tmp_path / "m.pt", model, classes=list("abc"), image_size=32)
    weights_file.unlink()  # the checkpoint holds everything
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["weights"] == str(weights_file) and loaded.weights == str(weights_file)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))


def test_frozen_checkpoint_loads_frozen_and_a_plain_one_does_not(weights_file, tmp_path):
    for freeze in (False, True):
        model = build_model(ARCH, 3, weights=weights_file, freeze_backbone=freeze)
        save_checkpoint(tmp_path / "m.pt", model, classes=list("abc"), image_size=32)
        loaded, _ = load_checkpoint(tmp_path / "m.pt")
        trainable = {n for n, p in loaded.net.named_parameters() if p.requires_grad}
        assert loaded.frozen is freeze
        assert trainable == {n for n, p in model.net.named_parameters() if p.requires_grad}
