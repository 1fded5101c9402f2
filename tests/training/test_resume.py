"""Resuming from a checkpoint of any phase reproduces the uninterrupted run; foreign checkpoints are refused."""

import json
import os

import pytest
import torch
from transformers import TrainerCallback

from fishertune.training.state import SCORES_NAME, STATE_NAME

from ._tiny import make_trainer, model_state, tiny_model

RUN = dict(save_strategy="no", train_sampling_strategy="random", logging_steps=1)
SAVE_AT = (2, 3, 5)  # phase 1, right after phase 2 (T1 = 3), phase 3


class SaveAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in SAVE_AT:
            control.should_save = True


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    trainer = make_trainer(out, callbacks=[SaveAt()], **RUN)
    trainer.train()
    return out, model_state(trainer.model), trainer.state.log_history


def _masks(state):
    return {k: v for k, v in state.items() if "fishertune_indices" in k or "fishertune_ranks" in k}


@pytest.mark.parametrize("step, phase", [(2, 1), (3, 3), (5, 3)])  # phase 1, right after phase 2, phase 3
def test_resume_reproduces_the_uninterrupted_run(full_run, tmp_path, step, phase):
    out, final, history = full_run
    ckpt = os.path.join(out, f"checkpoint-{step}")
    saved = json.load(open(os.path.join(ckpt, STATE_NAME)))
    assert saved["phase"] == phase and saved["global_step"] == step
    assert saved["selected"] == (step >= 3) and os.path.isfile(os.path.join(ckpt, SCORES_NAME)) == (step >= 3)
    if step >= 3:
        assert saved["num_allocated"] > 0 and 0 < saved["active_fraction"] <= 0.1
    resumed = make_trainer(tmp_path, **RUN)  # a fresh model: nothing allocated until the checkpoint says so
    resumed.train(resume_from_checkpoint=ckpt)
    state = model_state(resumed.model)
    assert set(state) == set(final)
    for k in _masks(final):
        assert torch.equal(state[k], final[k]), k
    for k in final:
        torch.testing.assert_close(state[k], final[k], rtol=1e-5, atol=1e-6, msg=k)
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    resumed_losses = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    for s, loss in resumed_losses.items():
        assert loss == pytest.approx(losses[s], rel=1e-5)
    assert resumed.active_fraction == pytest.approx(0.1)


def test_checkpoint_of_another_config_or_model_is_refused(full_run, tmp_path):
    out = full_run[0]
    ckpt = os.path.join(out, "checkpoint-5")
    with pytest.raises(ValueError, match="delta_max: checkpoint 0.1, now 0.2"):
        make_trainer(tmp_path, delta_max=0.2, **RUN).train(resume_from_checkpoint=ckpt)
    with pytest.raises(ValueError, match="the model differs"):
        make_trainer(tmp_path, model=tiny_model(num_layers=3), **RUN).train(resume_from_checkpoint=ckpt)
    with pytest.raises(ValueError, match="criterion"):
        make_trainer(tmp_path, criterion="random", **RUN).train(resume_from_checkpoint=ckpt)
