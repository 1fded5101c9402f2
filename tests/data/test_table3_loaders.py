"""Table 3's adverse-condition targets (Foggy Zurich, Foggy Driving, Dark Zurich, Nighttime Driving) on fake trees
in their official layouts: every split, Cityscapes label ids mapped to train ids, and the recipe configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_trees import ids_grid, make_table3_trees

from fishertune.data import DATASET_NAMES, EVAL_SCALES, DatasetLayoutError, get_id2label, load_dataset
from fishertune.data.labels import CITYSCAPES_CLASSES
from fishertune.experiment.config_io import load_yaml

CS_IDS = [7, 8, 11, 24, 26, 33, 0, 255]
CS_TRAIN = [0, 1, 2, 11, 13, 18, 255, 255]
RAW = ids_grid(CS_IDS)
WANT = np.choose(np.searchsorted(sorted(CS_IDS), RAW), [CS_TRAIN[CS_IDS.index(v)] for v in sorted(CS_IDS)])
CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"


@pytest.mark.parametrize("name, split, n", [("foggy_zurich", "testv2", 2), ("foggy_zurich", "testv1", 1),
                                            ("foggy_driving", "all", 2), ("foggy_driving", "test", 1),
                                            ("foggy_driving", "test_extra", 1), ("dark_zurich", "val", 1),
                                            ("nighttime_driving", "test", 1)])  # fmt: skip
def test_official_layouts(tmp_path, name, split, n):
    roots = make_table3_trees(tmp_path, RAW)
    ds = load_dataset(name, str(roots[name]), split)
    assert len(ds) == n and list(get_id2label(ds).values()) == list(CITYSCAPES_CLASSES)
    for i in range(n):
        np.testing.assert_array_equal(np.asarray(ds[i]["label"]), WANT)
    assert name in DATASET_NAMES and EVAL_SCALES[name] == (1024, 512)


def test_wrong_split_and_missing_files_are_named(tmp_path):
    roots = make_table3_trees(tmp_path, RAW)
    with pytest.raises(DatasetLayoutError, match="RGB_light_filenames.txt"):
        load_dataset("foggy_zurich", str(roots["foggy_zurich"]), "light")
    (roots["foggy_zurich"] / "gt_labelIds" / "GOPR0229" / "1508040913.0_frame_000955.png").unlink()
    with pytest.raises(DatasetLayoutError, match="1508040913.0_frame_000955.png, which is missing"):
        load_dataset("foggy_zurich", str(roots["foggy_zurich"]), "testv2")
    with pytest.raises(ValueError, match="test_extra"):
        load_dataset("foggy_driving", str(roots["foggy_driving"]), "train")


def test_recipe_config_targets_the_four_datasets():
    from fishertune.experiment import ExperimentArguments

    config = load_yaml(str(CONFIGS / "cityscapes_to_adverse.yaml"))
    assert config["dataset"] == "cityscapes" and config["train_split"] == "train"
    assert {t.split(":")[0] for t in config["targets"]} == {
        "foggy_zurich",
        "foggy_driving",
        "dark_zurich",
        "nighttime_driving",
    }
    names = {f for f in ExperimentArguments.__dataclass_fields__}
    exp = ExperimentArguments(**{k: v for k, v in config.items() if k in names})  # validates targets and roots
    assert set(exp.target_root_map()) == {
        "cityscapes",
        "foggy_zurich",
        "foggy_driving",
        "dark_zurich",
        "nighttime_driving",
    }
