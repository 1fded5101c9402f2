"""Dark Zurich (Sakaridis et al., ICCV 2019): night-time driving, the validation set labelled in the Cityscapes
classes (the test labels are held by the benchmark server).

Official layout (Dark_Zurich_val_anon.zip)::

    root/rgb_anon/val/night/<sequence>/<sequence>_frame_<n>_rgb_anon.png
    root/gt/val/night/<sequence>/<sequence>_frame_<n>_gt_labelIds.png        Cityscapes label ids

Split: `val` (50 images, sequence GOPR0356).
"""

from __future__ import annotations

from pathlib import Path

from ._common import build_dataset, list_files, pair_by_suffix, require_dir
from .labels import cityscapes_label_map

NAME = "dark_zurich"
SPLITS = ("val",)
EVAL_SCALE = (1024, 512)


def load(root: str, split: str = "val", **kw):
    """Load the labelled Dark Zurich night images from the official layout.

    Args:
        root (`str`): folder holding `rgb_anon/` and `gt/`.
        split (`str`, *optional*, defaults to `"val"`): `"val"` (the labelled split).
        **kw: passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    root = Path(root)
    img_dir = require_dir(root / "rgb_anon" / split / "night", f"Dark Zurich split {split!r}", root / "rgb_anon")
    gt_dir = require_dir(root / "gt" / split / "night", f"Dark Zurich labels of split {split!r}", root / "gt")
    images = list_files(img_dir, "_rgb_anon.png")
    pairs = pair_by_suffix(images, img_dir, gt_dir, "_rgb_anon.png", "_gt_labelIds.png")
    return build_dataset(pairs, name=NAME, split=split, label_map=cityscapes_label_map(), **kw)
