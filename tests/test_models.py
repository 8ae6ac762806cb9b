import pytest
import torch

from mladv.models import ARCHITECTURES, build_model, load_checkpoint, save_checkpoint


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
    save_checkpoint(tmp_path / "m.pt", build_model("tiny_cnn", 3), classes=list("abc"), image_size=32)
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
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad\.pt cannot be read"):
        load_checkpoint(tmp_path / "bad.pt")
