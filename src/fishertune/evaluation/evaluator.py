"""Per-target evaluation of a segmentation model, and the mean over targets."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .inference import slide_inference, whole_inference
from .metrics import SegmentationMetric


def _class_names(ds, num_classes: int):
    try:
        from ..data import get_id2label

        names = get_id2label(ds)
        return [names[i] for i in range(num_classes)] if len(names) == num_classes else None
    except (ValueError, KeyError, ImportError):
        return None


def _prepared(ds, transform):
    """The dataset yielding pixel_values/labels: as is if its transform already does, else `transform`."""
    first = ds[0]
    if "pixel_values" in first:
        return ds
    if transform is None:
        from ..data import eval_transforms

        transform = eval_transforms()
    return ds.with_transform(transform)


def _collate_same_size(examples):
    """Stack images of one size; labels may differ in size (full-resolution labels) and stay a list."""
    return torch.stack([e["pixel_values"] for e in examples]), [e["labels"] for e in examples]


@torch.no_grad()
def evaluate_model(model, datasets: Mapping, batch_size: int = 1, mode: str = "slide", crop_size=512, stride=341,
                   num_classes: int | None = None, class_names: Sequence[str] | None = None, ignore_index: int = 255,
                   transform=None, device=None, average: str = "logits", num_workers: int = 0,
                   disable_tqdm: bool | None = None) -> dict:  # fmt: skip
    """mIoU of `model` on each target dataset, plus their mean.

    Predictions are made on `pixel_values` and the logits resized (bilinear) to each example's
    `labels` size, so full-resolution labels (the official protocol, `eval_transforms()`'s default)
    and resized ones both work. Under torch.distributed each process evaluates a contiguous shard
    of every dataset and the confusion matrices are summed with all_reduce.

    Args:
        model: a model with `semantic_logits(outputs, size)` (put in eval mode here).
        datasets (`dict[str, datasets.Dataset]`): target name -> dataset yielding
            `pixel_values`/`labels` (through its transform) or raw `image`/`label` columns
            (then `transform`, by default `eval_transforms()`, is applied).
        batch_size (`int`, *optional*, defaults to `1`): images per forward; batches need images of one size.
        mode (`str`, *optional*, defaults to `"slide"`): `"slide"` or `"whole"` inference.
        crop_size, stride: sliding window (h, w) or int, defaults 512 and 341 (Rein).
        num_classes (`int`, *optional*): C; inferred from the first logits if `None` (pass it
            under torch.distributed, where a process may get an empty shard).
        class_names (`Sequence[str]`, *optional*): names; read from the dataset metadata if `None`.
        ignore_index (`int`, *optional*, defaults to `255`): ignored label value.
        transform (`Callable`, *optional*): transform for datasets without `pixel_values`.
        device (`torch.device`, *optional*): defaults to the model's device.
        average (`str`, *optional*, defaults to `"logits"`): see `slide_inference`.
        num_workers (`int`, *optional*, defaults to `0`): DataLoader workers.
        disable_tqdm (`bool`, *optional*): hide the progress bar (images per target); by default it shows
            on the main process only (`TrainingArguments.disable_tqdm` semantics).

    Returns:
        `dict`: `{target: metrics}` (see `SegmentationMetric.compute`) and `"mean"`:
        `{"mIoU", "aAcc", "mAcc"}` averaged over the targets with valid pixels, `"num_targets"` their count
        (a target without one warns and is NaN: `mean_over_targets`).
    """
    if mode not in ("slide", "whole"):
        raise ValueError(f"mode must be 'slide' or 'whole', got {mode!r}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    if device is None:
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        device = params[0].device if params else torch.device("cpu")
    results = {}
    main_process = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    hide = (not main_process) if disable_tqdm is None else (disable_tqdm or not main_process)
    for target, ds in datasets.items():
        ds = _prepared(ds, transform)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ds = ds.shard(dist.get_world_size(), dist.get_rank(), contiguous=True)
        loader = DataLoader(ds, batch_size=batch_size, collate_fn=_collate_same_size, num_workers=num_workers)
        metric = None
        bar = tqdm(total=len(ds), desc=f"Evaluating {target}", unit="img", disable=hide, leave=False)
        for pixel_values, labels in loader:
            bar.update(len(pixel_values))
            pixel_values = pixel_values.to(device)
            if mode == "whole":
                logits = whole_inference(model, pixel_values)
            else:
                c = num_classes or (metric.num_classes if metric is not None else None)
                if c is None:  # one small whole-image call tells the class count before sliding
                    ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
                    c = whole_inference(model, pixel_values[:1, :, :ch, :cw]).shape[1]
                logits = slide_inference(model, pixel_values, c, crop_size, stride, average=average)
            if metric is None:
                c = num_classes or logits.shape[1]
                metric = SegmentationMetric(c, ignore_index, class_names or _class_names(ds, c), device=device)
            for one_logits, label in zip(logits, labels):
                metric.update(one_logits[None], label[None].to(device))
        bar.close()
        if metric is None:  # an empty shard still has to join the all_reduce
            metric = SegmentationMetric(num_classes or 1, ignore_index, class_names, device=device)
        results[target] = metric.compute()
        if results[target]["num_pixels"] == 0:
            warnings.warn(
                f"Target {target!r} has no valid pixel (every label is ignore_index={ignore_index}): its "
                "metrics are NaN (null in metrics.json) and it is left out of the mean.",
                stacklevel=2,
            )
    if was_training and hasattr(model, "train"):
        model.train()
    results["mean"] = mean_over_targets(results)
    return results


def mean_over_targets(results: Mapping[str, Mapping]) -> dict:
    """`{"mIoU", "aAcc", "mAcc"}` averaged over the targets that have valid pixels, and `num_targets`: how many.

    A target without a valid pixel has no score (NaN); averaging it in would make the mean NaN, averaging it
    as 0 would make it wrong, so it is left out and `num_targets` says over how many the mean is (NaN if none).
    """
    scored = [r for r in results.values() if r.get("num_pixels", 1) > 0]
    mean = {k: math.fsum(r[k] for r in scored) / len(scored) if scored else float("nan")
            for k in ("mIoU", "aAcc", "mAcc")}  # fmt: skip
    return {**mean, "num_targets": len(scored)}
