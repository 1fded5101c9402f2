"""recipes/predict.py on images as they come: masks in the displayed orientation (EXIF), 16-bit pixels scaled,
images smaller than a patch padded, a float image out of range skipped with its reason; one file never stops
the folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ._helpers import recipe_main
from .test_predict_folder import tiny_output  # noqa: F401  (the fixture)


def test_orientation_depth_and_tiny_images(tiny_output, tmp_path):  # noqa: F811
    images, preds = tmp_path / "images", tmp_path / "preds"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(images / "portrait.jpg", exif=exif.tobytes())
    Image.fromarray(np.full((40, 24), 32896, np.uint16)).save(images / "deep.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(images / "dot.png")
    Image.fromarray(np.zeros((3, 5, 3), np.uint8)).save(images / "sliver.png")
    Image.fromarray(np.full((8, 8), 9.0, np.float32), mode="F").save(images / "hdr.tif")
    with pytest.warns(UserWarning, match=r"hdr\.tif.*float pixels"):
        done = recipe_main("predict")(["--model", str(tmp_path), "--images", str(images), "--output_dir", str(preds)])
    assert sorted(done) == ["deep", "dot", "portrait", "sliver"]
    assert [p for p, _ in done.skipped] == [str(images / "hdr.tif")]
    size = lambda sub, name: Image.open(preds / sub / f"{name}.png").size  # noqa: E731
    assert size("masks", "portrait") == size("labels", "portrait") == (64, 96)  # displayed, not stored (96x64)
    assert size("masks", "dot") == (1, 1) and size("masks", "sliver") == (5, 3)
    # the overlay blends the image itself: 16-bit mid grey is 128 (convert("RGB") made it white)
    overlay = np.asarray(Image.open(preds / "overlays" / "deep.png"), dtype=np.float32)
    color = np.asarray(Image.open(preds / "masks" / "deep.png"), dtype=np.float32)
    np.testing.assert_allclose(overlay, np.round(0.5 * 128 + 0.5 * color), atol=1)
