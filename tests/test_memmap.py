"""The on-disk uint8 cache: streamed images equal the in-RAM load bit for bit, the fingerprint
decides reuse, the Dataset serves the same images."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mladv.data import load_folder
from mladv.data.memmap import MemmapDataset, build_memmap


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(5):
            path = tmp_path / "data" / c / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(path)
    return tmp_path / "data"


def test_streamed_images_equal_the_in_ram_load_bit_for_bit(folder, tmp_path):
    in_ram = load_folder(folder, 12, cache=False)
    cached = build_memmap(in_ram.paths, 12, cache=tmp_path / "c", progress=False)
    streamed = torch.cat(list(cached.batches(3)))
    assert streamed.dtype == torch.float32 and torch.equal(streamed, in_ram.images)


def test_resized_images_are_within_half_a_grey_level_of_the_in_ram_load(folder, tmp_path):
    in_ram = load_folder(folder, 7, cache=False)
    cached = build_memmap(in_ram.paths, 7, cache=tmp_path / "c", progress=False)
    streamed = torch.cat(list(cached.batches(4)))
    assert (streamed - in_ram.images).abs().max().item() <= 0.5 / 255 + 1e-7


def test_cache_is_reused_while_the_fingerprint_matches(folder, tmp_path, monkeypatch):
    files = sorted(str(p) for p in folder.rglob("*.png"))
    first = build_memmap(files, 12, cache=tmp_path / "c", progress=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr("mladv.data.memmap.read_image", forbidden)
    assert build_memmap(files, 12, cache=tmp_path / "c", progress=False) == first


def test_a_touched_file_gives_a_new_cache(folder, tmp_path):
    files = sorted(str(p) for p in folder.rglob("*.png"))
    first = build_memmap(files, 12, cache=tmp_path / "c", progress=False)
    st = os.stat(files[0])
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert build_memmap(files, 12, cache=tmp_path / "c", progress=False).path != first.path


def test_a_cache_without_its_sidecar_is_rebuilt(folder, tmp_path):
    files = sorted(str(p) for p in folder.rglob("*.png"))
    first = build_memmap(files, 12, cache=tmp_path / "c", progress=False)
    first.path.with_suffix(".json").unlink()
    first.path.write_bytes(b"truncated")
    again = build_memmap(files, 12, cache=tmp_path / "c", progress=False)
    assert again.path.stat().st_size == again.offset + 10 * 12 * 12


def test_dataset_items_are_the_cached_images_with_their_labels(folder, tmp_path):
    in_ram = load_folder(folder, 12, cache=False)
    cached = build_memmap(in_ram.paths, 12, cache=tmp_path / "c", progress=False)
    dataset = pickle.loads(pickle.dumps(MemmapDataset(cached, in_ram.labels)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False)
    images, labels = map(torch.cat, zip(*loader))
    assert torch.equal(images, in_ram.images) and torch.equal(labels, in_ram.labels)


def test_memmap_array_view_holds_the_uint8_values(folder, tmp_path):
    files = sorted(str(p) for p in folder.rglob("*.png"))
    cached = build_memmap(files, 12, cache=tmp_path / "c", progress=False)
    with Image.open(files[3]) as img:
        assert np.array_equal(cached.array()[3, 0], np.asarray(img))


def test_the_dicom_mode_enters_the_key_and_voi_keeps_the_old_one(tmp_path):
    """A cache read in "raw" mode is another cache; "voi" (the default) keys as before the mode
    existed: sha1 of 'mladv-memmap-1|SIZE' then '|path|size|mtime_ns' per file."""
    import hashlib
    import os

    from mladv.data.memmap import fingerprint

    f = tmp_path / "a.png"
    f.write_bytes(b"x")
    st = os.stat(f)
    old = hashlib.sha1(f"mladv-memmap-1|16|{f}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    assert fingerprint([f], 16) == old == fingerprint([f], 16, "voi")
    assert fingerprint([f], 16, "raw") != old
