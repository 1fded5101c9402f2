"""budget_base through the training arguments (issue 16, item 5): the trainer's FisherTune adapter counts
delta_max on the base the arguments name, so a recipe can ask for the paper's share of all backbone parameters."""

import pytest

from fishertune.training import FisherTuneTrainingArguments, prepare_model
from fishertune.training.setup import backbone_module

from ._tiny import tiny_model


def _args(tmp_path, **kw):
    return FisherTuneTrainingArguments(output_dir=str(tmp_path), use_cpu=True, criterion="dr_fim", **kw)


def test_backbone_base_reaches_the_adapter(tmp_path):
    model = prepare_model(tiny_model(), _args(tmp_path, budget_base="backbone", delta_max=0.05))
    config = model.peft_config["default"]
    assert config.budget_base == "backbone"
    backbone = sum(p.numel() for p in backbone_module(model).parameters())
    targeted = model.num_targeted()
    assert backbone > targeted
    assert model._budget("default", 0.05) == round(0.05 * backbone)
    # the default base stays the targeted entries
    default = prepare_model(tiny_model(), _args(tmp_path, delta_max=0.05))
    assert default.peft_config["default"].budget_base == "targeted"
    assert default._budget("default", 0.05) == round(0.05 * targeted)


def test_budget_base_is_validated_and_must_agree_with_a_given_adapter(tmp_path):
    with pytest.raises(ValueError, match="budget_base must be 'targeted' .* or 'backbone' .*got 'all'"):
        _args(tmp_path, budget_base="all")
    model = prepare_model(tiny_model(), _args(tmp_path))  # a FisherTune PeftModel on the targeted base
    with pytest.raises(ValueError, match="args.budget_base='backbone' but the FisherTuneConfig"):
        prepare_model(model, _args(tmp_path, budget_base="backbone"))
    assert prepare_model(model, _args(tmp_path, budget_base="targeted")) is model
