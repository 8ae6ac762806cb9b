"""Practitioners' models as adapters (mladv.adapters): a torchxrayvision DenseNet-121 with random
weights (never a download), a TorchScript archive and a Python factory, each taking [0, 1] grey
images and returning logits; the expected values come from the wrapped model called by hand
in its own units, and from torchxrayvision's own tables (``model_urls``)."""
from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mladv.adapters import align_targets, load_model_spec, python_model, xrv_model
from mladv.tasks import masked_bce

xrv = pytest.importorskip("torchxrayvision")

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parent
ALL = "densenet121-res224-all"


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _random_densenet(seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return xrv.models.DenseNet(weights=None).eval()


@pytest.fixture(scope="module")
def xrv_all():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return xrv_model(ALL, weights=None)


@pytest.fixture()
def offline(monkeypatch):
    """Any network use fails the test: xrv's downloader and every socket connection."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the network was touched")
    monkeypatch.setattr(xrv.utils, "download", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket, "create_connection", forbidden)


@pytest.fixture()
def xrv_cache(monkeypatch, tmp_path):
    """torchxrayvision's cache folder, moved to an empty tmp folder."""
    folder = tmp_path / "xrv-cache"
    folder.mkdir()
    monkeypatch.setattr(xrv.utils, "get_cache_dir", lambda: str(folder) + os.sep)
    return folder


def _spy_inputs(module: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


def _one_line_error(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# --- torchxrayvision ------------------------------------------------------------------------

def test_xrv_densenet_returns_one_logit_per_finding_named_by_its_targets(xrv_all):
    with torch.no_grad():
        logits = xrv_all(_images(2, 224))
    assert logits.shape == (2, 18)
    assert list(xrv_all.classes) == xrv.models.model_urls[ALL]["labels"]
    assert xrv_all.classes[0] == "Atelectasis" and xrv_all.classes[-1] == \
        "Enlarged Cardiomediastinum"
    assert xrv_all.task == "multilabel" and xrv_all.channels == 1


def test_xrv_model_sees_the_image_mapped_to_minus_1024_to_1024(xrv_all):
    x = _images(1, 224, seed=1)
    model = copy.deepcopy(xrv_all)
    seen = _spy_inputs(model.model)
    with torch.no_grad():
        model(x)
    assert torch.equal(seen[0], x * 2048 - 1024)


def test_xrv_logits_are_its_raw_outputs_before_sigmoid_and_operating_point_scaling(xrv_all):
    x = _images(1, 224, seed=2)
    reference = copy.deepcopy(xrv_all.model)
    reference.op_threshs = None
    reference.apply_sigmoid = False
    with torch.no_grad():
        expected = reference(x * 2048 - 1024)
        got = xrv_all(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_xrv_operating_points_are_kept_as_the_decision_thresholds(xrv_all):
    assert xrv_all.thresholds == pytest.approx(xrv.models.model_urls[ALL]["op_threshs"])


def test_xrv_eps_of_8_over_255_is_64_25_in_its_units(xrv_all):
    assert xrv_all.input_range == (-1024.0, 1024.0)
    assert xrv_all.eps_scale == 2048.0
    assert xrv_all.model_units(8 / 255) == pytest.approx(8 * 2048 / 255)  # 64.25...


def test_xrv_findings_it_does_not_predict_are_dropped_from_logits_names_and_thresholds():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        adapter = xrv_model("densenet121-res224-nih", weights=None)
    x = _images(1, 224, seed=3)
    reference = copy.deepcopy(adapter.model)
    with torch.no_grad():
        raw = reference(x * 2048 - 1024)  # 18 wide; the last 4 targets are '' for the NIH model
        got = adapter(x)
    nih = ["Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
           "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule",
           "Mass", "Hernia"]
    assert raw.shape == (1, 18)
    assert list(adapter.classes) == nih
    torch.testing.assert_close(got, raw[:, :14], rtol=0, atol=0)
    assert adapter.thresholds == pytest.approx(
        xrv.models.model_urls["densenet121-res224-nih"]["op_threshs"][:14])


def test_xrv_adapter_resizes_other_sizes_to_224_as_xrv_does(xrv_all):
    x = _images(1, 256, seed=4)  # downsampling: xrv's antialias changes the values
    model = copy.deepcopy(xrv_all)
    seen = _spy_inputs(model.model)
    with torch.no_grad():
        model(x)
    expected = F.interpolate(x * 2048 - 1024, size=(224, 224), mode="bilinear",
                             antialias=True)
    assert seen[0].shape == (1, 1, 224, 224)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=2e-3)


def test_xrv_adapter_refuses_non_square_images_in_one_line(xrv_all):
    with pytest.raises(ValueError) as excinfo:
        xrv_all(torch.zeros(1, 1, 64, 48))
    assert "centre-crop" in _one_line_error(excinfo)


def test_gradient_reaches_the_input_and_an_fgsm_step_changes_the_logits(xrv_all):
    x = _images(1, 224, seed=5).requires_grad_(True)
    targets = torch.zeros(1, 18)
    loss = masked_bce(xrv_all(x), targets)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    x_adv = (x.detach() + 8 / 255 * grad.sign()).clamp(0, 1)
    with torch.no_grad():
        clean, adv = xrv_all(x.detach()), xrv_all(x_adv)
    assert not torch.equal(clean, adv)


def test_a_weights_file_state_dict_is_loaded_into_the_xrv_architecture(tmp_path, offline):
    source = _random_densenet(seed=7)
    source.op_threshs = torch.tensor(xrv.models.model_urls[ALL]["op_threshs"])
    path = tmp_path / "xrv-all.pt"
    torch.save(source.state_dict(), path)
    adapter = load_model_spec(f"xrv:{ALL}", weights_file=path)
    got = adapter.model.state_dict()
    for key, value in source.state_dict().items():
        if key != "op_threshs":
            assert torch.equal(got[key], value), key
    assert adapter.model.op_threshs is None


def test_pretrained_weights_in_the_xrv_cache_are_read_there_without_network(xrv_cache, offline):
    source = _random_densenet(seed=8)  # xrv's release files are whole pickled DenseNets
    url = xrv.models.model_urls[ALL]["weights_url"]
    torch.save(source, xrv_cache / url.rsplit("/", 1)[1])
    adapter = load_model_spec(f"xrv:{ALL}")
    torch.testing.assert_close(adapter.model.classifier.weight, source.classifier.weight,
                               rtol=0, atol=0)
    torch.testing.assert_close(adapter.model.features.conv0.weight,
                               source.features.conv0.weight, rtol=0, atol=0)


def test_operating_points_saved_in_a_pickled_xrv_model_do_not_reach_the_logits(xrv_cache,
                                                                              offline):
    source = _random_densenet(seed=9)
    source.op_threshs = torch.tensor(xrv.models.model_urls[ALL]["op_threshs"])  # as xrv sets
    url = xrv.models.model_urls[ALL]["weights_url"]
    torch.save(source, xrv_cache / url.rsplit("/", 1)[1])
    adapter = load_model_spec(f"xrv:{ALL}")
    x = _images(1, 224, seed=13)
    source.op_threshs = None
    with torch.no_grad():
        torch.testing.assert_close(adapter(x), source(x * 2048 - 1024), rtol=0, atol=0)


def test_absent_pretrained_weights_name_the_file_folder_and_url_without_network(xrv_cache,
                                                                               offline):
    url = xrv.models.model_urls[ALL]["weights_url"]
    with pytest.raises(FileNotFoundError) as excinfo:
        load_model_spec(f"xrv:{ALL}")
    message = _one_line_error(excinfo)
    assert url.rsplit("/", 1)[1] in message
    assert str(xrv_cache) in message
    assert url in message
    assert not list(xrv_cache.iterdir())


def test_a_weights_file_for_another_architecture_is_one_line_naming_it(tmp_path, offline):
    path = tmp_path / "other.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ValueError) as excinfo:
        xrv_model(ALL, weights_file=path)
    assert str(path) in _one_line_error(excinfo)


def test_a_pickle_needing_other_classes_is_refused_without_running_it(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(nn.Sequential(nn.Tanh()), path)  # Tanh: not an xrv DenseNet part
    with pytest.raises(ValueError) as excinfo:
        xrv_model(ALL, weights_file=path)
    message = _one_line_error(excinfo)
    assert str(path) in message and "weights_only=True" in message


def test_importing_mladv_does_not_import_torchxrayvision():
    code = ("import sys, mladv, mladv.adapters; "
            "print('torchxrayvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False"


# --- data findings in the model's class order --------------------------------------------------

def test_targets_follow_the_model_classes_with_unlabelled_findings_unknown():
    nan = float("nan")
    targets = torch.tensor([[1.0, 0.0, nan], [0.0, 1.0, 1.0]])
    findings = ["Effusion", "Cardiomegaly", "No Finding"]
    classes = ["Atelectasis", "Cardiomegaly", "Effusion"]
    expected = torch.tensor([[nan, 0.0, 1.0], [nan, 1.0, 0.0]])
    torch.testing.assert_close(align_targets(targets, findings, classes), expected,
                               equal_nan=True)


def test_finding_names_match_across_underscores_spaces_and_case():
    targets = torch.tensor([[1.0], [0.0]])
    got = align_targets(targets, ["Pleural_Thickening"], ["pleural thickening", "Mass"])
    torch.testing.assert_close(got, torch.tensor([[1.0, float("nan")], [0.0, float("nan")]]),
                               equal_nan=True)


def test_data_sharing_no_finding_with_the_model_is_one_line():
    with pytest.raises(ValueError) as excinfo:
        align_targets(torch.zeros(2, 1), ["Covid"], ["Mass", "Nodule"])
    assert "no finding of the data" in _one_line_error(excinfo)


# --- TorchScript ------------------------------------------------------------------------------

class _ThreeChannel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


@pytest.fixture()
def scripted(tmp_path):
    torch.manual_seed(0)
    module = torch.jit.script(_ThreeChannel().eval())
    path = tmp_path / "model.pt"
    torch.jit.save(module, str(path))
    return module, path


def test_torchscript_model_sees_x_times_255_repeated_to_3_channels(scripted):
    module, path = scripted
    adapter = load_model_spec(f"torchscript:{path}", input_range=(0, 255), channels=3,
                              task="multiclass", classes=["normal", "pneumonia"])
    x = _images(2, 16, seed=9)
    with torch.no_grad():
        expected = module(x.repeat(1, 3, 1, 1) * 255)
        got = adapter(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert adapter.eps_scale == 255.0


def test_torchscript_model_sees_mean_std_normalised_input(scripted):
    module, path = scripted
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    adapter = load_model_spec(f"torchscript:{path}", channels=3, task="multiclass",
                              mean=mean, std=std)
    x = _images(1, 16, seed=10)
    norm = (x.repeat(1, 3, 1, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / \
        torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x), module(norm))


# --- Python factories -------------------------------------------------------------------------

def test_python_factory_is_imported_called_and_wrapped(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    import adapter_factories

    adapter = load_model_spec("python:adapter_factories:make", task="multilabel",
                              classes=["a", "b", "c"], thresholds=[0.2, 0.5, 0.7])
    x = _images(2, 12, seed=11)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x), adapter_factories.make()(x), rtol=0, atol=0)
    assert adapter.thresholds == (0.2, 0.5, 0.7)


def test_python_factory_gets_its_keyword_arguments(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    adapter = python_model("adapter_factories:make", task="multiclass", kwargs={"num_outputs": 5})
    with torch.no_grad():
        assert adapter(_images(1, 12)).shape == (1, 5)


def test_python_factory_weights_file_is_loaded(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(TESTS))
    import adapter_factories

    trained = adapter_factories.make()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    path = tmp_path / "w.pt"
    torch.save(trained.state_dict(), path)
    adapter = load_model_spec("python:adapter_factories:make", task="multiclass",
                              weights_file=path)
    x = _images(1, 12, seed=12)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x), trained(x), rtol=0, atol=0)


def test_input_size_resizes_to_the_model_size_before_the_range_map(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    adapter = load_model_spec("python:adapter_factories:make", task="multiclass",
                              input_range=(0, 255), input_size=8)
    seen = _spy_inputs(adapter.model)
    x = _images(1, 16, seed=14)
    with torch.no_grad():
        adapter(x)
    expected = F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True) * 255
    torch.testing.assert_close(seen[0], expected)


# --- one line for every wrong spec ------------------------------------------------------------

BAD_SPECS = [
    ("resnet18", {}, "xrv:NAME, torchscript:FILE or python:pkg.module:factory"),
    ("hub:foo", {}, "xrv:NAME, torchscript:FILE or python:pkg.module:factory"),
    ("xrv:", {}, "xrv:NAME"),
    ("xrv:densenet999", {}, "unknown torchxrayvision model 'densenet999'"),
    ("xrv:resnet50-res512-all", {}, "only torchxrayvision's DenseNet-121"),
    (f"xrv:{ALL}", {"input_range": (0, 255)}, "input_range (--input-range) does not apply"),
    (f"xrv:{ALL}", {"channels": 3}, "channels (--channels) does not apply"),
    (f"xrv:{ALL}", {"task": "multiclass"}, "multilabel"),
    (f"xrv:{ALL}", {"classes": ["a"]}, "classes does not apply"),
    (f"xrv:{ALL}", {"weights_file": "/nonexistent/w.pt"}, "/nonexistent/w.pt"),
    ("torchscript:/nonexistent/m.pt", {"task": "multiclass"}, "/nonexistent/m.pt"),
    ("torchscript:m.pt", {}, "task (--task multiclass|multilabel) is required"),
    ("torchscript:m.pt", {"task": "multiclass", "weights_file": "w.pt"},
     "weights_file (--weights-file) does not apply to torchscript"),
    ("torchscript:m.pt", {"task": "regression"}, "task must be one of"),
    ("python:adapter_factories:make", {"task": "multiclass", "channels": 2},
     "channels (--channels) must be 1 or 3"),
    ("python:adapter_factories:make", {"task": "multiclass", "input_range": (1, 0)},
     "LO < HI"),
    ("python:adapter_factories", {"task": "multiclass"}, "python:pkg.module:factory"),
    ("python:no_such_module_xyz:make", {"task": "multiclass"}, "cannot import"),
    ("python:adapter_factories:missing", {"task": "multiclass"}, "has no 'missing'"),
    ("python:adapter_factories:NOT_CALLABLE", {"task": "multiclass"}, "not a callable"),
    ("python:adapter_factories:not_a_module", {"task": "multiclass"},
     "returned a int, not a torch.nn.Module"),
    ("python:adapter_factories:raises", {"task": "multiclass"}, "the factory's own failure"),
    ("python:adapter_factories:make", {"task": "multiclass", "thresholds": [0.5] * 3},
     "thresholds apply to a multilabel task only"),
    ("python:adapter_factories:make", {"task": "multilabel", "classes": ["a", "b"],
                                       "image_size": 12},
     "returns 3 logits per image but 2 classes"),
]


@pytest.mark.parametrize(("spec", "options", "expected"), BAD_SPECS,
                         ids=[f"{s}-{'-'.join(o)}" for s, o, _ in BAD_SPECS])
def test_a_wrong_spec_or_option_is_one_line(spec, options, expected, monkeypatch, offline,
                                            xrv_cache):
    monkeypatch.syspath_prepend(str(TESTS))
    with pytest.raises((ValueError, FileNotFoundError)) as excinfo:
        load_model_spec(spec, **options)
    assert expected in _one_line_error(excinfo)


def test_a_not_torchscript_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ValueError) as excinfo:
        load_model_spec(f"torchscript:{path}", task="multiclass")
    message = _one_line_error(excinfo)
    assert str(path) in message and "not a TorchScript archive" in message


def test_output_width_other_than_the_classes_is_one_line_at_forward(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    adapter = load_model_spec("python:adapter_factories:make", task="multiclass",
                              classes=["a", "b", "c", "d"])
    with pytest.raises(ValueError) as excinfo:
        adapter(_images(1, 12))
    assert "returns 3 logits per image but 4 classes" in _one_line_error(excinfo)


def test_three_channel_input_is_refused_in_one_line(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    adapter = load_model_spec("python:adapter_factories:make", task="multiclass")
    with pytest.raises(ValueError) as excinfo:
        adapter(torch.zeros(1, 3, 12, 12))
    assert "N x 1 x H x W" in _one_line_error(excinfo)
