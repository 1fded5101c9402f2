import numpy as np
import pytest
import torch

from fishertune.data import eval_transforms, make_synthetic_dataset
from fishertune.evaluation import evaluate_model


class Constant(torch.nn.Module):
    """Predicts class `k` everywhere: its metrics follow from the label counts alone."""

    def __init__(self, k, num_classes=5):
        super().__init__()
        self.k, self.c = k, num_classes
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values):
        b, _, h, w = pixel_values.shape
        logits = torch.zeros(b, self.c, h, w) + self.bias
        logits[:, self.k] = 1.0
        return {"logits": logits}

    def semantic_logits(self, outputs, size):
        return outputs["logits"]


def expected(ds, k, c=5):
    labels = np.stack([np.asarray(ds[i]["label"]) for i in range(len(ds))]).ravel()
    counts = np.bincount(labels[labels != 255], minlength=c).astype(float)
    n = counts.sum()
    iou = np.where(counts > 0, 0.0, np.nan)
    iou[k] = counts[k] / n  # TP = count_k, union = all valid pixels
    return np.nanmean(iou), counts[k] / n


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_per_target_and_mean(mode):
    targets = {d: make_synthetic_dataset(3, d, size=(40, 56), seed=5) for d in ("source", "dark")}
    model = Constant(3)
    res = evaluate_model(model, targets, batch_size=2, mode=mode, crop_size=24, stride=16)
    for d, ds in targets.items():
        miou, aacc = expected(ds, 3)
        assert res[d]["mIoU"] == pytest.approx(miou) and res[d]["aAcc"] == pytest.approx(aacc)
        assert list(res[d]["per_class_iou"])[3] == "sky"  # class names from the dataset metadata
    assert res["mean"]["mIoU"] == pytest.approx((res["source"]["mIoU"] + res["dark"]["mIoU"]) / 2)


def test_full_resolution_labels_with_resized_images():
    ds = make_synthetic_dataset(2, "fog", size=(40, 56), seed=1)
    ds.set_transform(eval_transforms(scale=(28, 20)))  # image shrunk, label kept at 40x56
    res = evaluate_model(Constant(0), {"fog": ds}, mode="whole", num_classes=5)
    raw = make_synthetic_dataset(2, "fog", size=(40, 56), seed=1)
    miou, aacc = expected(raw, 0)
    assert res["fog"]["mIoU"] == pytest.approx(miou) and res["fog"]["num_pixels"] == (np.stack(
        [np.asarray(raw[i]["label"]) for i in range(2)]) != 255).sum()  # fmt: skip
