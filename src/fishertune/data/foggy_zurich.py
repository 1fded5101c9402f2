"""Foggy Zurich (Sakaridis et al., ECCV 2018): real dense fog, the test subset labelled in the Cityscapes classes.

Official layout (Foggy_Zurich.zip)::

    root/RGB/<sequence>/<id>.png
    root/gt_labelIds/<sequence>/<id>.png              Cityscapes label ids
    root/lists_file_names/RGB_<split>_filenames.txt   relative paths, one a line; gt_labelIds_<split>_... in
                                                      the same order

Labelled splits: `testv2` (40 images, the benchmark) and `testv1` (its first 16, the ECCV 2018 version).
"""

from __future__ import annotations

from pathlib import Path

from ._common import DatasetLayoutError, build_dataset, require_dir
from .labels import cityscapes_label_map

NAME = "foggy_zurich"
SPLITS = ("testv2", "testv1")
EVAL_SCALE = (1024, 512)


def _list(root: Path, kind: str, split: str) -> list[Path]:
    path = root / "lists_file_names" / f"{kind}_{split}_filenames.txt"
    if not path.is_file():
        raise DatasetLayoutError(f"Foggy Zurich split {split!r}: {path} is missing (labelled splits: {SPLITS}).")
    return [root / line.strip() for line in path.read_text().splitlines() if line.strip()]


def load(root: str, split: str = "testv2", **kw):
    """Load a labelled Foggy Zurich split from its official layout (the list files pair images and labels).

    Args:
        root (`str`): folder holding `RGB/`, `gt_labelIds/` and `lists_file_names/`.
        split (`str`, *optional*, defaults to `"testv2"`): `"testv2"` or `"testv1"`.
        **kw: passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    root = require_dir(Path(root), "Foggy Zurich folder")
    images, labels = _list(root, "RGB", split), _list(root, "gt_labelIds", split)
    if len(images) != len(labels):
        raise DatasetLayoutError(f"Foggy Zurich {split!r}: {len(images)} images but {len(labels)} labels listed.")
    for path in (*images, *labels):
        if not path.is_file():
            raise DatasetLayoutError(f"Foggy Zurich {split!r} lists {path}, which is missing.")
    pairs = [(str(i), str(g)) for i, g in zip(images, labels)]
    return build_dataset(pairs, name=NAME, split=split, label_map=cityscapes_label_map(), **kw)
