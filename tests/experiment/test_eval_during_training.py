"""Evaluation during training through recipes/train.py: eval_strategy / eval_steps score every target (logged per
target and as the target mean), metric_for_best_model picks a checkpoint, load_best_model_at_end loads it (and the
final metrics are its)."""

from __future__ import annotations

import json

from ._helpers import quick_demo_argv, recipe_main

TARGETS = ["synthetic:fog", "synthetic:noise", "synthetic:texture", "synthetic:dark"]


def test_eval_steps_best_metric_and_load_best_model_at_end(tmp_path):
    out = tmp_path / "run"
    recipe_main("train")(
        quick_demo_argv(
            out,
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "3",
            "--save_strategy",
            "steps",
            "--save_steps",
            "3",
            "--metric_for_best_model",
            "mean_mIoU",
            "--load_best_model_at_end",
            "true",
            "--greater_is_better",
            "false",
        )
    )
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_mean_mIoU" in e]
    assert [e["step"] for e in evals] == [3, 6]
    for e in evals:
        assert all(f"eval_{t}_mIoU" in e for t in TARGETS) and e["eval_mean_num_targets"] == 4
        assert "eval_source:synthetic:source_mIoU" in e
    # "best" is the lowest mean here, so that the checkpoint loaded at the end is not simply the last one
    best = min(evals, key=lambda e: e["eval_mean_mIoU"])
    assert best["step"] == 3
    assert state["best_metric"] == best["eval_mean_mIoU"]
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best['step']}")
    metrics = json.loads((out / "metrics.json").read_text())
    # the final evaluation is of the model loaded at the end: the best checkpoint's
    assert abs(metrics["mean"]["mIoU"] - best["eval_mean_mIoU"]) < 1e-3
