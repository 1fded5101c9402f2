"""The three phases end to end on the tiny light segmenter; baselines through the same trainer."""

import os

import pytest
import torch
from peft import PeftModel
from transformers import TrainerCallback

import fishertune
from fishertune.training.state import SCORES_NAME, SELECTION_NAME
from fishertune.tuner import FisherTuneLayer

from ._tiny import make_trainer, model_state, tiny_model


class Recorder(TrainerCallback):
    """Snapshots around the phase change and what each tuning step trains (runs before the trainer's callbacks)."""

    def __init__(self, t1=3):
        self.t1 = t1
        self.trainer = None
        self.at_t1_end = None
        self.after_selection = None
        self.steps = []
        self.trainable = []

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == self.t1:  # end of warm-up, before the EstimationCallback runs
            self.at_t1_end = model_state(model)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
        layers = [m for m in model.modules() if isinstance(m, FisherTuneLayer)]
        active = sum(m.fishertune_active.get("default", 0) for m in layers)
        grads_ok = all(
            m.fishertune_values["default"].grad is None
            or torch.all(m.fishertune_values["default"].grad[m.fishertune_active["default"] :] == 0)
            for m in layers
            if "default" in m.fishertune_values
        )
        self.steps.append((state.global_step, active, grads_ok))
        if self.trainer is not None:
            self.trainable.append((state.global_step, self.trainer.trainable_backbone_names()))

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step == self.t1:
            self.after_selection = model_state(model)


