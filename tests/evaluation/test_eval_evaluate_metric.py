"""The `evaluate.Metric` shipped in the package loads from a local path with the Hub switched off."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fishertune.evaluation import METRIC_PATH, SegmentationMetric  # noqa: E402

evaluate = pytest.importorskip("evaluate")


def test_evaluate_load_offline_matches_segmentation_metric(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True, raising=False)
    metric = evaluate.load(METRIC_PATH)
    preds = [np.array([[0, 1, 1], [2, 2, 0]]), np.array([[3, 3], [0, 1]])]
    refs = [np.array([[0, 0, 1], [1, 2, 255]]), np.array([[3, 0], [255, 1]])]
    out = metric.compute(predictions=preds, references=refs, num_classes=4, ignore_index=255)
    # Hand count: cm = [[1,1,0,0],[0,2,1,0],[0,0,1,0],[1,0,0,1]]
    np.testing.assert_allclose(out["per_category_iou"], [1 / 3, 1 / 2, 1 / 2, 1 / 2])
    assert out["overall_accuracy"] == pytest.approx(5 / 8) and out["mean_iou"] == pytest.approx(11 / 24)
    ref = SegmentationMetric(4)
    for p, r in zip(preds, refs):
        ref.update(torch.tensor(p), torch.tensor(r))
    assert out["mean_iou"] == pytest.approx(ref.compute()["mIoU"], abs=1e-12)
    assert out["mean_accuracy"] == pytest.approx(ref.compute()["mAcc"], abs=1e-12)
