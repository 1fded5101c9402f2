"""Images as files hold them: EXIF orientation, 16-bit and float pixels, turned into what the models take.

One home for every place that reads an image (training, evaluation, the load-time label checks, prediction):

- **Orientation.** A camera may store a portrait photo as landscape pixels plus an EXIF orientation tag (1-8);
  viewers, `datasets`' decoder and `PIL.ImageOps.exif_transpose` show it turned. `to_rgb` turns it; a label
  stored in the image's *stored* pixel layout (its size equals the stored size) is turned by the same
  transposition (`orient_label`), so image and label stay aligned. A label whose size equals only the
  displayed size is taken as drawn on the displayed image and kept as it is.
- **Depth.** 16-bit images (`I;16*`, and `I` with values in 0..65535) are scaled by their range, v / 257
  (65535 -> 255); float images (`F`) must lie in [0, 1] and are scaled by 255; a float image outside [0, 1]
  has no known range and is refused, naming its file. Everything else goes through `convert("RGB")`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image, ImageOps

#: EXIF orientation -> the transposition that displays the stored pixels (PIL's `exif_transpose` table).
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip
_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageFormatError(ValueError):
    """An image whose pixels have no known mapping to 8-bit RGB (e.g. floats outside [0, 1])."""


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored) of an opened image."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block must not make the pixels unreadable
        return 1
    return value if value in ORIENTATION_TRANSPOSE else 1


def displayed_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(w, h) of an image of stored `size` once `orientation` is applied (5-8 swap the sides)."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else tuple(size)


def orient_label(label: np.ndarray, orientation: int, image_size: tuple[int, int]) -> np.ndarray:
    """The label of an image with EXIF `orientation` and stored `image_size` (w, h), in the displayed layout.

    A label of the stored size is transposed as the image is; one of the displayed size only is returned as is.
    """
    method = ORIENTATION_TRANSPOSE.get(orientation)
    if method is None or (label.shape[1], label.shape[0]) != tuple(image_size):
        return label
    return np.asarray(Image.fromarray(label).transpose(method))


def _scaled(arr: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(np.rint(arr.astype(np.float64) / factor), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image, source: Optional[str] = None) -> Image.Image:
    """`image` displayed (EXIF orientation applied) as 8-bit RGB, 16-bit and float pixels scaled by their range.

    Args:
        image (`PIL.Image.Image`): an opened image (a `datasets.Image` value, or `Image.open(path)`).
        source (`str`, *optional*): its file, named in the error.

    Raises:
        `ImageFormatError`: float pixels outside [0, 1], or 32-bit integers beyond 65535.
    """
    if exif_orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    what = f"Image {source}" if source else "An image"
    if mode in _SIXTEEN_BIT or mode == "I":
        arr = np.asarray(image)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageFormatError(
                f"{what} has 32-bit integer pixels in {arr.min()}..{arr.max()}: only 8- and 16-bit "
                "ranges are known; convert it to 8-bit RGB (or 16-bit) first."
            )
        return Image.fromarray(_scaled(arr, 257.0)).convert("RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(arr).all()
        if not finite or (arr.size and (arr.min() < 0.0 or arr.max() > 1.0)):
            lo, hi = (float(np.nanmin(arr)), float(np.nanmax(arr))) if arr.size else (0.0, 0.0)
            raise ImageFormatError(
                f"{what} has float pixels in {lo:g}..{hi:g}{'' if finite else ' (NaN/inf)'}: "
                "float images must lie in [0, 1]; rescale it or save it as 8-bit RGB."
            )
        return Image.fromarray(_scaled(arr, 1.0 / 255.0)).convert("RGB")
    return image.convert("RGB")


def open_rgb(path: str) -> Image.Image:
    """Read `path` as displayed 8-bit RGB (`to_rgb`), fully decoded and closed."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im, path)


def check_pixels(path: str) -> None:
    """Refuse, naming `path`, an image `to_rgb` cannot convert; only float and 32-bit files are decoded to tell."""
    with Image.open(path) as im:
        if im.mode in ("F", "I"):
            im.load()
            to_rgb(im, path)
