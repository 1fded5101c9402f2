"""The paper's budget as a fixed count (`delta_max_count`): 15.21M entries on any backbone, as Table 1 states it.

The ViT-L test builds DINOv2-L/14 at the paper's sizes on the meta device (no weights are materialised) and runs the
paper config's arguments through the trainer's own `prepare_model`.
"""

import os

import pytest
import torch
from peft import get_peft_model
from torch import nn
from transformers import Dinov2Config, Dinov2Model

import fishertune
from fishertune.experiment import parse_experiment_args
from fishertune.training import prepare_model
from fishertune.tuner.budget import num_backbone_params

from .conftest import tiny_vit
from .test_budget import TARGETED

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "configs")
PAPER_ENTRIES = 15_210_000  # Table 1: "15.21M" tuned parameters for every backbone
VIT_L_PARAMS = 304_368_640  # DINOv2-L/14 (518 px positions), every parameter of the HF Dinov2Model
VIT_L_TARGETED = 24 * (3 * 1024 * 1024 + 2 * 1024 * 4096)  # Eq. 3: q, k, v, fc1, fc2 weights = 276,824,064


def _model(**cfg):
    return get_peft_model(tiny_vit(2), fishertune.FisherTuneConfig(modules_to_save=["classifier"], **cfg))


def test_a_fixed_count_is_allocated_and_ramped_in_entries():
    model = _model(delta_max_count=500, delta_min_count=100)
    config = model.peft_config["default"]
    assert (config.budget_base, config.delta_max, config.delta_min) == ("count", 1.0, 0.2)
    assert model.num_allocated() == 500
    model.set_schedule_step(0, 10)
    assert model.num_active() == 100
    model.set_schedule_step(10, 10)
    assert model.num_active() == 500
    model.set_active_fraction(0.5)
    assert model.num_active() == 250
    # the same count on a deeper backbone: a count, not a share
    deeper = get_peft_model(
        tiny_vit(3), fishertune.FisherTuneConfig(modules_to_save=["classifier"], delta_max_count=500)
    )
    assert deeper.num_allocated() == 500 and deeper.peft_config["default"].delta_min_count == 100  # a fifth


def test_count_ranks_like_the_share_it_equals():
    by_share = _model(delta_max=0.05)  # round(0.05 * 14336) = 717
    by_count = _model(delta_max_count=717)
    for (_, a), (_, b) in zip(by_share.named_modules(), by_count.named_modules()):
        if isinstance(a, fishertune.tuner.FisherTuneLayer) and "default" in a.fishertune_indices:
            assert torch.equal(a.fishertune_indices["default"], b.fishertune_indices["default"])


def test_count_is_validated_and_exclusive_with_the_shares():
    for bad in (
        dict(delta_max_count=100, delta_max=0.05),
        dict(delta_max_count=100, delta_min=0.01),
        dict(delta_max_count=100, budget_base="backbone"),
    ):
        with pytest.raises(ValueError, match="mutually exclusive with the shares"):
            fishertune.FisherTuneConfig(**bad)
    with pytest.raises(ValueError, match="delta_max_count must be a positive number of entries"):
        fishertune.FisherTuneConfig(delta_max_count=0)
    with pytest.raises(ValueError, match="delta_max_count must be a positive number of entries"):
        fishertune.FisherTuneConfig(delta_max_count=0.05)
    with pytest.raises(ValueError, match=r"delta_min_count must be a number of entries in \[0, delta_max_count=10\]"):
        fishertune.FisherTuneConfig(delta_max_count=10, delta_min_count=11)
    with pytest.raises(ValueError, match="delta_min_count=5 needs delta_max_count"):
        fishertune.FisherTuneConfig(delta_min_count=5)
    with pytest.raises(ValueError, match="budget_base='count' is set by delta_max_count"):
        fishertune.FisherTuneConfig(budget_base="count")
    with pytest.raises(ValueError, match=f"delta_max_count={TARGETED + 1} is more than the {TARGETED} targeted"):
        _model(delta_max_count=TARGETED + 1)
    # defaults unchanged for share budgets
    assert (fishertune.FisherTuneConfig().delta_min, fishertune.FisherTuneConfig().delta_max) == (0.01, 0.05)


