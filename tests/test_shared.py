"""The pieces both studies share: the strict config base and YAML errors with line numbers, the
report writer, content fingerprints, the one crafting loop and train-or-reuse."""
from __future__ import annotations

import ast
import hashlib
import math
from pathlib import Path

import pytest
import torch
from pydantic import Field

from mladv.attacks import make_attack, pgd
from mladv.configbase import Strict, key_line, load_yaml_config
from mladv.crafting import craft
from mladv.data import make_phantoms
from mladv.fingerprint import (
    attack_fingerprint,
    attack_settings,
    data_sha1,
    file_sha1,
    image_hashes,
    key_digest,
    model_sha1,
    unseen_indices,
)
from mladv.models import build_model
from mladv.reporting import fmt, json_safe, pm, to_html, to_markdown
from mladv.reuse import saved_with_key, train_or_reuse

pytestmark = pytest.mark.usefixtures("one_thread")


class Inner(Strict):
    steps: int = Field(default=1, ge=1)


class Outer(Strict):
    name: str = "x"
    inner: Inner = Field(default_factory=lambda: Inner())
    items: list[Inner] = Field(default_factory=list)


def test_key_line_finds_nested_keys_and_list_items():
    text = "name: a\ninner:\n  steps: 2\nitems:\n  - steps: 1\n  - steps: 0\n"
    assert key_line(text, ("inner", "steps")) == 3
    assert key_line(text, ("items", 1, "steps")) == 6
    assert key_line(text, ("missing",)) is None
    assert key_line(text, ("inner", "nope")) == 2  # the deepest key found


