"""Shared machinery of the folder loaders: pairing, validation, label mapping, metadata.

A loader lists (image, label) file pairs in its dataset's official layout and hands them to
`build_dataset`, which checks every pair (readable image, label of its stored or displayed size (`data.images`:
a stored-layout label is turned with its image's EXIF orientation), only raw ids the label map knows), maps
the labels to train ids once, and returns a `datasets.Dataset` with
`image` and `label` columns (`datasets.Image` features). Labels are mapped at load time, not in
a transform, so that `ds[i]["label"]` is always in train ids whatever transform the user sets
with `ds.set_transform` (which replaces any transform set before it).

The class names travel inside the dataset: `ds.info.description` holds a JSON document
`{"fishertune": {"dataset", "split", "id2label", "ignore_index"}}`. `DatasetInfo` is kept by
`select`, `filter`, `shuffle`, `map`, `concatenate_datasets` and `save_to_disk`, so
`get_id2label(ds)` works on every derived dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..atomic import staged_path
from .images import check_pixels, displayed_size, exif_orientation, orient_label
from .labels import IGNORE_INDEX, LabelMap

_META_KEY = "fishertune"


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder does not have the expected layout (missing split, empty folder, ...)."""


class LabelError(ValueError):
    """A label file cannot be used (wrong size, unknown ids, several channels)."""


def require_dir(path: Path, what: str, available_from: Path | None = None) -> Path:
    """Return `path` if it is a directory, else raise an error naming it (and the splits there are)."""
    if path.is_dir():
        return path
    hint = ""
    if available_from is not None and available_from.is_dir():
        names = sorted(p.name for p in available_from.iterdir() if p.is_dir())
        hint = f" Available: {names}."
    raise DatasetLayoutError(f"{what} not found: {path} does not exist or is not a directory.{hint}")


def list_files(folder: Path, suffix: str, recursive: bool = True) -> list[Path]:
    """All files under `folder` whose name ends with `suffix`, sorted; an error if there is none."""
    pattern = f"**/*{suffix}" if recursive else f"*{suffix}"
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not files:
        raise DatasetLayoutError(f"No '*{suffix}' files found in {folder} (empty folder or wrong layout).")
    return files


def pair_by_suffix(images: list[Path], image_root: Path, label_root: Path, image_suffix: str, label_suffix: str):
    """Pair each image with the label at the same relative path, suffix swapped; error if one is missing."""
    pairs = []
    for img in images:
        rel = img.relative_to(image_root).as_posix()
        label = label_root / (rel[: -len(image_suffix)] + label_suffix)
        if not label.is_file():
            raise DatasetLayoutError(f"Label file missing for image {img}: expected {label}.")
        pairs.append((str(img), str(label)))
    return pairs


def _image_header(path: str) -> tuple[tuple[int, int], int]:
    """(stored size, EXIF orientation) of an image file; float/32-bit files are decoded to check their range."""
    try:
        with Image.open(path) as im:
            size, orientation = im.size, exif_orientation(im)
        check_pixels(path)
        return size, orientation
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"Cannot read image file {path}: {err}") from err


