"""Non-finite losses and gradients in phases 1 and 3 (issue 17): stop naming the step and tensor, or skip a
bounded number of steps."""

import math
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from fishertune.training import FisherTuneTrainingArguments

from ._tiny import make_trainer, model_state

# make_trainer: 8 steps, T1 = 3 (steps 1-3 are phase 1, steps 4-8 phase 3).


class Poison(TrainerCallback):
    """At the given (1-based) steps: a NaN decoder output ("loss"), or a NaN gradient of one parameter ("grad")."""

    def __init__(self, steps: dict[int, str], param_name: str = None, inf_param_at: int = None):
        self.steps, self.param_name, self.inf_param_at = steps, param_name, inf_param_at
        self.handles, self.model = [], None
        self.before, self.after = {}, {}

    def on_step_begin(self, args, state, control, model=None, **kw):
        step = state.global_step + 1
        self.before[step] = model_state(model)
        kind = self.steps.get(step)
        if kind == "loss":
            head = model.base_model.model.decode_head
            self.handles.append(head.register_forward_hook(lambda m, i, out: out * math.nan))
        elif kind == "grad":
            p = dict(model.named_parameters())[self.param_name]
            self.handles.append(p.register_hook(lambda g: torch.full_like(g, math.nan)))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if self.inf_param_at == state.global_step + 1:  # as if the update overflowed
            with torch.no_grad():
                dict(model.named_parameters())[self.param_name].view(-1)[0] = math.inf

    def on_step_end(self, args, state, control, model=None, **kw):
        for h in self.handles:
            h.remove()
        self.handles = []
        self.after[state.global_step] = model_state(model)


def _decoder_param(trainer) -> str:
    names = [n for n, _ in trainer.model.named_parameters()]
    return next(n for n in names if "modules_to_save" in n and n.endswith("classifier.weight"))


def _finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_in_phase_3_stops_before_anything_is_applied_or_saved(tmp_path):
    poison = Poison({5: "loss"})
    trainer = make_trainer(tmp_path, callbacks=[poison], save_strategy="steps", save_steps=1)
    with pytest.raises(
        FloatingPointError,
        match=r"step 5 \(phase 3\): the loss is nan; first non-finite tensor: "
        r"gradient of base_model\.model\.backbone\..*fishertune_values",
    ):
        trainer.train()
    state = model_state(trainer.model)
    assert _finite(state)
    assert all(torch.equal(state[k], poison.before[5][k]) for k in state)  # step 5 changed nothing
    assert sorted(os.listdir(tmp_path / "checkpoint-4")) and not (tmp_path / "checkpoint-5").exists()
    saved = load_file(tmp_path / "checkpoint-4" / "adapter_model.safetensors")
    assert _finite(saved)


def test_nan_gradient_in_phase_1_names_the_parameter(tmp_path):
    trainer = make_trainer(tmp_path)
    name = _decoder_param(trainer)
    trainer.add_callback(Poison({2: "grad"}, param_name=name))
    with pytest.raises(FloatingPointError, match=rf"step 2 \(phase 1\): first non-finite tensor: gradient of {name}\."):
        trainer.train()


def test_skip_policy_drops_the_bad_steps_and_counts_them(tmp_path):
    trainer = make_trainer(tmp_path, nonfinite_policy="skip", nonfinite_max_skips=2)
    poison = Poison({2: "grad", 6: "loss"}, param_name=_decoder_param(trainer))
    trainer.add_callback(poison)
    with pytest.warns(RuntimeWarning, match=r"step 6 \(phase 3\): the loss is nan.*Step dropped \(2 of at most 2\)"):
        trainer.train()
    assert trainer.state.global_step == 8 and _finite(model_state(trainer.model))
    for step in (2, 6):  # dropped: bitwise nothing changed
        assert all(torch.equal(poison.before[step][k], poison.after[step][k]) for k in poison.after[step])
    for step in (1, 5, 7):  # the others train
        assert any(not torch.equal(poison.before[step][k], poison.after[step][k]) for k in poison.after[step])
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h.get("nonfinite_skipped_steps", 0.0) for h in logs] == [0.0] + [1.0] * 4 + [2.0] * 3
    assert all(math.isfinite(h["loss"]) for h in logs)


def test_skip_policy_is_bounded(tmp_path):
    trainer = make_trainer(tmp_path, nonfinite_policy="skip", nonfinite_max_skips=1)
    trainer.add_callback(Poison({2: "grad", 5: "loss"}, param_name=_decoder_param(trainer)))
    with pytest.raises(FloatingPointError, match=r"step 5 .*More than nonfinite_max_skips=1 steps"):
        trainer.train()


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_an_update_that_leaves_a_parameter_nonfinite_always_stops(tmp_path, policy):
    trainer = make_trainer(tmp_path, nonfinite_policy=policy)
    name = _decoder_param(trainer)
    trainer.add_callback(Poison({}, param_name=name, inf_param_at=3))
    with pytest.raises(FloatingPointError, match=rf"step 3 \(phase 1\): the update made parameter {name} non-finite"):
        trainer.train()


def test_policy_validation():
    with pytest.raises(
        ValueError, match="nonfinite_policy must be one of 'error', 'skip', got .*'skip' drops the step"
    ):
        FisherTuneTrainingArguments(output_dir="x", nonfinite_policy="ignore")
    with pytest.raises(ValueError, match="nonfinite_max_skips must be >= 0"):
        FisherTuneTrainingArguments(output_dir="x", nonfinite_max_skips=-1)