def test_errors_name_file_line_and_key_but_no_line_for_a_flag(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nitems:\n  - steps: 1\n  - steps: 0\n")
    with pytest.raises(ValueError, match=r"c\.yaml:4: items\[1\]\.steps: Input should be greater"):
        load_yaml_config(Outer, path)
    path.write_text("name: a\n")
    with pytest.raises(ValueError, match=r"c\.yaml: inner: Input should be a valid dictionary"):
        load_yaml_config(Outer, path, {"inner": 3})
    assert load_yaml_config(Outer, path, {"name": "b", "inner": None}).name == "b"


def test_report_blocks_render_to_markdown_and_self_contained_html(tmp_path):
    (tmp_path / "f.png").write_bytes(b"\x89PNG fake")
    blocks = [("h", "T"), ("p", "a < b"), ("ul", ["one"]), ("table", ["k", "v"], [["x", "1"]]),
              ("figure", "f.png", "cap")]
    md = to_markdown(blocks)
    assert md.splitlines()[:2] == ["# T", ""] and "| k | v |\n|---|---|\n| x | 1 |" in md
    assert "![cap](f.png)" in md and "- one" in md
    page = to_html(blocks, "title", tmp_path)
    assert "a &lt; b" in page and "<td>x</td>" in page
    assert "data:image/png;base64,iVBORyBmYWtl" in page and "f.png\"" not in page
    with pytest.raises(ValueError, match="unknown report block 'img'"):
        to_markdown([("img", "f.png")])
    assert json_safe({"a": [math.nan, 1.0], "b": math.inf}) == {"a": [None, 1.0], "b": None}


def test_one_number_format_for_reports():
    """``fmt``: fixed decimals, ``n/a`` for a missing or NaN value, ``inf`` for an infinite one
    (a PSNR of unchanged images, null in the JSON files)."""
    assert [fmt(0.12345), fmt(0.5, 1, sign=True), fmt(-0.5, 2, sign=True)] == ["0.123", "+0.5",
                                                                               "-0.50"]
    assert [fmt(None), fmt(math.nan), fmt(math.inf, 1), fmt(-math.inf)] == ["n/a", "n/a", "inf",
                                                                          "-inf"]
    assert pm({"mean": 0.5, "std": 0.25, "n": 2}, 2) == "0.50 ± 0.25"
    assert [pm({"mean": 0.5, "std": None, "n": 1}), pm(None)] == ["0.500", "n/a"]


@pytest.mark.parametrize("name, option, value", [
    ("pgd", "steps", 3), ("pgd", "alpha", 1 / 255), ("pgd", "random_start", False),
    ("pgd", "seed", 1), ("mifgsm", "decay", 0.5), ("mifgsm", "steps", 3),
    ("fgsm", "precision", "bf16"), ("chain", "rotation", 10.0), ("chain", "steps", 2),
    ("mladv", "style_weight", 0.5), ("rays", "budget", 7), ("gama", "steps", 3),
    ("pifgsm", "kernel_size", 5),
])
def test_attack_fingerprint_follows_every_option_and_not_the_model(name, option, value):
    """One fingerprint of an attack (shards record its settings, transfer's reuse key holds it):
    attacks differing only in one option differ; equal ones (on another model) agree."""
    torch.manual_seed(0)
    model, other = build_model("tiny_cnn", 3), build_model("tiny_cnn", 3)
    base = make_attack(name, model)
    assert attack_fingerprint(make_attack(name, other)) == attack_fingerprint(base)
    changed = make_attack(name, model, **{option: value})
    assert attack_fingerprint(changed) != attack_fingerprint(base)
    if option != "seed":  # shards keep the seed apart, in the manifest
        assert attack_settings(changed) != attack_settings(base)


def test_fingerprints_follow_content_not_identity():
    data = make_phantoms(2, 16, seed=0)
    copy = data.subset(torch.arange(len(data)))
    assert data_sha1(copy) == data_sha1(data)
    copy.images[0, 0, 0, 0] += 1 / 255
    assert data_sha1(copy) != data_sha1(data)
    torch.manual_seed(0)
    a, b = build_model("tiny_cnn", 3), build_model("tiny_cnn", 3)
    assert model_sha1(a) != model_sha1(b)
    b.load_state_dict(a.state_dict())
    assert model_sha1(a) == model_sha1(b)
    assert key_digest({"x": 1, "y": [2]}) == key_digest({"y": [2], "x": 1})


def test_image_hashes_keep_the_recorded_format():
    """``trained_on`` entries: SHA-1 of the image as 16-bit integers, first 16 hex digits."""
    data = make_phantoms(3, 16, seed=1)
    first = (data.images[0].numpy() * 65535).round().astype("uint16")
    assert image_hashes(data.images)[0] == hashlib.sha1(first.tobytes()).hexdigest()[:16]
    hashes = image_hashes(data.images)
    assert len(hashes) == len(data) == len(set(hashes))
    assert image_hashes(data.images.clone()) == hashes  # content, not identity
    moved = data.images.clone()
    moved[2, 0, 5, 5] += 1 / 255
    assert image_hashes(moved) == hashes[:2] + image_hashes(moved[2:]) != hashes


def test_unseen_indices_leave_out_exactly_the_recorded_images():
    data = make_phantoms(3, 16, seed=1)
    record = image_hashes(data.images[[1, 4]])
    assert unseen_indices(data.images, record) == [i for i in range(len(data)) if i not in (1, 4)]
    assert unseen_indices(data.images, []) == list(range(len(data)))
    assert unseen_indices(data.images, image_hashes(data.images)) == []


def test_one_home_for_fingerprints_without_an_import_cycle(tmp_path):
    import mladv.fingerprint
    import mladv.utils

    assert not hasattr(mladv.utils, "image_hashes")  # one home: no second import path
    tree = ast.parse(Path(mladv.fingerprint.__file__).read_text())
    runtime = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert runtime == []  # mladv.data can import fingerprint (ImageSet: type checking only)
    (tmp_path / "w.bin").write_bytes(b"x" * 3_000_001)
    assert file_sha1(tmp_path / "w.bin") == hashlib.sha1(b"x" * 3_000_001).hexdigest()


def test_craft_seeds_each_batch_and_restores_the_attack_seed():
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 3).eval()
    x, y = torch.rand(6, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    atk = pgd(model, eps=8 / 255, steps=2, seed=5)
    whole = craft(atk, x, y, batch_size=3, progress=False, batch_seed=lambda b: 100 + b)
    assert atk.seed == 5
    atk.seed = 101  # batch 1 alone, with the seed the loop gave it
    assert torch.equal(craft(atk, x[3:], y[3:], batch_size=3, progress=False), whole[3:])
    adv, queries = craft(atk, x, y, batch_size=4, progress=False, record_queries=True)
    assert adv.shape == x.shape and queries is None  # PGD keeps no query count


def test_train_or_reuse_reuses_only_with_the_same_key(tmp_path):
    data = make_phantoms(2, 16, seed=0)
    kw = {"arch": "tiny_cnn", "data": data, "image_size": 16, "seed": 0,
          "device": torch.device("cpu"), "epochs": 1, "batch_size": 8, "progress": False}
    path = tmp_path / "m.pt"
    first, meta, reused = train_or_reuse(path, key={"v": 1}, **kw)
    assert not reused and meta["n_train"] == len(data) and len(meta["history"]) == 1
    again, _, reused = train_or_reuse(path, key={"v": 1}, **kw)
    assert reused and model_sha1(again) == model_sha1(first)


def test_train_or_reuse_refuses_a_checkpoint_made_with_other_settings(tmp_path):
    """The resume contract: a finished model is never trained over; the refusal names the
    setting that differs and leaves the checkpoint as it was."""
    data = make_phantoms(2, 16, seed=0)
    kw = {"arch": "tiny_cnn", "data": data, "image_size": 16, "seed": 0,
          "device": torch.device("cpu"), "epochs": 1, "batch_size": 8, "progress": False}
    path = tmp_path / "m.pt"
    train_or_reuse(path, key={"v": 1, "lr": 0.1}, **kw)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"m\.pt: holds a trained model made with other settings "
                       r"\(v: 1 there, 2 now\); rerun with those settings"):
        train_or_reuse(path, key={"v": 2, "lr": 0.1}, **kw)
    assert path.read_bytes() == before


