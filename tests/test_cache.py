"""The uint8 image cache: decoded once, keyed by content, bit-identical to a fresh decode."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mladv.data import cache as cache_mod
from mladv.data import load_folder, write_phantoms
from mladv.data.cache import cache_dir, cache_key, cached_uint8


@pytest.fixture()
def pngs(tmp_path):
    """18 phantom PNGs of 32 px in an ImageFolder."""
    return write_phantoms(tmp_path / "pngs", n_per_class=6, size=32, seed=3)


def files_of(root):
    return sorted(p for p in root.rglob("*.png"))


def test_cached_load_equals_fresh_decode_on_cxr3(cxr3_root, tmp_path):
    """cxr3 at 64 px (a float resize after the decode): no cache, first cached load (decode and
    store) and second (read from the cache) give exactly the same tensor."""
    fresh = load_folder(cxr3_root, 64, cache=False)
    first = load_folder(cxr3_root, 64, cache=tmp_path / "c")
    second = load_folder(cxr3_root, 64, cache=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("images-*.pt"))) == 1
    assert torch.equal(first.images, fresh.images)
    assert torch.equal(second.images, fresh.images)
    assert first.paths == fresh.paths and torch.equal(second.labels, fresh.labels)


def test_entry_is_reused_without_decoding(pngs, tmp_path, monkeypatch):
    fresh = load_folder(pngs, 16, cache=False)
    load_folder(pngs, 32, cache=tmp_path)  # image size is not part of the key: full-size decode
    monkeypatch.setattr(cache_mod, "decode_all", lambda paths: pytest.fail("decoded again"))
    again = load_folder(pngs, 16, cache=tmp_path)
    assert torch.equal(again.images, fresh.images)


def test_key_changes_when_a_file_changes(pngs):
    files = files_of(pngs)
    before = cache_key(files)
    assert cache_key(files) == before
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(files[0])
    assert cache_key(files) != before


def test_key_follows_content_not_names(pngs, tmp_path):
    files = files_of(pngs)
    copy = tmp_path / "copy.png"
    copy.write_bytes(files[0].read_bytes())
    assert cache_key([copy, *files[1:]]) == cache_key(files)
    assert cache_key(files[::-1]) != cache_key(files)


def test_sixteen_bit_files_are_not_cached(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(path)
    assert cached_uint8([path], tmp_path / "c") is None
    assert not (tmp_path / "c").exists()


def test_cache_folder_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLADV_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.setenv("MLADV_CACHE", "off")
    assert cache_dir() is None
    assert cache_dir(False) is None
    monkeypatch.delenv("MLADV_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "mladv")
