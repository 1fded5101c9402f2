"""The CamVid loader on the real copy in shared/data/camvid (skipped when it is not there)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fishertune.data import get_id2label, load_dataset

ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "camvid"
if not (ROOT / "splits.json").is_file():
    ROOT = Path("/work/shared/data/camvid")
pytestmark = pytest.mark.skipif(not (ROOT / "splits.json").is_file(), reason="shared/data/camvid not available")


def test_real_camvid_splits():
    splits = json.loads((ROOT / "splits.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == {
        "source_train": 305, "source_val": 101, "target_day_new_route": 171, "target_dusk": 124,
    }  # fmt: skip
    dusk = load_dataset("camvid", str(ROOT), "target_dusk", num_workers=2)
    assert len(dusk) == 124 and get_id2label(dusk)[3] == "road"
    for i in (0, 123):
        ex = dusk[i]
        assert ex["image"].size == (480, 360) and ex["label"].size == (480, 360)
        raw = np.asarray(Image.open(ROOT / "labels" / f"{splits['target_dusk'][i]}.png"))
        lbl = np.asarray(ex["label"])
        np.testing.assert_array_equal(lbl, np.where(raw == 11, 255, raw))
        assert set(np.unique(lbl).tolist()) <= set(range(11)) | {255}
    cs = load_dataset("camvid", str(ROOT), "target_dusk", label_space="cityscapes", num_workers=2).select([0])
    assert set(np.unique(np.asarray(cs[0]["label"])).tolist()) <= {10, 2, 5, 0, 1, 8, 7, 4, 13, 11, 18, 255}
