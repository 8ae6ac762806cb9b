import numpy as np
import pytest
import torch
from PIL import Image

from mladv.data import (
    DataError,
    load_folder,
    load_source,
    make_phantoms,
    read_image,
    read_image_tensor,
)


def _png(path, size=(40, 40), mode="L", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        arr = np.linspace(0, 65535, size[0] * size[1], dtype=np.uint16).reshape(size)
        Image.fromarray(arr).save(path)
    else:
        Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)
    return path


@pytest.fixture()
def folder(tmp_path):
    for c in ("a", "b"):
        for i in range(3):
            _png(tmp_path / c / f"{i}.png", value=40 * i + 10)
    return tmp_path


def test_loads_an_imagefolder_as_unit_range_tensors(folder):
    data = load_folder(folder, 32)
    assert data.images.shape == (6, 1, 32, 32)
    assert data.classes == ["a", "b"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert 0 <= data.images.min() and data.images.max() <= 1


def test_missing_path_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.*does not exist"):
        load_folder(tmp_path / "nope", 32)


def test_folder_without_class_subfolders_is_refused(tmp_path):
    _png(tmp_path / "x.png")
    with pytest.raises(DataError, match="no class subfolders"):
        load_folder(tmp_path, 32)


def test_empty_class_is_named(folder):
    (folder / "c").mkdir()
    with pytest.raises(DataError, match=r"c: class folder is empty"):
        load_folder(folder, 32)


def test_corrupt_image_is_named(folder):
    (folder / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"bad\.png"):
        load_folder(folder, 32)


def test_truncated_image_is_named(folder):
    good = (folder / "a" / "0.png").read_bytes()
    big = folder / "a" / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(big)
    big.write_bytes(big.read_bytes()[: len(good) // 2 + 60])
    with pytest.raises(DataError, match=r"trunc\.png"):
        load_folder(folder, 32)


def test_non_image_file_is_named(folder):
    (folder / "b" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not an image file"):
        load_folder(folder, 32)


def test_rgb_image_is_converted_to_one_channel(folder):
    _png(folder / "a" / "rgb.png", mode="RGB")
    data = load_folder(folder, 32)
    assert data.images.shape[1] == 1 and len(data) == 7


def test_full_range_sixteen_bit_image_spans_the_unit_range(tmp_path):
    p = _png(tmp_path / "x.png", size=(40, 40), mode="I;16")
    arr = read_image(p)
    assert arr.dtype == np.float32 and arr.min() == 0.0 and arr.max() == 1.0


def test_image_smaller_than_target_is_named(folder):
    _png(folder / "a" / "small.png", size=(16, 16))
    with pytest.raises(DataError, match=r"small\.png: image is 16x16, smaller than the target "):
        load_folder(folder, 32)


def test_skip_bad_skips_and_lists_unreadable_files(folder):
    (folder / "a" / "bad.png").write_bytes(b"not a png")
    (folder / "b" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match="skipped 2"):
        data = load_folder(folder, 32, skip_bad=True)
    assert len(data) == 6
    assert sorted(p.split("/")[-1] for p, _ in data.skipped) == ["bad.png", "notes.txt"]


def test_class_left_empty_by_skipping_is_named(tmp_path):
    _png(tmp_path / "a" / "0.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(b"x")
    with pytest.warns(UserWarning), \
            pytest.raises(DataError, match=r"no readable image left.*\['b'\]"):
        load_folder(tmp_path, 32, skip_bad=True)


def test_expected_classes_must_match(folder):
    with pytest.raises(DataError, match=r"differ from the expected"):
        load_folder(folder, 32, classes=["a", "c"])


def test_non_square_images_are_centre_cropped(tmp_path):
    arr = np.zeros((40, 80), dtype=np.uint8)
    arr[:, 20:60] = 255  # bright centre band only
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(arr).save(tmp_path / c / "w.png")
    data = load_folder(tmp_path, 20)
    assert data.images.shape == (2, 1, 20, 20)
    assert data.images.mean() > 0.9


def test_eight_bit_image_and_its_sixteen_bit_copy_load_equal(tmp_path):
    arr8 = np.random.default_rng(0).integers(20, 200, (40, 48), dtype=np.uint8)  # not full range
    for c in ("a", "b"):
        (tmp_path / "8" / c).mkdir(parents=True)
        (tmp_path / "16" / c).mkdir(parents=True)
        Image.fromarray(arr8).save(tmp_path / "8" / c / "x.png")
        Image.fromarray(arr8.astype(np.uint16) * 257).save(tmp_path / "16" / c / "x.png")
    assert Image.open(tmp_path / "16" / "a" / "x.png").mode == "I;16"
    sixteen = read_image(tmp_path / "16" / "a" / "x.png")
    np.testing.assert_array_equal(sixteen, arr8 / np.float32(255))
    assert torch.equal(load_folder(tmp_path / "8", 32).images,
                       load_folder(tmp_path / "16", 32).images)


def test_sixteen_bit_image_is_scaled_by_bit_depth_not_stretched(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(np.linspace(1000, 2000, 1600).astype(np.uint16).reshape(40, 40)).save(p)
    arr = read_image(p)
    assert arr.min() == np.float32(1000 / 65535) and arr.max() == np.float32(2000 / 65535)


def test_float_image_outside_unit_range_is_refused(tmp_path):
    p = tmp_path / "f.tif"
    Image.fromarray(np.linspace(0, 5, 1600, dtype=np.float32).reshape(40, 40)).save(p)
    with pytest.raises(DataError, match=r"f\.tif: float image, values in \[0, 5\]"):
        read_image(p)


def test_read_image_tensor_is_a_torchvision_loader(tmp_path):
    p = _png(tmp_path / "x.png", size=(40, 30), mode="I;16")
    t = read_image_tensor(p)
    assert t.shape == (1, 40, 30) and t.dtype == torch.float32 and t.max() == 1


def test_one_class_folder_is_named(tmp_path):
    _png(tmp_path / "only" / "0.png")
    with pytest.raises(DataError, match=rf"{tmp_path}: only the class 'only'; .*at least two"):
        load_folder(tmp_path, 32)
    with pytest.raises(DataError, match="only the class 'only'"):
        load_source(str(tmp_path), 32)


@pytest.mark.parametrize("source", ["phantoms:abc", "phantoms:0", "phantoms:-3", "phantoms:"])
def test_bad_phantom_count_is_one_line(source):
    with pytest.raises(DataError, match=rf"^{source}: expected phantoms:N with N a positive whole"):
        load_source(source, 24)


def test_unknown_source_prefix_lists_the_valid_ones(tmp_path):
    with pytest.raises(DataError, match=r"unknown data source 'kermeny'; valid: phantoms.*kermany"):
        load_source(f"kermeny:{tmp_path}", 24)


def test_phantoms_are_reproducible_and_labelled():
    a, b = make_phantoms(5, 32, seed=3), make_phantoms(5, 32, seed=3)
    assert torch.equal(a.images, b.images)
    assert a.classes == ["covid_like", "normal", "pneumonia_like"]
    assert a.labels.bincount().tolist() == [5, 5, 5]
    assert not torch.equal(a.images, make_phantoms(5, 32, seed=4).images)


def test_phantom_classes_differ_on_average():
    d = make_phantoms(30, 32, seed=0)
    means = [d.images[d.labels == c].mean(0) for c in range(3)]
    assert (means[0] - means[1]).abs().max() > 0.01
    assert (means[2] - means[1]).abs().max() > 0.005


def test_load_source_phantoms_with_count():
    d = load_source("phantoms:4", 24)
    assert len(d) == 12 and d.images.shape[-1] == 24


def test_cxr3_loads_with_patient_groups(cxr3_root):
    data = load_folder(cxr3_root, 64)
    assert data.classes == ["covid", "normal", "pneumonia"]
    assert len(data) == 779
    assert len(set(data.groups)) < len(data)  # some patients have several images
