"""ExperimentArguments' augmentation knobs (num_scales, cat_max_ratio, flip_prob, keyed_augmentation) reach the
training transform of `build_train_dataset`; invalid values are refused with a message saying how to fix them."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from fishertune.data import KeyedTrainingDataset, SegmentationTransforms
from fishertune.experiment import ExperimentArguments
from fishertune.experiment.build import build_train_dataset, train_transform

SMALL = dict(backbone="config:vit-micro-test", num_synthetic_samples=4, synthetic_size=[32, 48], crop_size=[16, 24],
             scale_range=[24, 48])  # fmt: skip


def _keyed_transform(ds: KeyedTrainingDataset) -> SegmentationTransforms:
    return ds._apply.__self__  # the bound `SegmentationTransforms.sample` it applies


def test_defaults_are_the_transform_defaults():
    """Recipes that set none of the knobs keep the augmentation they had (SegmentationTransforms' defaults)."""
    ref = SegmentationTransforms(True, crop_size=(16, 24), scale_range=(24, 48))
    t = train_transform(ExperimentArguments(**SMALL))
    assert np.array_equal(t.short_edges, ref.short_edges) and len(t.short_edges) == 16
    assert (t.cat_max_ratio, t.flip_prob, t.photometric) == (ref.cat_max_ratio, ref.flip_prob, True)


def test_knobs_reach_the_transform():
    args = ExperimentArguments(**SMALL, num_scales=4, cat_max_ratio=0.9, flip_prob=0.25, photometric=False)
    ds = build_train_dataset(args, seed=3)
    assert isinstance(ds, KeyedTrainingDataset) and ds.seed == 3
    t = _keyed_transform(ds)
    assert list(t.short_edges) == [24, 32, 40, 48]
    assert (t.cat_max_ratio, t.flip_prob, t.photometric, t.crop_size) == (0.9, 0.25, False, (16, 24))
    assert train_transform(ExperimentArguments(**SMALL, num_scales=None)).short_edges is None  # any integer edge


def test_unkeyed_is_a_plain_dataset_drawing_from_torch():
    """keyed_augmentation=False: a datasets.Dataset with the transform set, its draws from torch's RNG per call."""
    args = ExperimentArguments(**SMALL, keyed_augmentation=False, num_scales=None, cat_max_ratio=1.0, flip_prob=1.0)
    ds = build_train_dataset(args, seed=0)
    assert isinstance(ds, datasets.Dataset) and not isinstance(ds, KeyedTrainingDataset)
    t = ds.format["format_kwargs"]["transform"]
    assert (
        isinstance(t, SegmentationTransforms) and t.short_edges is None and (t.cat_max_ratio, t.flip_prob) == (1.0, 1.0)
    )
    torch.manual_seed(0)
    a = ds[0]
    torch.manual_seed(0)
    b = ds[0]
    c = ds[0]  # the same sample again, the stream moved on: another crop (not keyed by the sample)
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
    assert a["pixel_values"].shape[-2:] == (16, 24) and not torch.equal(a["pixel_values"], c["pixel_values"])


@pytest.mark.parametrize("bad, message", [
    (dict(num_scales=0), "num_scales must be a positive integer"),
    (dict(num_scales=2.5), "num_scales must be a positive integer"),
    (dict(cat_max_ratio=0.0), r"cat_max_ratio must be in \(0, 1\]"),
    (dict(cat_max_ratio=1.5), "1.0 disables"),
    (dict(flip_prob=-0.1), r"flip_prob must be a probability in \[0, 1\]"),
    (dict(flip_prob=2), r"flip_prob must be a probability"),
    (dict(keyed_augmentation=False, bad_file_policy="skip"), "use bad_file_policy='error'"),
])  # fmt: skip
def test_invalid_values_say_how_to_fix(bad, message):
    with pytest.raises(ValueError, match=message):
        ExperimentArguments(**SMALL, **bad)
