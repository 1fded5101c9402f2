"""Datasets, label maps and transforms of fishertune.

Every loader returns a `datasets.Dataset` with `image` and `label` columns (`datasets.Image`
features); labels are already mapped to train ids (the 19 Cityscapes classes, or a dataset's own
classes for CamVid by default and for the synthetic set), 255 = ignore. The class names of a
dataset are in its metadata (`get_id2label(ds)`, read from `ds.info.description`) and, by name,
in `id2label(name)`. Your own data (a Hub dataset, a `save_to_disk` folder, images + masks) comes through
`load_custom` (`data/custom.py`).
"""

from __future__ import annotations

import datasets

from . import (
    acdc,
    bdd100k,
    camvid,
    cityscapes,
    dark_zurich,
    foggy_driving,
    foggy_zurich,
    gtav,
    mapillary,
    nighttime_driving,
)
from ._common import DatasetLayoutError, LabelError, get_id2label, make_dataset
from .custom import ID2LABEL_FILE, label_lut, load_custom, read_id2label
from .keyed import BAD_FILE_POLICIES, BadSampleError, KeyedTrainingDataset
from .labels import CAMVID_CLASSES, CITYSCAPES_CLASSES, IGNORE_INDEX, LabelMap, name_mapping_lut
from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_DOMAINS, SyntheticDomain, generate_sample, make_synthetic_dataset
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationTransforms,
    collate_fn,
    eval_transforms,
    normalization_from_processor,
    train_transforms,
)

_MODULES = {
    m.NAME: m
    for m in (
        gtav,
        cityscapes,
        bdd100k,
        mapillary,
        acdc,
        camvid,
        foggy_zurich,
        foggy_driving,
        dark_zurich,
        nighttime_driving,
    )
}
DATASET_NAMES = (*_MODULES, "synthetic")
# Evaluation (long, short) keep-ratio sizes per dataset (Rein's test pipelines; CamVid native).
EVAL_SCALES = {name: m.EVAL_SCALE for name, m in _MODULES.items()}


def load_dataset(name: str, root: str | None = None, split: str | None = None, **kw) -> datasets.Dataset:
    """Load a dataset from a local folder in its official layout.

    Args:
        name (`str`): one of `DATASET_NAMES` (`gtav`, `cityscapes`, `bdd100k`, `mapillary`,
            `acdc`, `camvid`, `foggy_zurich`, `foggy_driving`, `dark_zurich`, `nighttime_driving`, `synthetic`).
        root (`str`): the dataset folder (unused for `synthetic`).
        split (`str`, *optional*): split name; each module's default if `None`. For `synthetic`
            the split is the domain name.
        **kw: per-dataset options (`condition=` for ACDC, `label_space=` for CamVid,
            `label_type=` for Cityscapes, `num_samples=`/`size=`/`seed=` for synthetic) and the
            shared ones `cache_dir`, `num_workers`, `skip_invalid`.
    """
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {n.replace("_", ""): n for n in _MODULES}  # foggyzurich, foggy-zurich -> foggy_zurich
    aliases.update({"gta": "gtav", "gta5": "gtav", "bdd": "bdd100k", "mapillaryvistas": "mapillary"})
    key = aliases.get(key, key)
    if key == "synthetic":
        return make_synthetic_dataset(kw.pop("num_samples", 64), domain=split or "source", **kw)
    if key not in _MODULES:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASET_NAMES}.")
    if root is None:
        raise ValueError(f"load_dataset({name!r}) needs the root folder of the dataset.")
    return _MODULES[key].load(root, split, **kw) if split is not None else _MODULES[key].load(root, **kw)


def is_builtin(name: str) -> bool:
    """Whether `name` is one of `DATASET_NAMES` (else it is your own data: a folder or a Hub id, `load_custom`)."""
    return name.lower() in DATASET_NAMES


def id2label(name: str, label_space: str | None = None) -> dict[int, str]:
    """Class names by train id of a dataset name (CamVid: `label_space="cityscapes"` for the 19 classes)."""
    key = name.lower()
    if key == "synthetic":
        return dict(enumerate(SYNTHETIC_CLASSES))
    if key == "camvid" and label_space != "cityscapes":
        return dict(enumerate(CAMVID_CLASSES))
    if key in _MODULES or key == "camvid":
        return dict(enumerate(CITYSCAPES_CLASSES))
    raise ValueError(f"Unknown dataset {name!r}; choose one of {DATASET_NAMES}.")


__all__ = [
    "BAD_FILE_POLICIES", "BadSampleError", "KeyedTrainingDataset", "CAMVID_CLASSES",
    "CITYSCAPES_CLASSES", "DATASET_NAMES", "DatasetLayoutError", "EVAL_SCALES",
    "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "LabelError", "LabelMap", "SYNTHETIC_CLASSES",
    "SYNTHETIC_DOMAINS", "SegmentationTransforms", "SyntheticDomain", "collate_fn", "eval_transforms",
    "generate_sample", "get_id2label", "id2label", "ID2LABEL_FILE", "is_builtin", "label_lut", "load_custom",
    "load_dataset", "make_dataset", "read_id2label", "make_synthetic_dataset", "name_mapping_lut",
    "normalization_from_processor", "train_transforms",
]  # fmt: skip
