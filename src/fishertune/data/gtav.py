"""GTAV (Playing for Data, Richter et al. 2016), the synthetic source domain.

Official layout after extracting the ten parts::

    root/images/00001.png ... 24966.png
    root/labels/00001.png ...            palette PNGs whose indices are Cityscapes label ids
    root/split.mat                        optional: trainIds / valIds / testIds (1-based numbers)

Rein (and FisherTune) train on all 24,966 images: split `"all"`. Labels map as in METHOD.md.
"""

from __future__ import annotations

from pathlib import Path

from ._common import DatasetLayoutError, build_dataset, list_files, pair_by_suffix, require_dir
from .labels import gtav_label_map

NAME = "gtav"
SPLITS = ("all", "train", "val", "test")
EVAL_SCALE = (1280, 720)


def _split_numbers(root: Path, split: str) -> set[int]:
    mat = root / "split.mat"
    if not mat.is_file():
        raise DatasetLayoutError(
            f"GTAV split {split!r} needs {mat} (the official split file); use split='all' without it."
        )
    try:
        from scipy.io import loadmat  # only this optional path needs scipy
    except ImportError as err:
        raise ImportError("Reading GTAV's split.mat needs scipy: pip install scipy") from err
    return {int(i) for i in loadmat(str(mat))[f"{split}Ids"].ravel()}


def load(root: str, split: str = "all", **kw):
    """Load GTAV from its official folder layout.

    Args:
        root (`str`): folder holding `images/` and `labels/`.
        split (`str`, *optional*, defaults to `"all"`): `"all"`, or `"train"`/`"val"`/`"test"` of split.mat.
        **kw: passed to `build_dataset` (`cache_dir`, `num_workers`, `skip_invalid`).
    """
    if split not in SPLITS:
        raise DatasetLayoutError(f"GTAV has no split {split!r}; choose one of {SPLITS}.")
    root = Path(root)
    images_dir = require_dir(root / "images", "GTAV images folder")
    labels_dir = require_dir(root / "labels", "GTAV labels folder")
    images = list_files(images_dir, ".png", recursive=False)
    if split != "all":
        keep = _split_numbers(root, split)
        images = [p for p in images if p.stem.isdigit() and int(p.stem) in keep]
    pairs = pair_by_suffix(images, images_dir, labels_dir, ".png", ".png")
    return build_dataset(pairs, name=NAME, split=split, label_map=gtav_label_map(), **kw)
