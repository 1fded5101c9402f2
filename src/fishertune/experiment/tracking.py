"""Per-target evaluation results to the run's trackers (`report_to`: tensorboard, wandb, ...)."""

from __future__ import annotations

from collections.abc import Mapping


def eval_logs(metrics: Mapping[str, Mapping]) -> dict[str, float]:
    """Flat scalars of a run's metrics (percent): `eval_<domain>/mIoU` (and aAcc, mAcc), `eval_mean/mIoU`.

    The `eval_` prefix is the Trainer's own for evaluation metrics: the trackers of `report_to` turn it
    into their `eval/` section (`eval/<domain>/mIoU` in TensorBoard and W&B), where any other key would
    be filed under `train/`.

    Args:
        metrics: `{domain: {"mIoU", "aAcc", "mAcc", ...}, "mean": {...}}` as in metrics.json.
    """
    logs = {}
    for domain, values in metrics.items():
        for key in ("mIoU", "aAcc", "mAcc"):
            if values.get(key) is not None:
                logs[f"eval_{domain}/{key}"] = float(values[key])
    return logs


def log_eval_metrics(trainer, metrics: Mapping[str, Mapping]) -> dict[str, float]:
    """Send `eval_logs(metrics)` to the trainer's callbacks, at the last training step; returns the logs.

    The callbacks are called directly, not through `trainer.log`: that one stamps training-phase fields
    onto every record, and these numbers come after training. `report_to` integrations (TensorBoard,
    W&B, ...) receive them as they receive the training loss; they are also kept in `state.log_history`.
    """
    logs = eval_logs(metrics)
    if logs:
        trainer.state.log_history.append({**logs, "step": trainer.state.global_step})
        trainer.control = trainer.callback_handler.on_log(trainer.args, trainer.state, trainer.control, logs)
    return logs
