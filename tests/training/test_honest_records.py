"""What the trainer records is what happened: more estimation batches asked for than the data holds is logged
and recorded as the number used; `evaluate()` returns its metrics only (no training-phase fields)."""

from __future__ import annotations

import json
import logging

from fishertune.outputs import SELECTION_NAME

from ._tiny import TinySegDataset, make_trainer


def test_estimation_batches_beyond_the_data_are_recorded_as_used(tmp_path, caplog):
    trainer = make_trainer(tmp_path, estimation_batches=100)  # 16 samples / 4 per batch: 4 batches
    with caplog.at_level(logging.WARNING):
        trainer.train()
    entry = next(e for e in trainer.state.log_history if e.get("phase") == 2.0)
    assert entry["estimation_batches"] == 4.0 and entry["estimation_batches_requested"] == 100.0
    assert "estimation_batches=100 asks for more batches" in caplog.text
    assert json.loads((tmp_path / SELECTION_NAME).read_text())["estimation_batches"] == 4.0


def test_evaluate_returns_metrics_only(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, warmup_phase_steps=1, estimation_batches=1)
    trainer.train()
    metrics = trainer.evaluate(TinySegDataset(n=4, seed=1))
    assert metrics and all(k.startswith("eval_") or k == "epoch" for k in metrics), sorted(metrics)
