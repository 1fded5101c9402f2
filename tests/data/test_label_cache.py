"""The label cache (`load_dataset(..., cache_dir=...)`) is keyed by everything its content depends on (label
space, source files) and regenerates a damaged entry instead of reusing it."""

from __future__ import annotations

import os

import numpy as np
from fake_trees import ids_grid, write_image, write_label

from fishertune.data import load_dataset

RAW = ids_grid([0, 3, 8, 11], 4, 6)  # sky road car void


def _camvid(root):
    write_image(root / "images" / "train" / "0001TP_000001.jpg")
    write_label(root / "labels" / "train" / "0001TP_000001.png", RAW)


def _label(ds):
    return np.asarray(ds[0]["label"])


def test_another_label_space_is_another_entry(tmp_path):
    _camvid(tmp_path / "camvid")
    cache = str(tmp_path / "cache")
    own = _label(load_dataset("camvid", str(tmp_path / "camvid"), "train", cache_dir=cache))
    cs = _label(load_dataset("camvid", str(tmp_path / "camvid"), "train", cache_dir=cache, label_space="cityscapes"))
    np.testing.assert_array_equal(own, np.choose(np.searchsorted([0, 3, 8, 11], RAW), [0, 3, 8, 255]))
    np.testing.assert_array_equal(cs, np.choose(np.searchsorted([0, 3, 8, 11], RAW), [10, 0, 13, 255]))


def test_a_changed_label_file_is_mapped_again(tmp_path):
    _camvid(tmp_path / "camvid")
    cache = str(tmp_path / "cache")
    load_dataset("camvid", str(tmp_path / "camvid"), "train", cache_dir=cache)
    label = tmp_path / "camvid" / "labels" / "train" / "0001TP_000001.png"
    write_label(label, np.full((4, 6), 5, np.uint8))
    st = os.stat(label)
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later edit, whatever the clock's resolution
    assert (_label(load_dataset("camvid", str(tmp_path / "camvid"), "train", cache_dir=cache)) == 5).all()


def test_a_truncated_entry_is_regenerated(tmp_path):
    _camvid(tmp_path / "camvid")
    cache = tmp_path / "cache"
    first = _label(load_dataset("camvid", str(tmp_path / "camvid"), "train", cache_dir=str(cache)))
    (entry,) = cache.rglob("*.png")
    entry.write_bytes(entry.read_bytes()[:40])
    again = _label(load_dataset("camvid", str(tmp_path / "camvid"), "train", cache_dir=str(cache)))
    np.testing.assert_array_equal(again, first)
