"""Exactness, gradients and storage of the sparse-delta layer during training."""

import pytest
import torch
from peft import get_peft_model

import fishertune
from fishertune.tuner import FisherTuneLayer

from .conftest import tiny_vit


def _peft(num_layers=3, **cfg):
    model = tiny_vit(num_layers)
    cfg.setdefault("modules_to_save", ["classifier"])
    return get_peft_model(model, fishertune.FisherTuneConfig(**cfg))


def _layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, FisherTuneLayer)}


def test_values_gradient_equals_dense_gradient_gathered(batch):
    x, y = batch
    model = _peft(init_criterion="magnitude", init_weights=False, delta_max=0.1)
    layers = _layers(model)
    # Reference: the same network with dense effective weights, differentiated by autograd.
    ref = tiny_vit(3)
    ref_mods = dict(ref.named_modules())
    for name, layer in layers.items():
        key = name.removeprefix("base_model.model.")
        ref_mods[key].weight.data.copy_(layer.get_base_layer().weight + layer.get_delta_weight("default"))
        ref_mods[key].weight.requires_grad_(True)
    ref.classifier.load_state_dict(model.base_model.model.classifier.modules_to_save["default"].state_dict())
    model(pixel_values=x, labels=y).loss.backward()
    ref.train(model.training)
    ref(pixel_values=x, labels=y).loss.backward()
    for name, layer in layers.items():
        dense = ref_mods[name.removeprefix("base_model.model.")].weight.grad.reshape(-1)
        idx = layer.fishertune_indices["default"]
        torch.testing.assert_close(layer.fishertune_values["default"].grad, dense[idx], rtol=1e-5, atol=1e-7)


def test_inactive_entries_stay_bitwise_pretrained_under_adamw(batch):
    x, y = batch
    model = _peft(init_criterion="magnitude", delta_max=0.1, delta_min=0.02)
    layers = _layers(model)
    pretrained = {n: m.get_base_layer().weight.detach().clone() for n, m in layers.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    moments_at_activation = []
    prev_active = None
    for t in range(6):
        model.set_schedule_step(t, 5)
        active = {n: m.fishertune_active["default"] for n, m in layers.items()}
        if prev_active is not None:
            # newly activated entries start from zero delta and zero optimizer moments
            for n, m in layers.items():
                new = slice(prev_active[n], active[n])
                v = m.fishertune_values["default"]
                assert torch.all(v.detach()[new] == 0)
                st = opt.state.get(v, {})
                if st:
                    moments_at_activation.append(
                        bool(torch.all(st["exp_avg"][new] == 0) and torch.all(st["exp_avg_sq"][new] == 0))
                    )
        prev_active = active
        model(pixel_values=x, labels=y).loss.backward()
        opt.step()
        opt.zero_grad()
    assert moments_at_activation and all(moments_at_activation)
    model.eval()
    for n, m in layers.items():
        w_eff = m.get_base_layer().weight.detach().reshape(-1).clone()
        n_act = m.fishertune_active["default"]
        idx = m.fishertune_indices["default"]
        w_eff.index_add_(0, idx[:n_act], m.fishertune_values["default"].detach()[:n_act])
        untouched = torch.ones_like(w_eff, dtype=torch.bool)
        untouched[idx[:n_act]] = False
        assert torch.equal(w_eff[untouched], pretrained[n].reshape(-1)[untouched])
        assert torch.equal(m.fishertune_values["default"].detach()[n_act:], torch.zeros(idx.numel() - n_act))
        assert torch.equal(m.get_base_layer().weight, pretrained[n])  # the base weight itself never moves
    assert sum(int((m.fishertune_values["default"].detach() != 0).sum()) for m in layers.values()) > 0


def test_storage_is_sparse_and_empty_layers_hold_nothing(batch):
    model = _peft(init_criterion=None)
    layers = _layers(model)
    # before selection: no trainable backbone state at all
    assert all(len(m.fishertune_values) == 0 for m in layers.values())
    names = list(layers)
    # only the last block's fc2 gets entries: score it above everything else
    scores = {
        n.removeprefix("base_model.model."): torch.zeros_like(m.get_base_layer().weight) for n, m in layers.items()
    }
    last = names[-1].removeprefix("base_model.model.")
    scores[last] = torch.ones_like(scores[last])
    model.select(scores)
    n_alloc = model.num_allocated()
    assert n_alloc == round(0.05 * model.num_targeted())
    for n, m in layers.items():
        if n == names[-1]:
            assert m.fishertune_values["default"].numel() == n_alloc
            assert m.fishertune_indices["default"].dtype == torch.int32  # int32 wherever it addresses the weight
            assert "fishertune_indices.default" in dict(m.named_buffers())  # a buffer: moves and saves with the model
        else:
            assert "default" not in m.fishertune_values and "default" not in m.fishertune_indices
        assert not m.get_base_layer().weight.requires_grad
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("fishertune_values" in n or "modules_to_save" in n for n in trainable)


def test_backward_stops_below_the_lowest_tuned_block(batch):
    x, y = batch
    model = _peft(num_layers=3, init_criterion=None)
    layers = _layers(model)
    scores = {
        n.removeprefix("base_model.model."): torch.zeros_like(m.get_base_layer().weight) for n, m in layers.items()
    }
    for n in scores:
        if ".layers.2." in n:
            scores[n] = torch.rand_like(scores[n]) + 1
    model.select(scores)
    blocks = model.base_model.model.vit.layers
    seen = []
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda mod, args, i=i: seen.append((i, args[0].requires_grad)))
    grads_into = []
    for i, block in enumerate(blocks):
        block.register_full_backward_hook(lambda mod, gi, go, i=i: grads_into.append(i))
    model.train()
    model(pixel_values=x, labels=y).loss.backward()
    assert dict(seen) == {0: False, 1: False, 2: False}  # block 2's input needs no grad
    assert grads_into == [2]  # only the tuned block is differentiated; nothing flows below it


def test_selection_counts_and_nested_active_sets():
    model = _peft(init_criterion="random", delta_max=0.05, delta_min=0.01, seed=3)
    layers = _layers(model)
    n = model.num_targeted()
    assert model.num_allocated() == round(0.05 * n)
    prev = None
    for t in range(11):
        p = model.set_schedule_step(t, 10)
        assert model.num_active() == round(p * n)
        cur = {
            name: set(m.fishertune_indices["default"][: m.fishertune_active["default"]].tolist())
            for name, m in layers.items()
        }
        if prev is not None:
            assert all(prev[k] <= cur[k] for k in cur)
        prev = cur
    with pytest.raises(ValueError, match="delta_max"):
        model.set_active_fraction(0.06)


def test_select_requires_every_targeted_layer():
    model = _peft()
    weights = model.fishertune_target_weights()
    partial = {k: w.abs() for k, w in list(weights.items())[:-1]}
    with pytest.raises(KeyError, match="Missing"):
        model.select(partial)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="delta_max must be in"):
        fishertune.FisherTuneConfig(delta_max=0.0)
    with pytest.raises(ValueError, match="lower it or raise delta_max"):
        fishertune.FisherTuneConfig(delta_max=0.05, delta_min=0.1)
    with pytest.raises(ValueError, match="init_criterion"):
        fishertune.FisherTuneConfig(init_criterion="fisher")
