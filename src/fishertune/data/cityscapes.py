"""Cityscapes (Cordts et al. 2016), fine annotations.

Official layout (leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip)::

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Label ids map to train ids with the official table (checked in tests against cityscapesscripts).
"""

from __future__ import annotations

from pathlib import Path

from ._common import build_dataset, list_files, pair_by_suffix, require_dir
from .labels import cityscapes_label_map, train_id_label_map

NAME = "cityscapes"
EVAL_SCALE = (1024, 512)


def load(root: str, split: str = "train", label_type: str = "labelIds", **kw):
    """Load Cityscapes from its official folder layout.

    Args:
        root (`str`): folder holding `leftImg8bit/` and `gtFine/`.
        split (`str`, *optional*, defaults to `"train"`): `"train"`, `"val"` or `"test"`.
        label_type (`str`, *optional*, defaults to `"labelIds"`): `"labelIds"` (mapped with the
            official table) or `"labelTrainIds"` (files made by cityscapesscripts' createTrainIdLabelImgs).
        **kw: passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    root = Path(root)
    img_dir = require_dir(root / "leftImg8bit" / split, f"Cityscapes split {split!r}", root / "leftImg8bit")
    gt_dir = require_dir(root / "gtFine" / split, f"Cityscapes gtFine split {split!r}", root / "gtFine")
    if label_type not in ("labelIds", "labelTrainIds"):
        raise ValueError(f"label_type must be 'labelIds' or 'labelTrainIds', got {label_type!r}")
    images = list_files(img_dir, "_leftImg8bit.png")
    pairs = pair_by_suffix(images, img_dir, gt_dir, "_leftImg8bit.png", f"_gtFine_{label_type}.png")
    label_map = cityscapes_label_map() if label_type == "labelIds" else train_id_label_map()
    return build_dataset(pairs, name=NAME, split=split, label_map=label_map, **kw)