def test_a_saved_count_config_reloads(tmp_path):
    model = _model(delta_max_count=500, delta_min_count=100)
    model.save_pretrained(str(tmp_path))
    config = fishertune.FisherTuneConfig.from_pretrained(str(tmp_path))
    assert (config.delta_max_count, config.delta_min_count, config.budget_base) == (500, 100, "count")
    assert (config.delta_min, config.delta_max) == (0.2, 1.0)


class _MetaSegmenter(nn.Module):
    """DINOv2-L/14 at the paper's sizes with a one-layer head, built on the meta device (no memory)."""

    decoder_modules = ["head"]

    def __init__(self):
        super().__init__()
        cfg = Dinov2Config(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, patch_size=14, image_size=518
        )
        with torch.device("meta"):
            self.backbone = Dinov2Model(cfg)
            self.head = nn.Linear(1024, 19)


@pytest.mark.parametrize("config", ["gtav_dinov2_large_mask2former", "gtav_eva02_large_mask2former"])
def test_paper_config_selects_the_papers_15_21m_entries_of_vit_l(config, tmp_path):
    _, targs, _ = parse_experiment_args(["--config", config, "--output_dir", str(tmp_path)], configs_dir=CONFIGS)
    model = prepare_model(_MetaSegmenter(), targs)  # the trainer's own wrapping of the config's budget
    assert model.num_targeted() == VIT_L_TARGETED
    cfg = model.peft_config["default"]
    # The number select() allocates (checked against select() on a tiny model above; a real ranking of 277M
    # entries takes minutes on a CPU), and the Eq. 16 ramp's first count.
    assert model._budget("default", cfg.delta_max) == PAPER_ENTRIES
    assert model._budget("default", cfg.delta_min) == PAPER_ENTRIES // 5


def test_backbone_base_is_5_percent_of_vit_l_which_rounds_near_the_paper():
    model = get_peft_model(
        _MetaSegmenter(),
        fishertune.FisherTuneConfig(
            init_criterion=None, budget_base="backbone", delta_max=0.05, modules_to_save=["head"]
        ),
    )
    assert model._budget("default", 0.05) == round(0.05 * VIT_L_PARAMS) == 15_218_432  # "15.22M", the paper: 15.21M
    assert num_backbone_params(model) == VIT_L_PARAMS


def test_training_arguments_carry_the_count_and_refuse_a_share_beside_it(tmp_path):
    from fishertune.training import FisherTuneTrainingArguments

    def args(**kw):
        return FisherTuneTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **kw)

    with pytest.raises(ValueError, match="mutually exclusive with the shares"):
        args(delta_max_count=100, delta_max=0.05)
    model = prepare_model(_MetaSegmenter(), args(delta_max_count=123_456, delta_min_count=0))
    cfg = model.peft_config["default"]
    assert (cfg.delta_max_count, cfg.delta_min_count, cfg.budget_base) == (123_456, 0, "count")
    assert model._budget("default", cfg.delta_max) == 123_456 and model._budget("default", cfg.delta_min) == 0


def test_model_card_states_a_count_budget_in_entries(tmp_path):
    from fishertune.experiment.card import _budget_lines
    from fishertune.training import FisherTuneTrainingArguments

    args = FisherTuneTrainingArguments(output_dir=str(tmp_path), use_cpu=True, delta_max_count=PAPER_ENTRIES)
    assert _budget_lines(args) == {"delta_min": "3,042,000 entries", "delta_max": "15,210,000 entries"}
    shares = FisherTuneTrainingArguments(output_dir=str(tmp_path), use_cpu=True, delta_max=0.04)
    assert _budget_lines(shares) == {"delta_min": 0.01, "delta_max": 0.04}
