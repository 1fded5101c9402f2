"""Algorithm 1 with a PeftModel of the default FisherTuneConfig (magnitude selection at injection, issue 17)."""

import torch
from peft import get_peft_model
from transformers import TrainerCallback

import fishertune
from fishertune.tuner import FisherTuneLayer, global_topk

from ._tiny import make_trainer, model_state, tiny_model


class Snap(TrainerCallback):
    def __init__(self):
        self.trainer, self.at_t1, self.trainable = None, None, []

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.trainable.append((state.global_step + 1, self.trainer.trainable_backbone_names()))

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == 3:  # end of warm-up, before estimation and selection
            self.at_t1 = model_state(model)


def test_default_config_model_warms_up_frozen_and_is_reselected_from_the_scores(tmp_path):
    model = get_peft_model(
        tiny_model(), fishertune.FisherTuneConfig(delta_max=0.1, delta_min=0.02, modules_to_save=["decode_head"])
    )
    start = model_state(model)
    magnitude = {
        n: m.fishertune_indices["default"].clone()
        for n, m in model.named_modules()
        if isinstance(m, FisherTuneLayer) and "default" in m.fishertune_indices
    }
    assert magnitude  # the default config allocated at injection
    snap = Snap()
    trainer = make_trainer(tmp_path, model=model, callbacks=[snap], delta_min=None, delta_max=None)
    snap.trainer = trainer
    trainer.train()
    # phase 1: no backbone entry trains (the magnitude deltas stay frozen zeros), only the decoder
    assert all(names == [] for step, names in snap.trainable if step <= 3)
    backbone = [k for k in start if ".backbone." in k and "modules_to_save" not in k]
    assert all(torch.equal(start[k], snap.at_t1[k]) for k in backbone)
    # phase 2: select(scores) replaced the magnitude choice by the top 10% of the estimated scores
    scores = {k: v for k, v in trainer.scores.items()}
    shapes = {n: w.shape for n, w in trainer.model.fishertune_target_weights().items()}
    expected = global_topk(scores, 0.1, shapes=shapes)
    layers = {
        n.removeprefix("base_model.model."): m
        for n, m in trainer.model.named_modules()
        if isinstance(m, FisherTuneLayer)
    }
    for name, sel in expected.items():
        got = (
            layers[name].fishertune_indices["default"].long()
            if "default" in layers[name].fishertune_indices
            else torch.zeros(0, dtype=torch.long)
        )
        assert torch.equal(got, sel.indices)
    assert any(
        not torch.equal(magnitude.get("base_model.model." + n, torch.zeros(0)).long(), s.indices)
        for n, s in expected.items()
    )
    # phase 3 trains the selected deltas
    assert all(names and all("fishertune_values" in n for n in names) for step, names in snap.trainable if step > 3)
