"""Honest metrics: a target without a valid pixel warns, is NaN (null in metrics.json, which stays valid JSON)
and is left out of the mean, which says over how many targets it is; a target whose classes differ from the
model's is refused naming both, or mapped by name with `label_mapping`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fishertune.data import CAMVID_CLASSES, SYNTHETIC_CLASSES, make_synthetic_dataset
from fishertune.data._common import make_dataset
from fishertune.evaluation import evaluate_model
from fishertune.experiment import ExperimentArguments
from fishertune.experiment.build import build_eval_datasets
from fishertune.experiment.run import format_table, to_percent

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_evaluator import Constant  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent / "data"))
from fake_trees import ids_grid, write_image, write_label  # noqa: E402


def _all_ignored(n=2):
    img = [Image.fromarray(np.zeros((8, 8, 3), np.uint8)) for _ in range(n)]
    lbl = [Image.fromarray(np.full((8, 8), 255, np.uint8)) for _ in range(n)]
    return make_dataset(img, lbl, name="void", split="val", id2label=dict(enumerate(SYNTHETIC_CLASSES)))


def test_target_without_valid_pixel_is_null_and_left_out_of_the_mean():
    targets = {"fog": make_synthetic_dataset(2, "fog", size=(16, 24), seed=1), "void": _all_ignored()}
    with pytest.warns(UserWarning, match="'void' has no valid pixel"):
        res = evaluate_model(Constant(3), targets, mode="whole", num_classes=5)
    assert np.isnan(res["void"]["mIoU"])
    assert res["mean"]["mIoU"] == pytest.approx(res["fog"]["mIoU"]) and res["mean"]["num_targets"] == 1
    metrics = {k: to_percent(v) for k, v in res.items()}
    text = json.dumps(metrics, allow_nan=False)  # valid JSON: raises on a bare NaN
    assert json.loads(text)["void"]["mIoU"] is None and json.loads(text)["mean"]["num_targets"] == 1
    table = format_table(metrics)
    assert "mean over targets (1)" in table and "n/a" in table


def _camvid(root: Path) -> None:
    for stem in ("train/0001TP_000001", "train/0001TP_000002"):
        write_image(root / "images" / f"{stem}.jpg", 8, 8)
        write_label(root / "labels" / f"{stem}.png", ids_grid([0, 3, 5, 8], 8, 8))  # sky road tree car


def test_target_with_other_classes_is_refused_naming_both(tmp_path):
    _camvid(tmp_path)
    exp = ExperimentArguments(
        backbone="config:vit-micro-test", targets=["camvid:train"], target_roots=[f"camvid={tmp_path}"]
    )
    with pytest.raises(
        ValueError,
        match=r"'camvid:train' has the classes \['sky', 'building'.*model predicts "
        r"\['road', 'building'.*--label_space cityscapes.*--label_mapping",
    ):
        build_eval_datasets(exp)
    # the same classes: accepted
    build_eval_datasets(exp, id2label=dict(enumerate(CAMVID_CLASSES)))


def test_label_mapping_maps_target_classes_onto_the_models_by_name(tmp_path):
    _camvid(tmp_path)
    exp = ExperimentArguments(
        backbone="config:vit-micro-test",
        targets=["camvid:train"],
        target_roots=[f"camvid={tmp_path}"],
        label_mapping=["tree=vegetation"],
    )
    sample = build_eval_datasets(exp)["camvid:train"][0]
    model = {n: i for i, n in enumerate(SYNTHETIC_CLASSES)}
    raw = ids_grid([0, 3, 5, 8], 8, 8)
    # CamVid sky/road/tree/car -> the synthetic model's sky/road/vegetation/car ids
    want = np.choose(
        np.searchsorted([0, 3, 5, 8], raw), [model["sky"], model["road"], model["vegetation"], model["car"]]
    )
    np.testing.assert_array_equal(sample["labels"].numpy(), want)
    with pytest.raises(ValueError, match="'target class=model class'"):
        ExperimentArguments(label_mapping=["tree"])
