"""budget_base (issue 16, item 5): delta_min/delta_max as shares of all backbone parameters, counted by hand."""

from dataclasses import fields

import pytest
import torch
from peft import get_peft_model

import fishertune
from fishertune.tuner import FisherTuneLayer

from .conftest import tiny_vit

# tiny_vit(2): hidden 32, MLP 64, 32x32 images in 8x8 patches (16 + CLS tokens), classifier outside the backbone.
EMBEDDINGS = 32 + 17 * 32 + (32 * 3 * 8 * 8 + 32)  # CLS, positions, patch conv (+ bias) = 6752
BLOCK = 4 * (32 * 32 + 32) + 2 * 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32)  # q, k, v, o; 2 LayerNorms; fc1; fc2 = 8544
BACKBONE = EMBEDDINGS + 2 * BLOCK + 2 * 32  # + the final LayerNorm = 23904
TARGETED = 2 * (3 * 32 * 32 + 32 * 64 + 64 * 32)  # Eq. 3: q, k, v, fc1, fc2 weights = 14336


def _model(**cfg):
    return get_peft_model(tiny_vit(2), fishertune.FisherTuneConfig(modules_to_save=["classifier"], **cfg))


def test_hand_counts():
    assert (EMBEDDINGS, BLOCK, BACKBONE, TARGETED) == (6752, 8544, 23904, 14336)


def test_backbone_base_allocates_a_share_of_all_backbone_parameters():
    model = _model(budget_base="backbone", delta_max=0.05, delta_min=0.01)
    assert model.num_targeted() == TARGETED
    assert model.num_allocated() == 1195  # round(0.05 * 23904) = round(1195.2)
    assert model.set_schedule_step(0, 10) == 0.01
    assert model.num_active() == 239  # round(0.01 * 23904) = round(239.04)
    model.set_active_fraction(0.03)
    assert model.num_active() == 717  # round(0.03 * 23904) = round(717.12)

    targeted = _model(delta_max=0.05, delta_min=0.01)  # today's default base
    assert targeted.num_allocated() == 717  # round(0.05 * 14336) = round(716.8)
    targeted.set_schedule_step(0, 10)
    assert targeted.num_active() == 143  # round(0.01 * 14336) = round(143.36)


def test_backbone_base_ranks_like_the_targeted_base():
    # same global ranking, only the count differs: the 717 entries of the targeted base are the top 717 of the 1195
    by_targeted = _model(delta_max=0.05)
    by_backbone = _model(budget_base="backbone", delta_max=0.05)
    by_backbone.set_active_fraction(0.05 * TARGETED / BACKBONE)  # round(0.0299866 * 23904) = 717
    for (_, a), (_, b) in zip(by_targeted.named_modules(), by_backbone.named_modules()):
        if isinstance(a, FisherTuneLayer) and "default" in a.fishertune_indices:
            n = b.fishertune_active["default"]
            assert torch.equal(a.fishertune_indices["default"], b.fishertune_indices["default"][:n])


def test_second_adapter_counts_the_base_parameters_only():
    model = _model(budget_base="backbone", delta_max=0.05)
    model.add_adapter("other", fishertune.FisherTuneConfig(budget_base="backbone", delta_max=0.02))
    assert model.num_allocated("other") == 478  # round(0.02 * 23904) = round(478.08): the first deltas not counted


def test_budget_beyond_the_targeted_entries_is_refused():
    assert _model(budget_base="backbone", delta_max=0.5997).num_allocated() == 14335  # round(14335.23)
    # round(0.6 * 23904) = round(14342.4) = 14342 > 14336
    with pytest.raises(ValueError, match=r"0.6 of the backbone's 23904 parameters is 14342 entries, more than the"):
        _model(budget_base="backbone", delta_max=0.6)
    with pytest.raises(ValueError, match="budget_base='targeted'"):
        get_peft_model(
            torch.nn.Sequential(torch.nn.Linear(4, 4)),
            fishertune.FisherTuneConfig(target_modules=["0"], budget_base="backbone"),
        )


def test_config_validation_and_help():
    with pytest.raises(ValueError, match="budget_base must be 'targeted' .* or 'backbone'"):
        fishertune.FisherTuneConfig(budget_base="all")
    field = next(f for f in fields(fishertune.FisherTuneConfig) if f.name == "budget_base")
    assert field.default == "targeted" and "backbone" in field.metadata["help"]
