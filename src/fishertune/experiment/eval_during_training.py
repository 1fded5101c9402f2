"""Evaluation during training in the recipes: the Trainer's `eval_strategy` / `eval_steps`,
`metric_for_best_model` and `load_best_model_at_end`, scored per target with the run's own evaluator.

The Trainer's generic evaluation loop gathers logits of every batch (full-resolution segmentation maps of
different sizes do not concatenate); here `evaluate()` runs `evaluation.evaluate_model` with the run's inference
settings (whole or sliding window, full-resolution labels) over the per-target datasets and logs flat scalars:
`eval_<target>_mIoU` (and `_aAcc`, `_mAcc`) per target and source validation, `eval_mean_mIoU` over the targets
with `eval_mean_num_targets`. So `metric_for_best_model: mean_mIoU` (or `eval_mean_mIoU`) picks the checkpoint
with the best target mean. Selecting on targets uses them for model selection, which the domain-generalisation
protocol forbids: for paper numbers select on the source validation (`eval_source:<dataset>:<split>_mIoU`).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

_KEYS = ("mIoU", "aAcc", "mAcc", "num_targets")


def flat_metrics(metrics: dict, prefix: str = "eval") -> dict[str, float]:
    """`{domain: {"mIoU", ...}}` (percent, as metrics.json) -> `{f"{prefix}_{domain}_mIoU": value, ...}`; a domain
    without a valid pixel (`None`) has no entry."""
    out = {}
    for domain, values in metrics.items():
        for key in _KEYS:
            if values.get(key) is not None:
                out[f"{prefix}_{domain}_{key}"] = float(values[key])
    return out


class TargetEvaluationMixin:
    """Put before a `FisherTuneTrainer` (class): its `evaluate()` scores the run's targets with `evaluate_fn`.

    Args:
        evaluate_fn (`Callable[[model], dict]`): the model -> `{domain: metrics in %, "mean": ...}` (the recipes
            pass `experiment.run.evaluate_all` with the run's datasets and inference settings).
        eval_sets (`dict`, *optional*): the per-target datasets, given to the Trainer as its `eval_dataset` (which
            it requires with an `eval_strategy`); `evaluate_fn` already holds them.
    """

    def __init__(self, *args, evaluate_fn: Callable, eval_sets: Optional[dict] = None, **kwargs):
        super().__init__(*args, eval_dataset=eval_sets or None, **kwargs)
        self.evaluate_fn = evaluate_fn

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if eval_dataset is not None:
            raise ValueError("This trainer evaluates the run's own targets; call evaluation.evaluate_model for others.")
        start = time.perf_counter()
        metrics = flat_metrics(self.evaluate_fn(self.model), metric_key_prefix)
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 4)
        if self.state.epoch is not None:
            metrics["epoch"] = self.state.epoch
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def with_target_evaluation(trainer_class: type) -> type:
    """`trainer_class` (a `FisherTuneTrainer` or a subclass) with `TargetEvaluationMixin`'s `evaluate()`."""
    return type(f"TargetEvaluation{trainer_class.__name__}", (TargetEvaluationMixin, trainer_class), {})
