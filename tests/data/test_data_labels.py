import numpy as np
import pytest

from fishertune.data import id2label
from fishertune.data.labels import (
    CAMVID_TO_CITYSCAPES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN_ID,
    GTAV_EVAL_IDS,
    MAPILLARY_CLASSES,
    camvid_label_map,
    cityscapes_label_map,
    gtav_label_map,
    mapillary_label_map,
)


def test_cityscapes_table_matches_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    official = {lab.id: (255 if lab.trainId in (-1, 255) else lab.trainId) for lab in labels.labels}
    assert CITYSCAPES_LABEL_TO_TRAIN_ID == official
    names = {lab.trainId: lab.name for lab in labels.labels if 0 <= lab.trainId < 255}
    assert CITYSCAPES_CLASSES == tuple(names[i] for i in range(19))
    lm = cityscapes_label_map()
    for lab in labels.labels:
        assert lm.lut[lab.id % 256] == official[lab.id]
    assert lm.unknown_ids(np.array([[0, 33, 34, 255]], np.uint8)) == [34]


def test_gtav_map_per_method_md():
    lm = gtav_label_map()
    expected = np.full(256, 255)
    expected[list(GTAV_EVAL_IDS)] = np.arange(19)
    np.testing.assert_array_equal(lm.lut, expected)
    assert GTAV_EVAL_IDS == (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
    assert lm.unknown_ids(np.arange(256, dtype=np.uint8)) == []  # "everything else to 255"
    # GTAV's table is the Cityscapes one restricted to the 19 evaluated ids.
    cs = cityscapes_label_map()
    np.testing.assert_array_equal(lm.lut[:34], cs.lut[:34])


def test_mapillary_map():
    lm = mapillary_label_map()
    assert len(MAPILLARY_CLASSES) == 66
    idx = MAPILLARY_CLASSES.index
    assert lm.lut[idx("construction--flat--road")] == 0
    assert lm.lut[idx("marking--general")] == 0
    assert lm.lut[idx("human--rider--motorcyclist")] == 12
    assert lm.lut[idx("object--vehicle--on-rails")] == 16
    assert lm.lut[idx("object--traffic-sign--back")] == 255
    assert lm.lut[idx("void--unlabeled")] == 255
    assert set(lm.lut[:66].tolist()) == set(range(19)) | {255}  # every Cityscapes class is reachable
    assert lm.unknown_ids(np.array([65, 66], np.uint8)) == [66]


def test_camvid_maps():
    own = camvid_label_map()
    np.testing.assert_array_equal(own.lut[:12], [*range(11), 255])
    cs = camvid_label_map("cityscapes")
    np.testing.assert_array_equal(cs.lut[:12], [*CAMVID_TO_CITYSCAPES, 255])
    assert [CITYSCAPES_CLASSES[t] for t in CAMVID_TO_CITYSCAPES] == [
        "sky", "building", "pole", "road", "sidewalk", "vegetation", "traffic sign", "fence", "car",
        "person", "bicycle",
    ]  # fmt: skip
    assert own.unknown_ids(np.array([11, 12], np.uint8)) == [12]
    assert id2label("camvid")[10] == "bicyclist" and id2label("camvid", "cityscapes")[18] == "bicycle"
    assert len(id2label("gtav")) == 19 and id2label("synthetic")[0] == "road"
    with pytest.raises(ValueError):
        camvid_label_map("voc")
