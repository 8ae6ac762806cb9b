import pytest
import torch

from mladv.models import (
    ARCHITECTURES,
    build_model,
    head_name,
    load_checkpoint,
    pretrained_state_dict,
    save_checkpoint,
)


@pytest.mark.parametrize("arch", ["tiny_cnn", "small_cnn", "resnet18", "mobilenet_v3_small"])
def test_one_channel_input_gives_logits(arch):
    model = build_model(arch, 3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_paper_architectures_are_available():
    for arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11_bn", "vgg16",
                 "densenet121", "mobilenet_v3_small"):
        assert arch in ARCHITECTURES


def test_one_and_three_channel_grey_inputs_agree():
    model = build_model("tiny_cnn", 3).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), model(x.repeat(1, 3, 1, 1)), atol=1e-6)


def test_unknown_architecture_lists_valid_ones():
    with pytest.raises(ValueError, match="resnet18"):
        build_model("resnet9000", 3)


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match=r"N x 1 x H x W"):
        build_model("tiny_cnn", 3)(torch.rand(1, 2, 8, 8))


def test_checkpoint_round_trip(tmp_path):
    model = build_model("tiny_cnn", 3)
    save_checkpoint(tmp_path / "m.pt", model, classes=["a", "b", "c"], image_size=32, epoch=2,
                    metrics={"test_acc": 0.5})
    loaded, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["classes"] == ["a", "b", "c"] and meta["epoch"] == 2
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.eval()(x))


def test_checkpoint_of_other_architecture_is_refused(tmp_path):
    save_checkpoint(tmp_path / "m.pt", build_model("tiny_cnn", 3), classes=list("abc"),
                    image_size=32)
    with pytest.raises(ValueError, match="holds a tiny_cnn, expected resnet18"):
        load_checkpoint(tmp_path / "m.pt", arch="resnet18")
    with pytest.raises(ValueError, match="3 classes"):
        load_checkpoint(tmp_path / "m.pt", num_classes=2)


def test_checkpoint_with_mismatched_weights_names_shapes(tmp_path):
    model = build_model("tiny_cnn", 3)
    save_checkpoint(tmp_path / "m.pt", model, classes=list("ab") + ["c", "d"], image_size=32)
    with pytest.raises(ValueError, match=r"does not fit a tiny_cnn with 4 classes.*size"):
        load_checkpoint(tmp_path / "m.pt")


def test_missing_or_garbage_checkpoint_is_named(tmp_path):
    with pytest.raises(ValueError, match="none.pt: checkpoint does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage \x00\x01 bytes")
    with pytest.raises(ValueError, match=r"bad\.pt: not a mladv checkpoint \(") as exc:
        load_checkpoint(tmp_path / "bad.pt")
    assert "weights_only" not in str(exc.value)  # torch's advice to unpickle anything: unsafe


class _Pickled:  # a Python object, as in torch.save(model) rather than a state dict
    pass


def test_checkpoint_with_python_objects_is_refused_without_unpickling_them(tmp_path):
    torch.save({"state_dict": {}, "arch": "tiny_cnn", "classes": ["a", "b"], "x": _Pickled()},
               tmp_path / "obj.pt")
    with pytest.raises(ValueError, match=r"obj\.pt: not a mladv checkpoint \(.*for safety") as exc:
        load_checkpoint(tmp_path / "obj.pt")
    assert "weights_only" not in str(exc.value)


def test_unknown_architecture_inside_a_checkpoint_names_the_file(tmp_path):
    torch.save({"state_dict": {}, "arch": "resnet19", "classes": ["a", "b"]}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"m\.pt: unknown architecture 'resnet19'"):
        load_checkpoint(tmp_path / "m.pt")


def test_image_size_has_one_range_and_per_architecture_minimums():
    from mladv.models import IMAGE_SIZE_MAX, IMAGE_SIZE_MIN, check_image_size

    assert check_image_size(IMAGE_SIZE_MIN) == IMAGE_SIZE_MIN
    for bad in (0, -5, 2, IMAGE_SIZE_MAX + 1, 2.5, True):
        with pytest.raises(ValueError, match=f"must be an integer in 16..{IMAGE_SIZE_MAX}, got"):
            check_image_size(bad)
    with pytest.raises(ValueError, match="in 32..1024 for vgg16"):
        check_image_size(16, "vgg16")
    check_image_size(32, "densenet121")
    model = build_model("densenet121", 2).eval()  # the minimum is what the architecture needs
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 2)
        with pytest.raises(RuntimeError):
            model(torch.rand(1, 1, 24, 24))


@pytest.mark.parametrize(("arch", "size"), [("resnet101", 32), ("resnet152", 32),
                                            ("vgg16_bn", 32), ("vgg16_bn", 64)])
def test_paper_models_take_one_channel_batches(arch, size):
    """Table 1's targets (ResNet101, ResNet152, VGG16-BN): grey N x 1 x H x W -> N x K logits."""
    model = build_model(arch, 3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, size, size)).shape == (2, 3)


# -- state-dict files for pretrained backbones: wrappers and prefixes ----------------------------
def _net_state(seed: int = 4) -> dict[str, torch.Tensor]:
    """A small_cnn body's own state dict (keys ``0.0.weight``, ...), not the default init."""
    torch.manual_seed(seed)
    return build_model("small_cnn", 3).net.state_dict()


@pytest.mark.parametrize("wrap", [
    lambda s: s,                                                   # plain torchvision-style
    lambda s: {"state_dict": s},                                   # a training script's wrapper
    lambda s: {f"module.{k}": v for k, v in s.items()},            # saved from DataParallel/DDP
    lambda s: {f"net.{k}": v for k, v in s.items()},               # our ImageClassifier's keys
    lambda s: {"state_dict": {f"module.net.{k}": v for k, v in s.items()}},  # DDP of ours, wrapped
], ids=["plain", "wrapper", "module", "net", "wrapper-module-net"])
def test_state_dict_file_is_unwrapped_and_its_prefixes_stripped(tmp_path, wrap):
    state = _net_state()
    torch.save(wrap(state), tmp_path / "w.pt")
    got = pretrained_state_dict("small_cnn", tmp_path / "w.pt")
    assert list(got) == list(state)
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_a_prefix_only_some_keys_carry_is_kept(tmp_path):
    state = _net_state()
    mixed = {("module." + k if i == 0 else k): v for i, (k, v) in enumerate(state.items())}
    torch.save(mixed, tmp_path / "w.pt")
    assert list(pretrained_state_dict("small_cnn", tmp_path / "w.pt")) == list(mixed)


def test_a_wrapped_prefixed_checkpoint_builds_the_same_backbone(tmp_path):
    state = _net_state()
    torch.save({"state_dict": {f"module.net.{k}": v for k, v in state.items()}},
               tmp_path / "w.pt")
    net = build_model("small_cnn", 3, weights=tmp_path / "w.pt").net
    head = head_name(net) + "."  # the classifier head is new, the rest is the file's
    body = {k: v for k, v in net.state_dict().items() if not k.startswith(head)}
    assert list(body) == [k for k in state if not k.startswith(head)]
    assert all(torch.equal(v, state[k]) for k, v in body.items())
    assert not torch.equal(build_model("small_cnn", 3).net.state_dict()["0.0.weight"],
                           state["0.0.weight"])  # not equal by chance
