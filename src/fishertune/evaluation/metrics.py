"""Streaming segmentation metrics from a confusion matrix (mIoU, aAcc, mAcc, per-class IoU).

IoU of class c = TP / (TP + FP + FN) over the pixels whose target is not `ignore_index`; a class
absent from both targets and predictions has IoU NaN and is left out of the mean (as mmseg and
the official Cityscapes evaluation do).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Confusion matrix [C, C] (int64; rows = target, columns = prediction) of two label maps.

    Args:
        pred (`torch.Tensor`): predicted class ids, any shape, values in [0, C).
        target (`torch.Tensor`): target ids, same shape, values in [0, C) or `ignore_index`.
        num_classes (`int`): C.
        ignore_index (`int`, *optional*, defaults to `255`): target value left out.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if pred.device.type == "cpu" and target.device.type == "cpu":
        # numpy's bincount is several times faster than torch's on CPU (benchmarks/eval_throughput.py).
        cm = _confusion_numpy(pred.reshape(-1).numpy(), target.reshape(-1).numpy(), num_classes, ignore_index)
        return torch.from_numpy(cm)
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = target != ignore_index
    _check_ids(target[valid], pred[valid], num_classes, ignore_index)
    # Ignored pixels go to an extra bin (dropped below) instead of being compacted out: one pass.
    idx = torch.where(valid, target * num_classes + pred, num_classes**2)
    return torch.bincount(idx, minlength=num_classes**2 + 1)[:-1].reshape(num_classes, num_classes)


def _check_ids(target, pred, num_classes, ignore_index):
    bad_t = (target < 0) | (target >= num_classes)
    if bad_t.any():
        bad = sorted({int(v) for v in target[bad_t].tolist()})
        raise ValueError(f"target contains ids {bad} outside [0, {num_classes}) and not ignore_index={ignore_index}")
    if ((pred < 0) | (pred >= num_classes)).any():
        raise ValueError(f"pred contains ids outside [0, {num_classes})")


def _confusion_numpy(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    c = num_classes
    if pred.size and (pred.min() < 0 or pred.max() >= c):
        raise ValueError(f"pred contains ids outside [0, {c})")
    t = target.astype(np.int64)
    if t.size and t.min() < 0 and ignore_index >= 0:
        raise ValueError(f"target contains negative ids and ignore_index={ignore_index}")
    # Bin every pixel, ignored ones included, as target * C + pred: a single pass without
    # compacting the valid pixels out; row r of the result counts the pixels of target id r.
    counts = np.bincount((t * c + pred).ravel(), minlength=c * c)
    rows = np.pad(counts, (0, (-counts.size) % c)).reshape(-1, c)
    bad = [r for r in range(c, rows.shape[0]) if r != ignore_index and rows[r].any()]
    if bad:
        raise ValueError(f"target contains ids {bad} outside [0, {c}) and not ignore_index={ignore_index}")
    cm = rows[:c].copy()
    if 0 <= ignore_index < c:
        cm[ignore_index] = 0
    return cm


def metrics_from_confusion(cm, class_names: Sequence[str] | None = None) -> dict:
    """mIoU, aAcc, mAcc and per-class IoU/accuracy (fractions in [0, 1]) of a confusion matrix.

    Args:
        cm (`torch.Tensor` or `np.ndarray`): [C, C], rows = target, columns = prediction.
        class_names (`Sequence[str]`, *optional*): names for the per-class dicts; ids as str otherwise.
    """
    cm = np.asarray(cm.cpu() if isinstance(cm, torch.Tensor) else cm, dtype=np.float64)
    tp = np.diag(cm)
    gt, predicted = cm.sum(1), cm.sum(0)
    union = gt + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(tp))]
    total = cm.sum()
    nanmean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")  # noqa: E731
    return {
        "mIoU": nanmean(iou),
        "aAcc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mAcc": nanmean(acc),
        "per_class_iou": dict(zip(names, iou.tolist())),
        "per_class_acc": dict(zip(names, acc.tolist())),
        "num_pixels": int(total),
    }


class SegmentationMetric:
    """Streaming confusion-matrix metric, synchronized across processes.

    Args:
        num_classes (`int`): number of classes C.
        ignore_index (`int`, *optional*, defaults to `255`): target value left out.
        class_names (`Sequence[str]`, *optional*): names of the classes for `compute()`.
        device (`torch.device`, *optional*): where the matrix lives (defaults to the first update's device).

    Example:
        >>> metric = SegmentationMetric(19)
        >>> metric.update(logits, labels)  # logits [B,C,h,w] (resized to labels) or ids [B,H,W]
        >>> metric.compute()["mIoU"]
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None, device=None
    ):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. `pred`: ids [B,H,W] (or [H,W]), or logits/probabilities [B,C,h,w], which are
        bilinearly resized to the target size (when it differs) and arg-maxed."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.is_floating_point():
            if pred.dim() == 3:
                pred = pred[None]
            if pred.dim() != 4 or pred.shape[1] != self.num_classes:
                raise ValueError(f"logits must be [B, {self.num_classes}, h, w], got {tuple(pred.shape)}")
            if pred.shape[-2:] != target.shape[-2:]:
                pred = F.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
            pred = pred.argmax(1)
        if target.dim() == pred.dim() - 1:
            target = target[None]
        cm = confusion_matrix(pred.to(target.device), target, self.num_classes, self.ignore_index)
        if self.confusion.device != cm.device:
            self.confusion = self.confusion.to(cm.device)
        self.confusion += cm

    def synced_confusion(self) -> torch.Tensor:
        """The confusion matrix summed over all processes (all_reduce when torch.distributed is initialized)."""
        cm = self.confusion.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # NCCL needs the tensor on the process's GPU; gloo works on CPU.
            if dist.get_backend() == "nccl" and cm.device.type != "cuda":
                cm = cm.cuda()
            dist.all_reduce(cm, op=dist.ReduceOp.SUM)
        return cm.cpu()

    def compute(self) -> dict:
        """Metrics of everything seen so far, on all processes (see `metrics_from_confusion`)."""
        cm = self.synced_confusion()
        out = metrics_from_confusion(cm, self.class_names)
        out["confusion_matrix"] = cm.numpy()
        return out
