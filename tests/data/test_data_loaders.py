"""Every loader on a tiny fake tree in its official layout: exact mapped labels, metadata, errors."""

import numpy as np
import pytest
from fake_trees import ids_grid, write_image, write_label

from fishertune.data import DatasetLayoutError, LabelError, get_id2label, load_dataset
from fishertune.data.labels import GTAV_EVAL_IDS, MAPILLARY_CLASSES

CS_IDS = [0, 7, 8, 11, 24, 26, 33, 9, 255]  # 255 = license plate (-1 as uint8)
CS_TRAIN = [255, 0, 1, 2, 11, 13, 18, 255, 255]


def _check(ds, images, expected_labels, n_classes=19):
    assert ds.column_names == ["image", "label"] and len(ds) == len(images)
    for i, (img, lbl) in enumerate(zip(images, expected_labels)):
        ex = ds[i]
        np.testing.assert_array_equal(np.asarray(ex["label"]), lbl)
        if img is not None:  # PNG images must round-trip exactly
            np.testing.assert_array_equal(np.asarray(ex["image"].convert("RGB")), img)
    assert len(get_id2label(ds)) == n_classes


def _lut(raw, src, dst):
    out = np.full(raw.shape, 99, np.uint8)
    for s, d in zip(src, dst):
        out[raw == s] = d
    assert (out != 99).all()
    return out


