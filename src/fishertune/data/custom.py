"""Your own data: a Hub dataset, a `save_to_disk` folder, or a folder of images with masks, as an `image`/`label`
dataset with class names, like the built-in loaders give.

Sources (`load_custom(source, split)`):

- **A folder of images and masks**::

      root/id2label.json                {"0": "road", "1": "car", ...}
      root/images/<stem>.<any image extension>
      root/masks/<stem>.png             class ids, 255 = ignore (any single-channel image format)

  or the same per split, `root/<split>/images/` + `root/<split>/masks/` (`id2label.json` in `root`). Every image
  needs a mask of the same stem. Masks are checked and mapped at load time like the built-in datasets' labels.
- **A `save_to_disk` folder** (a `Dataset` or a `DatasetDict`), read with `datasets.load_from_disk`.
- **A Hub dataset id** (`datasets.load_dataset(source, config_name)`).

Columns: `image_column` / `label_column` (defaults `image`, `label`) are renamed to `image`/`label`; the label
column must hold segmentation maps (`datasets.Image`). Class names: `id2label.json` in the folder (or in the
Hub dataset's repository), else fishertune's own metadata (a saved fishertune dataset), else the label
feature's `names`. `reduce_labels` drops a background 0 (0 -> 255, the other ids minus 1), as the Hub's
`mean_iou` and transformers' image processors do; `id2label` then names the reduced ids. A dataset without
the requested split gets one from `train_val_split`: that share of `train`, held out with a fixed seed (the
rest is the `train` split), so training and evaluation agree on it in every process and rerun.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import datasets
import numpy as np

from ._common import DatasetLayoutError, build_dataset, make_meta, read_meta
from .labels import IGNORE_INDEX, LabelMap

ID2LABEL_FILE = "id2label.json"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: The seed of the `train_val_split` hold-out: the same split in every process and every rerun.
SPLIT_SEED = 0


def read_id2label(path) -> dict[int, str]:
    """`{int id: name}` from an `id2label.json` file (keys may be strings, as JSON writes them)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not data:
        raise ValueError(f'{path} must hold a non-empty mapping of class id to name, e.g. {{"0": "road"}}.')
    try:
        return {int(k): str(v) for k, v in sorted(data.items(), key=lambda kv: int(kv[0]))}
    except ValueError as err:
        raise ValueError(f"{path}: class ids must be integers, got keys {list(data)[:5]}.") from err


def reduce_lut() -> np.ndarray:
    """The 256-entry LUT of `reduce_labels`: 0 -> 255, k -> k - 1, 255 -> 255."""
    lut = np.arange(256, dtype=np.int64) - 1
    lut[0] = lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut.astype(np.uint8)


def label_lut(ds) -> Optional[np.ndarray]:
    """The LUT a dataset's labels still need at transform time (a Hub or saved dataset with `reduce_labels`)."""
    meta = read_meta(ds) or {}
    return reduce_lut() if meta.get("reduce_labels") else None


def is_masks_folder(root: Path) -> bool:
    return (root / "images").is_dir() or any((p / "images").is_dir() for p in root.iterdir() if p.is_dir())


def _masks_pairs(root: Path, split: str) -> list[tuple[str, str]]:
    base = root if (root / "images").is_dir() and split == "train" else root / split
    if not (base / "images").is_dir():
        splits = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
        splits = splits or (["train"] if (root / "images").is_dir() else [])
        raise DatasetLayoutError(
            f"{root} has no split {split!r}: expected {root}/images/ (the 'train' split) or "
            f"{root}/<split>/images/; splits there: {splits}."
        )
    masks = {p.stem: p for p in (base / "masks").glob("*") if p.is_file()} if (base / "masks").is_dir() else {}
    images = sorted(p for p in (base / "images").glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DatasetLayoutError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {base / 'images'}.")
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} image(s) of {base / 'images'} have no mask of the same stem in "
            f"{base / 'masks'}: {missing[:5]}."
        )
    return [(str(p), str(masks[p.stem])) for p in images]


def _masks_label_map(id2label: dict[int, str], reduce_labels: bool) -> LabelMap:
    names = [id2label[k] for k in sorted(id2label)]
    if sorted(id2label) != list(range(len(names))):
        raise ValueError(f"id2label ids must be 0..{len(names) - 1}, got {sorted(id2label)}.")
    if reduce_labels:  # raw 0 is background (ignored), raw k is class k - 1
        mapping = {0: IGNORE_INDEX, **{k + 1: k for k in range(len(names))}}
    else:
        mapping = {k: k for k in range(len(names))}
    return LabelMap({**mapping, IGNORE_INDEX: IGNORE_INDEX}, names)


def _hub_id2label(source: str) -> Optional[dict[int, str]]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return read_id2label(hf_hub_download(source, ID2LABEL_FILE, repo_type="dataset"))
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, OSError):
        return None


