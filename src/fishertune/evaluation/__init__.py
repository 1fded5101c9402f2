"""Evaluation: streaming confusion-matrix mIoU, sliding-window inference, per-target evaluation.

`METRIC_PATH` is a folder loadable with `evaluate.load(METRIC_PATH)` (works offline).
"""

from __future__ import annotations

import os

from .evaluator import evaluate_model
from .inference import slide_inference, whole_inference
from .metrics import SegmentationMetric, confusion_matrix, metrics_from_confusion

METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metric")

__all__ = [
    "METRIC_PATH",
    "SegmentationMetric",
    "confusion_matrix",
    "evaluate_model",
    "metrics_from_confusion",
    "slide_inference",
    "whole_inference",
]
