"""FisherTuneTrainer's staged checkpoints in the library path: `best_model_checkpoint` names final folders (in the
trainer and in each saved trainer_state.json), `train(resume_from_checkpoint=True)` takes the newest complete
checkpoint, a killed writer's staging folder is removed at the next start, and changed settings are refused."""

import json
import logging
import os

import pytest

from fishertune.atomic import TMP_PREFIX
from fishertune.training.state import STATE_NAME

from ._tiny import TinySegDataset, make_trainer, tiny_model

SAVE = dict(save_strategy="steps", save_steps=2, logging_steps=1)


def test_best_model_checkpoint_names_final_folders(tmp_path):
    from fishertune.training import FisherTuneTrainer

    args = make_trainer(tmp_path, **SAVE).args
    args.eval_strategy, args.eval_steps, args.metric_for_best_model = "steps", 2, "loss"
    args.load_best_model_at_end, args.save_total_limit, args.greater_is_better = True, 1, False
    trainer = FisherTuneTrainer(
        model=tiny_model(), args=args, train_dataset=TinySegDataset(), eval_dataset=TinySegDataset(4, seed=1)
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and os.path.dirname(best) == str(tmp_path) and os.path.isdir(best)
    recorded = [
        json.load(open(os.path.join(c, "trainer_state.json")))["best_model_checkpoint"]
        for c in sorted(tmp_path.glob("checkpoint-*"))
    ]
    assert recorded and all(os.path.dirname(r) == str(tmp_path) for r in recorded), recorded
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_train_true_takes_the_newest_complete_checkpoint(tmp_path, caplog):
    make_trainer(tmp_path, max_steps=6, **SAVE).train()
    os.remove(tmp_path / "checkpoint-6" / STATE_NAME)  # a save that did not finish
    stale = tmp_path / f"{TMP_PREFIX}0123456789ab-checkpoint-7"
    (stale / "checkpoint-7").mkdir(parents=True)
    resumed = make_trainer(tmp_path, max_steps=6, **SAVE)
    with caplog.at_level(logging.WARNING):
        resumed.train(resume_from_checkpoint=True)
    assert f"Resuming from {tmp_path / 'checkpoint-4'}, the newest complete checkpoint" in caplog.text
    assert f"skipped the incomplete checkpoint-6 (no {STATE_NAME})" in caplog.text
    assert not stale.exists() and "left by a save that did not finish" in caplog.text
    assert (tmp_path / "checkpoint-6" / STATE_NAME).is_file()  # saved again, complete


def test_changed_setting_is_refused_or_allowed_by_name(tmp_path, caplog):
    first = make_trainer(tmp_path, max_steps=6, **SAVE)
    first.run_settings = {"dataset": "a"}
    first.train()
    phase3 = str(tmp_path / "checkpoint-4")  # T1 = 3: its optimizer state holds the tuning groups
    again = make_trainer(tmp_path, max_steps=6, **SAVE)
    again.run_settings = {"dataset": "b"}
    with pytest.raises(ValueError, match="dataset: checkpoint 'a', now 'b'"):
        again.train(resume_from_checkpoint=phase3)
    changed = make_trainer(tmp_path, max_steps=6, weight_decay=0.1, **SAVE)
    changed.run_settings = {"dataset": "a"}
    with pytest.raises(ValueError, match="weight_decay: checkpoint 0.05, now 0.1.*--allow_changed_settings weight_"):
        changed.train(resume_from_checkpoint=phase3)
    allowed = make_trainer(tmp_path, max_steps=6, weight_decay=0.1, allow_changed_settings="weight_decay", **SAVE)
    allowed.run_settings = {"dataset": "a"}
    with caplog.at_level(logging.WARNING):
        allowed.train(resume_from_checkpoint=phase3)
    assert "weight_decay: checkpoint 0.05, now 0.1" in caplog.text
    assert {g["weight_decay"] for g in allowed.optimizer.param_groups} == {0.0, 0.1}  # the new decay, not 0.05


def test_checkpoint_push_sees_the_final_complete_folder(tmp_path, monkeypatch):
    """A checkpoint is pushed (`hub_strategy`) under its final name, complete: never the staging folder."""
    from transformers import Trainer

    import fishertune.hub
    from fishertune.training.checkpoints import missing_parts

    pushed = []
    monkeypatch.setattr(
        Trainer, "init_hf_repo", lambda self, token=None: setattr(self, "hub_model_id", self.args.hub_model_id)
    )
    monkeypatch.setattr(
        fishertune.hub, "push_checkpoint", lambda folder, *a, **k: pushed.append((folder, missing_parts(folder)))
    )
    trainer = make_trainer(tmp_path, max_steps=4, push_to_hub=True, hub_model_id="user/r", **SAVE)
    monkeypatch.setattr(trainer, "push_to_hub", lambda *a, **k: None)
    trainer.train()
    assert pushed == [(str(tmp_path / "checkpoint-2"), []), (str(tmp_path / "checkpoint-4"), [])]
