"""What weight decay acts on for the sparse deltas (`sparse_weight_decay`), against hand computations on a 2x2 layer:
"delta" pulls W0 + delta towards W0; "weight" decays W0 + delta itself, as AdamW does for a dense weight."""

import pytest
import torch
from peft import get_peft_model

import fishertune
from fishertune.training import FisherTuneTrainingArguments
from fishertune.training.optimizer import FisherTuneAdamW, build_param_groups, sparse_prefix_hooks

W0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
LR, WD = 0.1, 0.5


def _layer(active: int = 4):
    base = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        base[0].weight.copy_(W0)
    model = get_peft_model(base, fishertune.FisherTuneConfig(target_modules=["0"], delta_max=1.0, delta_min=1.0))
    layer = model.base_model.model[0]
    values = layer.fishertune_values["default"]
    with torch.no_grad():
        values.copy_(torch.tensor([0.2, -0.1, 0.3, 0.4]))  # in rank order: |W0| ranks 3.0, -2.0, 1.0, 0.5
    model.set_active_fraction(active / 4)
    return model, layer, values


def _optimizer(model, decay):
    groups = build_param_groups(model, set(), decoder_lr=LR, backbone_lr=LR, weight_decay=WD)
    counts, bases = sparse_prefix_hooks(model)
    return FisherTuneAdamW(
        groups, active_counts=counts, lr=LR, weight_decay=WD, sparse_weight_decay=decay, base_values=bases
    )


def test_decay_alone_by_hand():
    """Zero gradient: Adam's step is 0, what moves is the decay. 3 of 4 entries active."""
    for decay, expected in (
        ("delta", [0.2 * 0.95, -0.1 * 0.95, 0.3 * 0.95, 0.4]),
        # delta - lr wd (W0 + delta), W0 at the ranked entries 3.0, -2.0, 1.0
        ("weight", [0.2 - 0.05 * 3.2, -0.1 - 0.05 * -2.1, 0.3 - 0.05 * 1.3, 0.4]),
    ):
        model, layer, values = _layer(active=3)
        assert layer.fishertune_indices["default"].tolist() == [3, 1, 0, 2]
        values.grad = torch.zeros_like(values)
        _optimizer(model, decay).step()
        torch.testing.assert_close(values.detach(), torch.tensor(expected), rtol=0, atol=1e-7)


def test_weight_decay_on_the_weight_is_dense_adamw_on_the_active_entries():
    model, layer, values = _layer()
    grad = torch.tensor([0.3, -0.7, 0.05, 1.1])
    dense = torch.nn.Parameter(
        W0 + torch.zeros(4).index_put((layer.fishertune_indices["default"],), values.detach()).reshape(2, 2)
    )
    reference = torch.optim.AdamW([dense], lr=LR, weight_decay=WD)
    opt = _optimizer(model, "weight")
    idx = layer.fishertune_indices["default"]
    for _ in range(3):
        values.grad = grad.clone()
        dense.grad = torch.zeros(4).index_put((idx,), grad).reshape(2, 2)
        opt.step()
        reference.step()
    torch.testing.assert_close(W0.reshape(-1)[idx] + values.detach(), dense.detach().reshape(-1)[idx])
    # "delta" moves the same entries by the same Adam step but decays only delta: a different weight
    model_d, _, values_d = _layer()
    opt_d = _optimizer(model_d, "delta")
    for _ in range(3):
        values_d.grad = grad.clone()
        opt_d.step()
    assert not torch.allclose(values_d.detach(), values.detach())


def test_option_is_validated_and_reaches_the_trainer(tmp_path):
    model, _, _ = _layer()
    groups = build_param_groups(model, set(), decoder_lr=LR, backbone_lr=LR, weight_decay=WD)
    with pytest.raises(ValueError, match="needs the pretrained W0"):
        FisherTuneAdamW(groups, lr=LR, weight_decay=WD, sparse_weight_decay="weight")
    with pytest.raises(ValueError, match="sparse_weight_decay must be one of"):
        FisherTuneAdamW(groups, lr=LR, sparse_weight_decay="both")
    with pytest.raises(ValueError, match="sparse_weight_decay must be one of"):
        FisherTuneTrainingArguments(output_dir=str(tmp_path), use_cpu=True, sparse_weight_decay="both")
    assert FisherTuneTrainingArguments(output_dir=str(tmp_path), use_cpu=True).sparse_weight_decay == "delta"
