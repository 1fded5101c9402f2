"""Nighttime Driving (Dai & Van Gool, ITSC 2018): 50 night scenes with coarse labels in the Cityscapes classes.

Official layout (NighttimeDrivingTest.zip)::

    root/leftImg8bit/test/night/<name>_leftImg8bit.png
    root/gtCoarse_daytime_trainvaltest/test/night/<name>_gtCoarse_labelIds.png     Cityscapes label ids

Split: `test`.
"""

from __future__ import annotations

from pathlib import Path

from ._common import build_dataset, list_files, pair_by_suffix, require_dir
from .labels import cityscapes_label_map

NAME = "nighttime_driving"
SPLITS = ("test",)
EVAL_SCALE = (1024, 512)
GT_DIR = "gtCoarse_daytime_trainvaltest"


def load(root: str, split: str = "test", **kw):
    """Load Nighttime Driving from its official layout.

    Args:
        root (`str`): folder holding `leftImg8bit/` and `gtCoarse_daytime_trainvaltest/`.
        split (`str`, *optional*, defaults to `"test"`): `"test"`.
        **kw: passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    root = Path(root)
    img_dir = require_dir(
        root / "leftImg8bit" / split / "night", f"Nighttime Driving split {split!r}", root / "leftImg8bit"
    )
    gt_dir = require_dir(root / GT_DIR / split / "night", f"Nighttime Driving labels of split {split!r}", root / GT_DIR)
    images = list_files(img_dir, "_leftImg8bit.png")
    pairs = pair_by_suffix(images, img_dir, gt_dir, "_leftImg8bit.png", "_gtCoarse_labelIds.png")
    return build_dataset(pairs, name=NAME, split=split, label_map=cityscapes_label_map(), **kw)
