"""Evaluation throughput: fishertune's confusion-matrix metric against baselines, on the same maps.

The natural baseline, `evaluate.load("mean_iou")`, lives on the Hugging Face Hub only: the
installed `evaluate` package (0.4.x) ships no metric scripts (site-packages/evaluate has none),
no `evaluate-metric` package exists on PyPI, and this machine cannot reach the Hub. So, rather
than re-implementing the Hub script, the comparison is against a plain numpy bincount
confusion matrix (the core of that script and of mmseg's) and against cityscapesscripts'
pure-Python per-pixel-pair path (its default when its Cython extension is not built).
fishertune is measured twice: `SegmentationMetric.update` (numpy bincount on CPU tensors, torch on GPU) and the packaged
`evaluate.Metric` (`evaluate.load(fishertune.evaluation.METRIC_PATH)`), which also pays for
`evaluate`'s Arrow serialization of the maps.

Usage: python benchmarks/eval_throughput.py [--maps 8] [--height 512] [--width 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

from fishertune.evaluation import METRIC_PATH, SegmentationMetric, metrics_from_confusion  # noqa: E402


def numpy_bincount(preds, refs, c, ignore=255):
    cm = np.zeros((c, c), np.int64)
    for p, r in zip(preds, refs):
        valid = r != ignore
        cm += np.bincount(r[valid].astype(np.int64) * c + p[valid], minlength=c * c).reshape(c, c)
    return metrics_from_confusion(cm)["mIoU"]


def cityscapes_style_unique(preds, refs, c, ignore=255):
    """cityscapesscripts' non-Cython evaluatePair: np.unique over encoded pairs, then a Python loop."""
    cm = np.zeros((256, 256), np.int64)
    for p, r in zip(preds, refs):
        enc = r.astype(np.int32) * 256 + p
        values, counts = np.unique(enc, return_counts=True)
        for v, n in zip(values, counts):
            cm[v // 256, v % 256] += n
    return metrics_from_confusion(cm[:c, :c])["mIoU"]


def fishertune_metric(preds, refs, c, ignore=255):
    m = SegmentationMetric(c, ignore)
    for p, r in zip(preds, refs):
        m.update(torch.from_numpy(p), torch.from_numpy(r))
    return m.compute()["mIoU"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=8)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.height, args.width)
    refs = [rng.integers(0, args.classes, shape).astype(np.uint8) for _ in range(args.maps)]
    for r in refs:
        r[rng.random(shape) < 0.1] = 255
    preds = [
        np.where(rng.random(shape) < 0.8, np.minimum(r, args.classes - 1), rng.integers(0, args.classes, shape)).astype(
            np.uint8
        )
        for r in refs
    ]
    runners = {
        "fishertune SegmentationMetric.update": fishertune_metric,
        "numpy bincount (baseline)": numpy_bincount,
        "cityscapesscripts-style np.unique loop": cityscapes_style_unique,
    }
    try:
        import evaluate

        metric = evaluate.load(METRIC_PATH)
        runners["fishertune evaluate.Metric (local path)"] = lambda p, r, c, ignore=255: metric.compute(
            predictions=p, references=r, num_classes=c, ignore_index=ignore)["mean_iou"]  # fmt: skip
    except ImportError:
        print("evaluate not installed: skipping the evaluate.Metric row")
    mpix = args.maps * args.height * args.width / 1e6
    print(f"{args.maps} maps of {args.height}x{args.width}, {args.classes} classes, best of {args.repeats}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"| {'implementation':<42} | {'ms / map':>9} | {'Mpix/s':>8} | {'mIoU':>8} |")
    print(f"|{'-' * 44}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
    for name, fn in runners.items():
        times, miou = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            miou = fn(preds, refs, args.classes)
            times.append(time.perf_counter() - t)
        best = min(times)
        print(f"| {name:<42} | {1e3 * best / args.maps:>9.2f} | {mpix / best:>8.1f} | {miou:>8.5f} |")


if __name__ == "__main__":
    main()
