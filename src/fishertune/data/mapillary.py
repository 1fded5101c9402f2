"""Mapillary Vistas (Neuhold et al. 2017), v1.2 labels mapped to the 19 Cityscapes classes.

Official layout (v1.2 release; in the v2.0 release the labels sit in `<split>/v1.2/labels`)::

    root/{training,validation}/images/<key>.jpg
    root/{training,validation}/labels/<key>.png     palette PNGs, index = v1.2 class id (0..65)

The class map is `labels.MAPILLARY_TO_CITYSCAPES` (no official one exists; see there).
"""

from __future__ import annotations

from pathlib import Path

from ._common import build_dataset, list_files, pair_by_suffix, require_dir
from .labels import mapillary_label_map

NAME = "mapillary"
SPLIT_DIRS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
# Rein evaluates on images halved and then fitted into 1024x512; fitting does both at once.
EVAL_SCALE = (1024, 512)


def load(root: str, split: str = "val", **kw):
    """Load Mapillary Vistas v1.2 from its official folder layout.

    Args:
        root (`str`): folder holding `training/` and `validation/`.
        split (`str`, *optional*, defaults to `"val"`): `"train"`/`"training"` or `"val"`/`"validation"`.
        **kw: passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    root = Path(root)
    split_dir = require_dir(root / SPLIT_DIRS.get(split, split), f"Mapillary split {split!r}", root)
    img_dir = require_dir(split_dir / "images", "Mapillary images folder")
    lbl_dir = split_dir / "v1.2" / "labels"
    if not lbl_dir.is_dir():
        lbl_dir = require_dir(split_dir / "labels", "Mapillary v1.2 labels folder")
    images = list_files(img_dir, ".jpg", recursive=False)
    pairs = pair_by_suffix(images, img_dir, lbl_dir, ".jpg", ".png")
    return build_dataset(pairs, name=NAME, split=SPLIT_DIRS.get(split, split), label_map=mapillary_label_map(), **kw)
