"""CamVid, 11-class SegNet version (shared/data/camvid/README.md): the small real-data benchmark.

Layout::

    root/images/{train,val,test}/<SEQ>_<FRAME>.jpg
    root/labels/{train,val,test}/<SEQ>_<FRAME>.png   ids 0..10, 11 = void (-> 255)
    root/splits.json                                  {"source_train": ["train/0006R0_f00930", ...], ...}

Splits: the keys of splits.json (source_train, source_val, target_day_new_route, target_dusk)
or the folder names (train, val, test).
"""

from __future__ import annotations

import json
from pathlib import Path

from ._common import DatasetLayoutError, build_dataset, list_files, pair_by_suffix, require_dir
from .labels import camvid_label_map

NAME = "camvid"
EVAL_SCALE = (480, 360)


def load(root: str, split: str = "source_train", label_space: str = "camvid", **kw):
    """Load CamVid by a splits.json name or a folder name.

    Args:
        root (`str`): folder holding `images/`, `labels/` and (optionally) `splits.json`.
        split (`str`, *optional*, defaults to `"source_train"`): a key of splits.json or a folder name.
        label_space (`str`, *optional*, defaults to `"camvid"`): `"camvid"` (11 classes) or
            `"cityscapes"` (mapped to the 19 Cityscapes train ids per the README table).
        **kw: passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    root = Path(root)
    images_dir = require_dir(root / "images", "CamVid images folder")
    labels_dir = require_dir(root / "labels", "CamVid labels folder")
    label_map = camvid_label_map(label_space)
    splits_file = root / "splits.json"
    named = json.loads(splits_file.read_text()) if splits_file.is_file() else {}
    if split in named:
        pairs = []
        for stem in named[split]:
            img, lbl = images_dir / f"{stem}.jpg", labels_dir / f"{stem}.png"
            for path in (img, lbl):
                if not path.is_file():
                    raise DatasetLayoutError(f"CamVid split {split!r} lists {stem!r} but {path} is missing.")
            pairs.append((str(img), str(lbl)))
    elif (images_dir / split).is_dir():
        images = list_files(images_dir / split, ".jpg", recursive=False)
        pairs = pair_by_suffix(images, images_dir / split, labels_dir / split, ".jpg", ".png")
    else:
        folders = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
        raise DatasetLayoutError(
            f"CamVid has no split {split!r} in {root}: splits.json names {sorted(named)}, folders {folders}."
        )
    return build_dataset(pairs, name=NAME, split=split, label_map=label_map, **kw)
