"""ACDC, the Adverse Conditions Dataset with Correspondences (Sakaridis et al. 2021).

Official layout (rgb_anon_trainvaltest.zip + gt_trainval.zip)::

    root/rgb_anon/<condition>/{train,val,test}/<seq>/<seq>_frame_<n>_rgb_anon.png
    root/gt/<condition>/{train,val}/<seq>/<seq>_frame_<n>_gt_labelIds.png

Conditions: fog, night, rain, snow. Labels use the Cityscapes label ids.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from ._common import build_dataset, list_files, pair_by_suffix, require_dir
from .labels import cityscapes_label_map

NAME = "acdc"
CONDITIONS = ("fog", "night", "rain", "snow")
EVAL_SCALE = (1024, 512)


def load(root: str, split: str = "val", condition: str = "all", **kw):
    """Load ACDC from its official folder layout, one condition or all of them.

    Args:
        root (`str`): folder holding `rgb_anon/` and `gt/`.
        split (`str`, *optional*, defaults to `"val"`): `"train"` or `"val"`.
        condition (`str`, *optional*, defaults to `"all"`): one of `CONDITIONS`, or `"all"`
            (their concatenation, in that order).
        **kw: passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    if condition == "all":
        parts = [load(root, split, c, **kw) for c in CONDITIONS]
        return datasets.concatenate_datasets(parts, info=parts[0].info)
    if condition not in CONDITIONS:
        raise ValueError(f"ACDC condition must be one of {CONDITIONS} or 'all', got {condition!r}")
    root = Path(root)
    img_dir = require_dir(
        root / "rgb_anon" / condition / split, f"ACDC {condition} split {split!r}", root / "rgb_anon" / condition
    )
    gt_dir = require_dir(
        root / "gt" / condition / split, f"ACDC {condition} labels of split {split!r}", root / "gt" / condition
    )
    images = list_files(img_dir, "_rgb_anon.png")
    pairs = pair_by_suffix(images, img_dir, gt_dir, "_rgb_anon.png", "_gt_labelIds.png")
    return build_dataset(pairs, name=NAME, split=f"{split}_{condition}", label_map=cityscapes_label_map(), **kw)