def read_label(path: str) -> np.ndarray:
    """Raw ids of a single-channel (L, P or I) label file as uint8; palette PNGs give their indices."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as err:
        raise LabelError(f"Cannot read label file {path}: {err}") from err
    if arr.ndim != 2:
        raise LabelError(f"Label file {path} has mode {mode!r}; expected a single-channel id map (L or P).")
    if arr.dtype != np.uint8:
        if arr.min() < -1 or arr.max() > 255:
            raise LabelError(f"Label file {path} holds ids outside 0..255.")
        arr = (arr.astype(np.int64) % 256).astype(np.uint8)
    return arr


def map_label_file(image_path: str, label_path: str, label_map: LabelMap, out_path: str | None):
    """Validate one pair and return the mapped label as `{"bytes"/"path"}` for a `datasets.Image` column."""
    size, orientation = _image_header(image_path)
    raw = read_label(label_path)
    shown = displayed_size(size, orientation)
    if (raw.shape[1], raw.shape[0]) not in (size, shown):
        turned = f" ({shown[0]}x{shown[1]} as displayed, EXIF orientation {orientation})" if shown != size else ""
        raise LabelError(
            f"Label file {label_path} is {raw.shape[1]}x{raw.shape[0]} but its image {image_path} is "
            f"{size[0]}x{size[1]}{turned}."
        )
    # Stored in the displayed layout, as the image decodes (`to_rgb`, datasets' decoder): the two stay aligned.
    raw = orient_label(raw, orientation, size)
    unknown = label_map.unknown_ids(raw)
    if unknown:
        raise LabelError(f"Label file {label_path} contains ids {unknown} outside the label map of this dataset.")
    mapped = Image.fromarray(label_map(raw))  # 2-D uint8 -> mode L
    if out_path is not None:
        with staged_path(out_path) as tmp:  # a killed run leaves no half-written entry under the real name
            mapped.save(tmp, format="PNG")
        return {"bytes": None, "path": out_path}
    buf = io.BytesIO()
    mapped.save(buf, format="PNG", compress_level=1)  # speed over size: decoded again at every access
    return {"bytes": buf.getvalue(), "path": None}


def _file_identity(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


def cache_key(image_path: str, label_path: str, label_map: LabelMap) -> str:
    """The name of a mapped label in the cache: a hash of everything its content depends on, the label map
    (label space, mapping) and both files' identity (path, size, modification time; the image's EXIF orientation
    turns the label), so a changed file or another label space never reads a stale entry."""
    h = hashlib.sha1()
    for part in (_file_identity(image_path), _file_identity(label_path)):
        h.update(part.encode() + b"\0")
    h.update(label_map.lut.tobytes() + label_map.known.tobytes())
    h.update(json.dumps(label_map.class_names).encode())
    return h.hexdigest()[:24]


def _cached_label_ok(path: str) -> bool:
    """Whether a cache entry exists and decodes whole (a write cut short, or a damaged file, is regenerated)."""
    if not os.path.exists(path):
        return False
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def build_dataset(
    pairs: list[tuple[str, str]],
    *,
    name: str,
    split: str,
    label_map: LabelMap,
    cache_dir: str | None = None,
    num_workers: int | None = None,
    skip_invalid: bool = False,
) -> datasets.Dataset:
    """Check and map every pair, then build the `image`/`label` dataset.

    Args:
        pairs (`list[tuple[str, str]]`): (image path, raw label path), in dataset order.
        name (`str`): dataset name, recorded in the metadata.
        split (`str`): split name, recorded in the metadata.
        label_map (`LabelMap`): raw id -> train id map.
        cache_dir (`str`, *optional*): write the mapped labels there as PNG files instead of keeping
            their bytes in memory; for large datasets. An entry is keyed by everything its content depends
            on (`cache_key`) and reused only when it decodes whole; it is written through a temporary name.
        num_workers (`int`, *optional*): threads for decoding and mapping (PIL releases the GIL).
        skip_invalid (`bool`, *optional*, defaults to `False`): drop bad pairs with a warning
            instead of raising (GTAV ships a few images whose label has another size).
    """
    if not pairs:
        raise DatasetLayoutError(f"{name} split {split!r}: no image/label pairs found.")
    outs: list[str | None] = [None] * len(pairs)
    if cache_dir is not None:
        out_dir = Path(cache_dir) / name / split
        out_dir.mkdir(parents=True, exist_ok=True)
        outs = [str(out_dir / (cache_key(img, lbl, label_map) + ".png")) for img, lbl in pairs]

    def one(i: int):
        img, lbl = pairs[i]
        out = outs[i]
        if out is not None and _cached_label_ok(out):
            return {"bytes": None, "path": out}
        try:
            return map_label_file(img, lbl, label_map, out)
        except ValueError as err:
            if not skip_invalid:
                raise
            warnings.warn(f"{name} {split}: skipping pair: {err}", stacklevel=3)
            return None

    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    if workers > 1 and len(pairs) > 8:
        with ThreadPoolExecutor(workers) as pool:
            labels = list(pool.map(one, range(len(pairs))))
    else:
        labels = [one(i) for i in range(len(pairs))]
    keep = [i for i, lbl in enumerate(labels) if lbl is not None]
    if not keep:
        raise DatasetLayoutError(f"{name} split {split!r}: every image/label pair was invalid.")
    return make_dataset(
        [pairs[i][0] for i in keep], [labels[i] for i in keep], name=name, split=split, id2label=label_map.id2label
    )


def make_meta(name: str, split: str, id2label: dict[int, str], **extra) -> str:
    """The `ds.info.description` document that carries a dataset's class names (and `extra` options)."""
    names = {str(k): v for k, v in id2label.items()}
    return json.dumps({_META_KEY: {"dataset": name, "split": split, "id2label": names, "ignore_index": IGNORE_INDEX,
                                   **extra}})  # fmt: skip


def read_meta(ds) -> dict | None:
    """The fishertune metadata of a dataset, `None` when it carries none."""
    try:
        return json.loads(ds.info.description or "")[_META_KEY]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def make_dataset(images: list, labels: list, *, name: str, split: str, id2label: dict[int, str]) -> datasets.Dataset:
    """A `datasets.Dataset` with `image`/`label` Image columns and the fishertune metadata."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    info = datasets.DatasetInfo(description=make_meta(name, split, id2label), features=features, dataset_name=name)
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features, info=info,
                                      split=datasets.NamedSplit(split))  # fmt: skip


def get_id2label(ds: datasets.Dataset) -> dict[int, str]:
    """Class names of a dataset built by `fishertune.data` (read from `ds.info.description`).

    Args:
        ds (`datasets.Dataset`): a dataset returned by `load_dataset` or `make_synthetic_dataset`,
            or derived from one by `select`, `filter`, `map`, `shuffle`, `save_to_disk`...
    """
    meta = read_meta(ds)
    if meta is None or "id2label" not in meta:
        raise ValueError("This dataset carries no fishertune label metadata; use fishertune.data.id2label(name).")
    return {int(k): v for k, v in meta["id2label"].items()}