def _class_names(ds, source: str, folder: Optional[Path]) -> dict[int, str]:
    if folder is not None and (folder / ID2LABEL_FILE).is_file():
        return read_id2label(folder / ID2LABEL_FILE)
    meta = read_meta(ds)
    if meta and meta.get("id2label"):
        return {int(k): v for k, v in meta["id2label"].items()}
    names = getattr(ds.features.get("label"), "names", None)
    if names:
        return dict(enumerate(names))
    found = _hub_id2label(source) if folder is None else None
    if found is None:
        where = f"{folder}/{ID2LABEL_FILE}" if folder is not None else f"the dataset repository's {ID2LABEL_FILE}"
        raise ValueError(
            f'No class names for {source!r}: write {where} ({{"0": "road", ...}}), as '
            "transformers' semantic-segmentation example reads it."
        )
    return found


def _pick_split(dd, source: str, split: str, train_val_split: Optional[float]):
    if not isinstance(dd, datasets.DatasetDict):
        dd = datasets.DatasetDict({"train": dd})
    if split in dd:
        return (
            dd[split]
            if not (train_val_split and "validation" not in dd and split == "train")
            else dd["train"].train_test_split(test_size=train_val_split, seed=SPLIT_SEED)["train"]
        )
    if split == "validation" and train_val_split and "train" in dd:
        return dd["train"].train_test_split(test_size=train_val_split, seed=SPLIT_SEED)["test"]
    hint = " (--train_val_split holds one out of 'train')" if split == "validation" else ""
    raise DatasetLayoutError(f"{source!r} has no split {split!r}; it has {sorted(dd)}{hint}.")


def load_custom(source: str, split: str = "train", *, config_name: Optional[str] = None, image_column: str = "image",
                label_column: str = "label", reduce_labels: bool = False, train_val_split: Optional[float] = None,
                **kw) -> datasets.Dataset:  # fmt: skip
    """Load your own segmentation data (see the module docstring) as an `image`/`label` dataset with class names.

    Args:
        source (`str`): a folder of `images/` + `masks/`, a `save_to_disk` folder, or a Hub dataset id.
        split (`str`, *optional*, defaults to `"train"`): the split; `"validation"` may be held out of `train`.
        config_name (`str`, *optional*): the Hub dataset's configuration.
        image_column, label_column (`str`): the columns holding the images and the segmentation maps.
        reduce_labels (`bool`): drop a background 0 (0 -> 255, the other ids minus 1).
        train_val_split (`float`, *optional*): share of `train` held out as `validation` when there is none.
        **kw: for a masks folder, passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    path = Path(source).expanduser()
    if train_val_split is not None and not 0.0 < train_val_split < 1.0:
        raise ValueError(f"train_val_split must be a share in (0, 1), got {train_val_split}.")
    if (
        path.is_dir()
        and is_masks_folder(path)
        and not (path / "dataset_dict.json").is_file()
        and not (path / "state.json").is_file()
    ):
        if not (path / ID2LABEL_FILE).is_file():
            raise DatasetLayoutError(
                f"{path} has images/ + masks/ but no {ID2LABEL_FILE} naming the classes "
                '({"0": "road", "1": "car", ...}).'
            )
        label_map = _masks_label_map(read_id2label(path / ID2LABEL_FILE), reduce_labels)
        if train_val_split and split in ("train", "validation") and not (path / "validation" / "images").is_dir():
            ds = build_dataset(_masks_pairs(path, "train"), name=str(path), split="train", label_map=label_map, **kw)
            return ds.train_test_split(test_size=train_val_split, seed=SPLIT_SEED)[
                "test" if split == "validation" else "train"
            ]
        return build_dataset(_masks_pairs(path, split), name=str(path), split=split, label_map=label_map, **kw)
    if path.is_dir():
        dd = datasets.load_from_disk(str(path))
        folder = path
    else:
        if os.path.sep in source and not path.exists() and source.startswith((".", os.path.sep, "~")):
            raise FileNotFoundError(f"Dataset folder {source} does not exist.")
        dd = datasets.load_dataset(source, config_name)
        folder = None
    ds = _pick_split(dd, source, split, train_val_split)
    for column, role, flag in (
        (image_column, "image", "--image_column_name"),
        (label_column, "label", "--label_column_name"),
    ):
        if column not in ds.column_names:
            raise ValueError(
                f"{source!r} has no column {column!r} for the {role}s; its columns are {ds.column_names}: pass {flag}."
            )
    ds = ds.select_columns([image_column, label_column])
    if image_column != "image" or label_column != "label":
        ds = ds.rename_columns({image_column: "image", label_column: "label"})
    if not isinstance(ds.features["label"], datasets.Image):
        raise ValueError(
            f"Column {label_column!r} of {source!r} holds {ds.features['label']}, not segmentation maps "
            "(datasets.Image)."
        )
    id2label = _class_names(ds, source, folder)
    ds.info.description = make_meta(str(source), split, id2label, reduce_labels=reduce_labels)
    return ds