def make_cityscapes(root, split="val"):
    imgs, lbls = [], []
    for k, (city, frame) in enumerate([("frankfurt", "000000_000294"), ("lindau", "000001_000019")]):
        stem = f"{city}_{frame}"
        imgs.append(write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=k))
        raw = ids_grid(np.roll(CS_IDS, k))
        write_label(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", raw)
        write_label(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", raw)  # must be ignored
        lbls.append(_lut(raw, CS_IDS, CS_TRAIN))
    return imgs, lbls


def test_cityscapes(tmp_path):
    imgs, lbls = make_cityscapes(tmp_path)
    ds = load_dataset("cityscapes", str(tmp_path), "val")
    _check(ds, imgs, lbls)
    assert get_id2label(ds)[13] == "car" and get_id2label(ds.select([0]))[0] == "road"


def test_gtav(tmp_path):
    raw = [ids_grid([7, 33, 0, 34, 200, 8]), ids_grid([11, 12, 31, 5])]
    imgs = [write_image(tmp_path / "images" / f"{i:05d}.png", seed=i) for i in (1, 2)]
    for i, r in zip((1, 2), raw):
        write_label(tmp_path / "labels" / f"{i:05d}.png", r, palette=True)
    lut = np.full(256, 255, np.uint8)
    lut[list(GTAV_EVAL_IDS)] = np.arange(19)
    _check(load_dataset("gtav", str(tmp_path)), imgs, [lut[r] for r in raw])
    with pytest.raises(DatasetLayoutError, match="split.mat"):
        load_dataset("gtav", str(tmp_path), "train")


def test_bdd100k(tmp_path):
    names = ["0a0a0b1a-7c39d841", "7d2f7975-e0c1c5a7"]
    raw = [ids_grid([0, 5, 18, 255]), ids_grid([13, 10])]
    [write_image(tmp_path / "images" / "10k" / "val" / f"{n}.jpg", seed=i) for i, n in enumerate(names)]
    for n, r in zip(names, raw):
        write_label(tmp_path / "labels" / "sem_seg" / "masks" / "val" / f"{n}.png", r)
    _check(load_dataset("bdd100k", str(tmp_path), "val"), [None, None], raw)
    write_label(tmp_path / "labels" / "sem_seg" / "masks" / "val" / f"{names[1]}.png", ids_grid([19, 0]))
    with pytest.raises(LabelError, match=rf"{names[1]}\.png.*\[19\]"):
        load_dataset("bdd100k", str(tmp_path), "val")


def test_mapillary(tmp_path):
    idx = MAPILLARY_CLASSES.index
    raw = ids_grid(
        [idx("construction--flat--road"), idx("nature--sky"), idx("void--unlabeled"), idx("human--rider--bicyclist")]
    )
    write_image(tmp_path / "validation" / "images" / "-0a1b2c3d4e5f6g7h8i.jpg")
    write_label(tmp_path / "validation" / "labels" / "-0a1b2c3d4e5f6g7h8i.png", raw, palette=True)
    _check(load_dataset("mapillary", str(tmp_path), "val"), [None], [_lut(raw, [13, 27, 65, 20], [0, 10, 255, 12])])


def test_acdc_per_condition(tmp_path):
    expected = {}
    for k, cond in enumerate(("fog", "night", "rain", "snow")):
        seq = f"GOPR04{k}5"
        stem = f"{seq}_frame_000{k}41"
        img = write_image(tmp_path / "rgb_anon" / cond / "val" / seq / f"{stem}_rgb_anon.png", seed=k)
        raw = ids_grid(np.roll(CS_IDS, k))
        write_label(tmp_path / "gt" / cond / "val" / seq / f"{stem}_gt_labelIds.png", raw)
        expected[cond] = (img, _lut(raw, CS_IDS, CS_TRAIN))
    night = load_dataset("acdc", str(tmp_path), "val", condition="night")
    _check(night, [expected["night"][0]], [expected["night"][1]])
    both = load_dataset("acdc", str(tmp_path), "val")
    _check(both, [v[0] for v in expected.values()], [v[1] for v in expected.values()])


def test_camvid_fake_tree(tmp_path):
    raw = {"train/0006R0_f00930": ids_grid([0, 3, 11]), "test/0001TP_006690": ids_grid([8, 10, 4])}
    for stem, r in raw.items():
        write_image(tmp_path / "images" / f"{stem}.jpg")
        write_label(tmp_path / "labels" / f"{stem}.png", r)
    (tmp_path / "splits.json").write_text(
        '{"target_dusk": ["test/0001TP_006690"], "source_train": ["train/0006R0_f00930"]}'
    )
    ds = load_dataset("camvid", str(tmp_path), "source_train")
    _check(ds, [None], [_lut(raw["train/0006R0_f00930"], [0, 3, 11], [0, 3, 255])], n_classes=11)
    cs = load_dataset("camvid", str(tmp_path), "target_dusk", label_space="cityscapes")
    _check(cs, [None], [_lut(raw["test/0001TP_006690"], [8, 10, 4], [13, 18, 1])])
    _check(
        load_dataset("camvid", str(tmp_path), "test"),
        [None],
        [_lut(raw["test/0001TP_006690"], [8, 10, 4], [8, 10, 4])],
        11,
    )
    with pytest.raises(DatasetLayoutError, match="target_fog.*source_train"):
        load_dataset("camvid", str(tmp_path), "target_fog")


def test_bad_inputs_name_the_file(tmp_path):
    make_cityscapes(tmp_path)
    bad_img = tmp_path / "leftImg8bit" / "val" / "lindau" / "lindau_000001_000019_leftImg8bit.png"
    good = bad_img.read_bytes()
    bad_img.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="Cannot read image file .*lindau_000001_000019_leftImg8bit.png"):
        load_dataset("cityscapes", str(tmp_path), "val")
    bad_img.write_bytes(good)
    lbl = tmp_path / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelIds.png"
    write_label(lbl, ids_grid([7], h=5))
    with pytest.raises(LabelError, match="lindau_000001_000019_gtFine_labelIds.png is 6x5 .* 6x4"):
        load_dataset("cityscapes", str(tmp_path), "val")
    write_label(lbl, ids_grid([7, 40]))
    with pytest.raises(LabelError, match=r"lindau_000001_000019_gtFine_labelIds.png contains ids \[40\]"):
        load_dataset("cityscapes", str(tmp_path), "val")
    with pytest.warns(UserWarning, match="skipping pair"):  # opt-in: drop, warn
        ds = load_dataset("cityscapes", str(tmp_path), "val", skip_invalid=True)
    assert len(ds) == 1
    lbl.unlink()
    with pytest.raises(DatasetLayoutError, match="Label file missing .*lindau_000001_000019_leftImg8bit.png"):
        load_dataset("cityscapes", str(tmp_path), "val")
    with pytest.raises(DatasetLayoutError, match=r"split 'train'.*Available: \['val'\]"):
        load_dataset("cityscapes", str(tmp_path), "train")
    (tmp_path / "leftImg8bit" / "test").mkdir()
    (tmp_path / "gtFine" / "test").mkdir()
    with pytest.raises(DatasetLayoutError, match="No '\\*_leftImg8bit.png' files found in .*test"):
        load_dataset("cityscapes", str(tmp_path), "test")


def test_label_cache_dir(tmp_path, tmp_path_factory):
    imgs, lbls = make_cityscapes(tmp_path)
    cache = tmp_path_factory.mktemp("cache")
    ds = load_dataset("cityscapes", str(tmp_path), "val", cache_dir=str(cache))
    _check(ds, imgs, lbls)
    assert len(list(cache.rglob("*.png"))) == 2
    _check(load_dataset("cityscapes", str(tmp_path), "val", cache_dir=str(cache)), imgs, lbls)
