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


def hub_mean_iou(results, gt_seg_maps, num_labels, ignore_index, nan_to_num=None, label_map=None,
                 reduce_labels=False):  # fmt: skip
    """The Hub's `mean_iou` computation, re-written from huggingface/evaluate metrics/mean_iou/mean_iou.py
    (Apache-2.0; `intersect_and_union`, `total_intersect_and_union`, `mean_iou`): per-image histograms of the
    intersection, prediction and label over `num_labels` bins, summed, then the ratios."""
    total = np.zeros((4, num_labels))
    for pred, label in zip(results, gt_seg_maps):
        pred, label = np.array(pred), np.array(label)
        if label_map is not None:
            original = label.copy()
            for old, new in label_map.items():
                label[original == old] = new
        if reduce_labels:
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        mask = label != ignore_index
        pred, label = pred[mask], label[mask]
        hist = lambda v: np.histogram(v, bins=num_labels, range=(0, num_labels - 1))[0]  # noqa: E731
        inter, area_pred, area_label = hist(pred[pred == label]), hist(pred), hist(label)
        total += np.stack([inter, area_pred + area_label - inter, area_pred, area_label])
    inter, union, _, area_label = total
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = inter / union, inter / area_label
        metrics = {"mean_iou": np.nanmean(iou), "mean_accuracy": np.nanmean(acc),
                   "overall_accuracy": inter.sum() / area_label.sum(), "per_category_iou": iou,
                   "per_category_accuracy": acc}  # fmt: skip
    if nan_to_num is not None:
        metrics = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in metrics.items()}
    return metrics


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_the_hub_mean_iou_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 12))
    reduce = bool(seed % 2)
    raw_classes = c + 1 if reduce else c  # reduce_labels drops a background 0
    preds, refs = [], []
    for _ in range(int(rng.integers(1, 4))):
        h, w = (int(v) for v in rng.integers(1, 9, 2))
        preds.append(rng.integers(0, c, (h, w)))
        ref = rng.integers(0, raw_classes, (h, w))
        ref[rng.random((h, w)) < 0.2] = 255
        refs.append(ref)
    label_map = None
    if seed % 3 == 0:  # swap two raw ids: every lookup on the original ids
        a, b = (int(v) for v in rng.choice(raw_classes, 2, replace=False))
        label_map = {a: b, b: a}
    nan_to_num = [None, 0, -1][seed % 3 - 1]
    kw = dict(num_labels=c, ignore_index=255, nan_to_num=nan_to_num, label_map=label_map, reduce_labels=reduce)
    ours = evaluate.load(METRIC_PATH).compute(predictions=preds, references=refs, **kw)
    hub = hub_mean_iou(preds, refs, **kw)
    assert set(ours) == set(hub)
    for k in hub:
        np.testing.assert_allclose(ours[k], hub[k], rtol=1e-12, equal_nan=True, err_msg=k)


def test_num_labels_or_num_classes():
    metric = evaluate.load(METRIC_PATH)
    p, r = [np.array([[0, 1]])], [np.array([[0, 0]])]
    assert metric.compute(predictions=p, references=r, num_labels=2)["mean_iou"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="disagree"):
        metric.compute(predictions=p, references=r, num_labels=2, num_classes=3)