def test_train_or_reuse_builds_on_pretrained_weights(tmp_path):
    """One path for fresh and pretrained models: the backbone arrives, the head is new, a frozen
    backbone stays as loaded, and the checkpoint says where it came from."""
    from mladv.models import head_name, load_checkpoint

    torch.manual_seed(7)
    pretrained = build_model("tiny_cnn", 5).net.state_dict()  # another head size
    torch.save(pretrained, tmp_path / "w.pth")
    data = make_phantoms(2, 16, seed=0)
    kw = {"arch": "tiny_cnn", "data": data, "image_size": 16, "seed": 0, "lr": 0.05,
          "device": torch.device("cpu"), "epochs": 1, "batch_size": 4, "progress": False}
    model, _, reused = train_or_reuse(tmp_path / "f.pt", key={"v": 1},
                                      weights=str(tmp_path / "w.pth"), freeze_backbone=True, **kw)
    head = head_name(model.net)
    state = model.net.state_dict()
    body = [k for k in pretrained if not k.startswith(head + ".")]
    assert not reused and model.frozen and state[f"{head}.weight"].shape[0] == 3
    assert body and all(torch.equal(state[k], pretrained[k]) for k in body)
    ckpt = load_checkpoint(tmp_path / "f.pt")[1]
    assert ckpt["weights"] == str(tmp_path / "w.pth") and ckpt["freeze_backbone"] is True
    assert ckpt["reuse_key"] == {"v": 1}
    tuned, _, _ = train_or_reuse(tmp_path / "t.pt", weights=str(tmp_path / "w.pth"), **kw)
    assert not all(torch.equal(tuned.net.state_dict()[k], pretrained[k]) for k in body)
    fresh, _, _ = train_or_reuse(tmp_path / "r.pt", **kw)  # no weights: a fresh initialisation
    k = body[0]
    near = (tuned.net.state_dict()[k] - pretrained[k]).norm()  # fine-tuned from the weights
    assert near < 0.5 * (fresh.net.state_dict()[k] - pretrained[k]).norm()


def test_saved_with_key_reuses_only_the_same_key(tmp_path):
    path = tmp_path / "piece.pt"
    assert saved_with_key(path, "abc") is None  # nothing there yet
    torch.save({"images": torch.ones(2, 1, 4, 4), "key": "abc"}, path)
    saved = saved_with_key(path, "abc")
    assert saved is not None and torch.equal(saved["images"], torch.ones(2, 1, 4, 4))


def test_saved_with_key_refuses_a_piece_made_another_way_naming_the_setting(tmp_path):
    path = tmp_path / "piece.pt"
    torch.save({"images": torch.ones(1), "key": "abc", "settings": {"eps": 8, "steps": 2}}, path)
    with pytest.raises(ValueError, match=r"piece\.pt: holds a finished piece made with other "
                       r"settings \(steps: 2 there, 3 now\); rerun with those settings"):
        saved_with_key(path, "abd", {"eps": 8, "steps": 3})
    torch.save([1, 2], path)  # not a keyed dict: refused too, never overwritten
    with pytest.raises(ValueError, match=r"key: not a keyed piece there, abc now"):
        saved_with_key(path, "abc")


def test_a_checkpoint_that_records_no_settings_is_refused_naming_settings(tmp_path):
    """A checkpoint without ``reuse_key`` (an older ``mladv train``, or one made elsewhere) is
    not trained over; the whole record differs, so the key named is ``settings``."""
    data = make_phantoms(2, 16, seed=0)
    kw = {"arch": "tiny_cnn", "data": data, "image_size": 16, "seed": 0,
          "device": torch.device("cpu"), "epochs": 1, "batch_size": 8, "progress": False}
    path = tmp_path / "m.pt"
    train_or_reuse(path, **kw)  # no key: saved without reuse_key
    with pytest.raises(ValueError, match=r"m\.pt: holds a trained model made with other settings "
                       r"\(settings: null there, \{\"v\": 1\} now\)"):
        train_or_reuse(path, key={"v": 1}, **kw)


def test_weights_sha1_is_the_content_of_a_local_file_and_none_for_a_name(tmp_path):
    from mladv.fingerprint import file_sha1, weights_sha1

    (tmp_path / "w.pth").write_bytes(b"abc")
    assert weights_sha1(tmp_path / "w.pth") == file_sha1(tmp_path / "w.pth")
    assert weights_sha1("IMAGENET1K_V1") is None and weights_sha1(None) is None
