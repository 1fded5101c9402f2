"""Foggy Driving (Sakaridis et al., IJCV 2018): 101 real foggy scenes labelled in the Cityscapes classes.

Official layout (Foggy_Driving.zip)::

    root/leftImg8bit/{test,test_extra}/<record>/<record>_<id1>_<id2>_leftImg8bit.png
    root/gtFine/test/<record>/<record>_<id1>_<id2>_gtFine_labelIds.png           33 fine annotations
    root/gtCoarse/test_extra/<record>/<record>_<id1>_<id2>_gtCoarse_labelIds.png 68 coarse annotations

Records: pedestrian, public, web. Splits: `test` (fine), `test_extra` (coarse) and `all` (both, the 101
images the official evaluation script scores, and the usual benchmark).
"""

from __future__ import annotations

from pathlib import Path

import datasets

from ._common import build_dataset, list_files, pair_by_suffix, require_dir
from .labels import cityscapes_label_map

NAME = "foggy_driving"
SPLITS = ("all", "test", "test_extra")
EVAL_SCALE = (1024, 512)
_GT = {"test": "gtFine", "test_extra": "gtCoarse"}


def load(root: str, split: str = "all", **kw):
    """Load Foggy Driving from its official layout.

    Args:
        root (`str`): folder holding `leftImg8bit/`, `gtFine/` and `gtCoarse/`.
        split (`str`, *optional*, defaults to `"all"`): `"test"` (fine), `"test_extra"` (coarse) or `"all"`.
        **kw: passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    if split == "all":
        parts = [load(root, s, **kw) for s in _GT]
        return datasets.concatenate_datasets(parts, info=parts[0].info)
    if split not in _GT:
        raise ValueError(f"Foggy Driving split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    img_dir = require_dir(root / "leftImg8bit" / split, f"Foggy Driving split {split!r}", root / "leftImg8bit")
    gt = _GT[split]
    gt_dir = require_dir(root / gt / split, f"Foggy Driving {gt} labels of split {split!r}", root / gt)
    images = list_files(img_dir, "_leftImg8bit.png")
    pairs = pair_by_suffix(images, img_dir, gt_dir, "_leftImg8bit.png", f"_{gt}_labelIds.png")
    return build_dataset(pairs, name=NAME, split=split, label_map=cityscapes_label_map(), **kw)