def test_three_phases_end_to_end(tmp_path):
    rec = Recorder()
    trainer = make_trainer(tmp_path, callbacks=[rec])
    rec.trainer = trainer
    model = trainer.model
    start = model_state(model)
    trainer.train()
    end = model_state(model)
    base_keys = [k for k in start if "base_layer.weight" in k or ("backbone" in k and "fishertune" not in k)]
    dec = [k for k in start if "modules_to_save.default" in k and k.endswith("weight")]
    # phase 1: backbone frozen bitwise, the decoder trained
    assert all(torch.equal(start[k], rec.at_t1_end[k]) for k in base_keys)
    assert any(not torch.equal(start[k], rec.at_t1_end[k]) for k in dec)
    assert all(names == [] for step, names in rec.trainable if step < 3)
    # phase 2: scores + selection, no weight changed (only new zero deltas and their indices appeared)
    assert all(torch.equal(rec.at_t1_end[k], rec.after_selection[k]) for k in rec.at_t1_end)
    new = [k for k in rec.after_selection if k not in rec.at_t1_end]
    assert new and all(torch.all(rec.after_selection[k] == 0) for k in new if "fishertune_values" in k)
    assert os.path.isfile(tmp_path / SCORES_NAME) and os.path.isfile(tmp_path / SELECTION_NAME)
    # phase 3: base weights still untouched, deltas trained, only the allocated entries
    assert all(torch.equal(start[k], end[k]) for k in base_keys if k in end)
    num_targeted, allocated = model.num_targeted(), model.num_allocated()
    assert allocated == round(0.1 * num_targeted)
    assert any(torch.any(end[k] != 0) for k in end if "fishertune_values" in k)
    # the schedule: Eq. 16 before every tuning step, nested and ending at delta_max
    tuning = [(s, a) for s, a, _ in rec.steps if s >= 3]
    expected = [min(allocated, round(fishertune.active_fraction(t, 4, 0.02, 0.1) * num_targeted)) for t in range(5)]
    assert [a for _, a in tuning] == expected and expected[0] < expected[-1] == allocated
    assert all(a == 0 for s, a, _ in rec.steps if s < 3)
    assert all(ok for _, _, ok in rec.steps)  # inactive entries never get a gradient
    tuned = [names for step, names in rec.trainable if step >= 3]
    assert all(names and all("fishertune_values" in n for n in names) for names in tuned)
    # logs: phase, active fraction and trainable entries on every training log
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["phase"] for h in logs] == [1.0] * 3 + [3.0] * 5
    assert [h["trainable_backbone_entries"] for h in logs][3:] == [float(a) for _, a in tuning]
    assert logs[-1]["active_fraction"] == pytest.approx(0.1)
    assert any(h.get("phase") == 2.0 and h["allocated_entries"] == allocated for h in trainer.state.log_history)
    # the optimizer: decoder and sparse groups, allocated-sized state only, one LR curve across the rebuild
    opt = trainer.optimizer.optimizer
    names = [g["group_name"] for g in opt.param_groups]
    assert "backbone_sparse" in names and "decoder" in names and "backbone" not in names
    sparse_state = sum(
        opt.state[p]["exp_avg"].numel() for g in opt.param_groups if g["sparse_prefix"] for p in g["params"]
    )
    assert sparse_state == allocated
    lrs = [h["learning_rate"] for h in logs]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_learning_rates_per_part(tmp_path):
    trainer = make_trainer(
        tmp_path,
        backbone_learning_rate=1e-3,
        decoder_learning_rate=5e-2,
        max_steps=4,
        warmup_phase_steps=1,
        lr_scheduler_type="constant",
    )
    trainer.train()
    lrs = {g["group_name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["backbone_sparse"] == 1e-3 and lrs["decoder"] == 5e-2 and lrs["decoder_no_decay"] == 5e-2


def _backbone_changed(start, end, key_filter=lambda k: True):
    keys = [k for k in start if k.startswith(("backbone.", "base_model.model.backbone.")) and key_filter(k)]
    return {k for k in keys if k in end and not torch.equal(start[k], end[k])}


def test_full_finetuning_baseline(tmp_path):
    trainer = make_trainer(tmp_path, method="full", max_steps=3, warmup_phase_steps=None)
    assert not isinstance(trainer.model, PeftModel)
    start = model_state(trainer.model)
    trainer.train()
    changed = _backbone_changed(start, model_state(trainer.model))
    assert any("fc1.weight" in k for k in changed) and any("q_proj.weight" in k for k in changed)
    assert not os.path.exists(tmp_path / SCORES_NAME)  # no estimation for baselines


def test_full_finetuning_with_decoder_warmup(tmp_path):
    rec = Recorder(t1=2)
    trainer = make_trainer(tmp_path, method="full", max_steps=4, warmup_phase_steps=2, callbacks=[rec])
    start = model_state(trainer.model)
    trainer.train()
    assert not _backbone_changed(start, rec.at_t1_end)
    assert _backbone_changed(start, model_state(trainer.model))
    assert [h["phase"] for h in trainer.state.log_history if "loss" in h] == [1.0, 1.0, 3.0, 3.0]


def test_frozen_baseline_trains_the_decoder_only(tmp_path):
    trainer = make_trainer(tmp_path, method="frozen", max_steps=3, warmup_phase_steps=None)
    start = model_state(trainer.model)
    trainer.train()
    end = model_state(trainer.model)
    assert not _backbone_changed(start, end)
    assert not torch.equal(start["decode_head.classifier.weight"], end["decode_head.classifier.weight"])
    assert all(g["group_name"].startswith("decoder") for g in trainer.optimizer.param_groups)


def test_lora_baseline_and_any_peft_model(tmp_path):
    trainer = make_trainer(tmp_path, method="lora", lora_r=2, max_steps=3, warmup_phase_steps=None)
    assert isinstance(trainer.model, PeftModel)
    start = model_state(trainer.model)
    trainer.train()
    changed = _backbone_changed(start, model_state(trainer.model))
    assert changed and all("lora_" in k for k in changed)
    assert {g["group_name"] for g in trainer.optimizer.param_groups} >= {"backbone", "decoder"}


def test_peft_model_must_match_the_method(tmp_path):
    from peft import get_peft_model

    peft_model = get_peft_model(
        tiny_model(), fishertune.FisherTuneConfig(delta_max=0.2, modules_to_save=["decode_head"])
    )
    with pytest.raises(ValueError, match="FisherTuneConfig of the model says"):
        make_trainer(tmp_path, model=peft_model)  # make_trainer sets delta_min/max = 0.02/0.1
    with pytest.raises(ValueError, match="method='lora'"):
        make_trainer(tmp_path, model=peft_model, method="lora", delta_max=None, delta_min=None)
    trainer = make_trainer(tmp_path, model=peft_model, delta_max=None, delta_min=None, max_steps=4)
    trainer.train()
    assert trainer.model.num_allocated() == round(0.2 * trainer.model.num_targeted())


def test_user_optimizer_is_refused(tmp_path):
    with pytest.raises(ValueError, match="builds .* its own optimizer"):
        model = tiny_model()
        make_trainer(tmp_path, model=model, method="frozen").__class__(
            model=model,
            args=make_trainer(tmp_path, method="frozen").args,
            optimizers=(torch.optim.SGD(model.parameters(), lr=1.0), None),
        )


def test_default_criterion_dr_fim_with_the_variational_estimator(tmp_path):
    # the paper's configuration (DSU-perturbed variational DR-FIM) through the real estimator
    trainer = make_trainer(
        tmp_path,
        criterion="dr_fim",
        estimator="variational",
        fisher_type="true",
        max_steps=2,
        warmup_phase_steps=1,
        estimation_batches=2,
    )
    trainer.train()
    assert trainer.model.num_allocated() == round(0.1 * trainer.model.num_targeted())
    assert trainer.scores is not None and set(trainer.scores) == set(trainer.model.fishertune_target_weights())
