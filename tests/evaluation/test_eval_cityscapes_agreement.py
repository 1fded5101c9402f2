"""Per-class IoUs equal those of the official Cityscapes pixel-level evaluation on the same maps."""

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fishertune.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_LABEL_TO_TRAIN_ID
from fishertune.evaluation import SegmentationMetric

ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")

TRAIN_TO_LABEL = {t: i for i, t in CITYSCAPES_LABEL_TO_TRAIN_ID.items() if t != 255}


def test_per_class_iou_matches_cityscapesscripts(tmp_path):
    rng = np.random.default_rng(0)
    to_label = np.vectorize(TRAIN_TO_LABEL.get)
    ignored_ids = [i for i, t in CITYSCAPES_LABEL_TO_TRAIN_ID.items() if t == 255 and i >= 0]
    metric = SegmentationMetric(19, class_names=CITYSCAPES_CLASSES)
    preds, gts = [], []
    for k in range(3):
        # Blocky maps so that IoUs are far from 0 and 1; class 16 (train) never appears anywhere.
        classes = [c for c in range(19) if c != 16]
        gt_train = np.kron(rng.choice(classes, (8, 16)), np.ones((8, 8), int))
        pred_train = np.where(rng.random(gt_train.shape) < 0.7, gt_train, rng.choice(classes, gt_train.shape))
        gt_label = to_label(gt_train)
        void = rng.random(gt_train.shape) < 0.1
        gt_label[void] = rng.choice(ignored_ids, void.sum())  # several ignored ids, incl. 0 and 4
        gt_train[void] = 255
        metric.update(torch.from_numpy(pred_train[None]), torch.from_numpy(gt_train[None]))
        stem = f"frankfurt_000000_{k:06d}"
        pred_path, gt_path = tmp_path / f"{stem}_pred.png", tmp_path / f"{stem}_gtFine_labelIds.png"
        Image.fromarray(to_label(pred_train).astype(np.uint8)).save(pred_path)
        Image.fromarray(gt_label.astype(np.uint8)).save(gt_path)
        preds.append(str(pred_path))
        gts.append(str(gt_path))
    args = copy.copy(ev.args)
    args.evalInstLevelScore, args.quiet, args.JSONOutput = False, True, False
    args.exportFile = str(tmp_path / "result.json")
    official = ev.evaluateImgLists(preds, gts, args)["classScores"]
    ours = metric.compute()
    compared = 0
    for name in CITYSCAPES_CLASSES:
        a, b = ours["per_class_iou"][name], official[name]
        if math.isnan(b):
            assert math.isnan(a), name
        else:
            assert abs(a - b) < 1e-6, (name, a, b)
            compared += 1
    assert compared == 18 and math.isnan(ours["per_class_iou"]["train"])
    assert abs(ours["mIoU"] - ev.getScoreAverage(official, args)) < 1e-6
