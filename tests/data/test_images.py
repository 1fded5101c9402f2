"""Images as they come: EXIF orientation applied to image and label alike, 16-bit and float pixels scaled by their
range (or refused naming the file), through the loaders, the transforms and prediction."""

from __future__ import annotations

import numpy as np
import pytest
from fake_trees import write_label
from PIL import Image

from fishertune.data import eval_transforms, load_dataset
from fishertune.data.images import ImageFormatError, open_rgb, to_rgb


def _with_orientation(im: Image.Image, path, orientation: int, **kw) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes(), **kw)


def _quadrant_image(h=16, w=16) -> np.ndarray:
    """Stored pixels: a red top-left quadrant on grey (blocks survive JPEG)."""
    arr = np.full((h, w, 3), 128, np.uint8)
    arr[: h // 2, : w // 2] = (255, 0, 0)
    return arr


def test_16_bit_png_is_scaled_by_its_range(tmp_path):
    arr = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # what PIL (and datasets' decoder) hand over
    rgb = np.asarray(open_rgb(str(tmp_path / "deep.png")))
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]  # not all white as convert("RGB") makes it


def test_float_tiff_in_unit_range_is_scaled_and_outside_is_refused_naming_the_file(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(tmp_path / "ok.tif")
    assert np.asarray(open_rgb(str(tmp_path / "ok.tif")))[0, :, 1].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 300.0]], dtype=np.float32), mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(ImageFormatError, match=r"hdr\.tif.*0\.\.300.*\[0, 1\]"):
        open_rgb(str(tmp_path / "hdr.tif"))


def test_exif_orientation_is_applied():
    im = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.info["exif"] = exif.tobytes()
    im.getexif()[0x0112] = 6
    assert to_rgb(im).size == (4, 6)  # 6x4 stored, 4x6 displayed


def _camvid_tree(root, image: np.ndarray, label: np.ndarray, orientation: int | None, ext_kw=None):
    path = root / "images" / "train" / "0001TP_000001.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(image)
    if orientation is None:
        im.save(path, quality=100, subsampling=0)
    else:
        _with_orientation(im, path, orientation, quality=100, subsampling=0)
    write_label(root / "labels" / "train" / "0001TP_000001.png", label)


@pytest.mark.parametrize("orientation", [3, 6, 8, 7])
def test_loader_turns_a_stored_layout_label_with_its_image(tmp_path, orientation):
    # Square: before, the sizes agreed and half the label was silently misaligned.
    label = np.zeros((16, 16), np.uint8)
    label[:8, :8] = 3  # the red quadrant is road
    _camvid_tree(tmp_path, _quadrant_image(), label, orientation)
    ds = load_dataset("camvid", str(tmp_path), "train")
    sample = ds.with_transform(eval_transforms())[0]
    red = sample["pixel_values"][0] > 1.0  # normalised red channel: high only in the red quadrant
    assert red.sum() == 64
    assert (sample["labels"][red] == 3).all() and (sample["labels"][~red] == 0).all()


def test_loader_accepts_labels_in_either_layout_and_names_both_sizes_otherwise(tmp_path):
    stored, shown = np.zeros((8, 16), np.uint8), np.zeros((16, 8), np.uint8)
    for i, label in enumerate((stored, shown)):
        root = tmp_path / str(i)
        _camvid_tree(root, _quadrant_image(8, 16), label, 6)
        sample = load_dataset("camvid", str(root), "train").with_transform(eval_transforms())[0]
        assert tuple(sample["pixel_values"].shape[-2:]) == tuple(sample["labels"].shape) == (16, 8)
    root = tmp_path / "bad"
    _camvid_tree(root, _quadrant_image(8, 16), np.zeros((5, 5), np.uint8), 6)
    with pytest.raises(ValueError, match=r"5x5.*16x8.*8x16 as displayed, EXIF orientation 6"):
        load_dataset("camvid", str(root), "train")


def test_loader_refuses_a_float_image_out_of_range_naming_it(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    # CamVid lists .jpg files: a float TIFF named .jpg is still opened by its content.
    Image.fromarray(np.full((4, 6), 7.0, np.float32), mode="F").save(tmp_path / "images/train/a.jpg", format="TIFF")
    write_label(tmp_path / "labels/train/a.png", np.zeros((4, 6), np.uint8))
    with pytest.raises(ValueError, match=r"a\.jpg has float pixels"):
        load_dataset("camvid", str(tmp_path), "train")


def test_transform_scales_a_16_bit_image_in_training_and_evaluation():
    im = Image.fromarray(np.full((8, 8), 32896, np.uint16))  # mid grey at 16 bits
    label = Image.fromarray(np.zeros((8, 8), np.uint8))
    x, _ = eval_transforms(mean=(0, 0, 0), std=(1, 1, 1)).sample(im, label)
    assert float(x.max()) == float(x.min()) == 128.0
