"""Rein's no-decay rules and the prefix-only AdamW of the sparse deltas."""

import pytest
import torch
from torch import nn

from fishertune.training import FisherTuneAdamW, build_param_groups, no_weight_decay

from ._tiny import tiny_model


def test_no_decay_rules_on_a_real_backbone_and_head():
    model = tiny_model()
    modules = dict(model.named_modules())
    decided = {}
    for name, _ in model.named_parameters():
        mod_name, _, _ = name.rpartition(".")
        decided[name] = no_weight_decay(name, modules[mod_name])
    assert decided["backbone.embeddings.cls_token"] and decided["backbone.embeddings.position_embeddings"]
    assert decided["backbone.embeddings.mask_token"]
    assert decided["backbone.encoder.layer.0.norm1.weight"] and decided["backbone.encoder.layer.0.norm1.bias"]
    assert decided["backbone.encoder.layer.0.attention.q_proj.bias"]
    assert decided["backbone.encoder.layer.0.layer_scale1.lambda1"]
    assert decided["decode_head.batch_norm.weight"] and decided["decode_head.classifier.bias"]
    # weights of linears, convs (the patch projection included) decay
    assert not decided["decode_head.classifier.weight"]
    assert not decided["backbone.embeddings.patch_embeddings.projection.weight"]
    assert not any(v for k, v in decided.items() if k.endswith(("fc1.weight", "fc2.weight", "q_proj.weight")))
    # query and level embeddings of a mask-classification decoder
    for name in ("decoder.level_embed", "decoder.queries_embedder.weight", "decoder.query_feat.weight"):
        assert no_weight_decay(name, nn.Linear(2, 2))


def test_groups_split_backbone_and_decoder_with_their_lrs():
    model = tiny_model()
    backbone = {id(p) for p in model.backbone.parameters()}
    groups = build_param_groups(model, backbone, decoder_lr=1e-3, backbone_lr=1e-5, weight_decay=0.05)
    by_name = {g["group_name"]: g for g in groups}
    assert set(by_name) == {"decoder", "decoder_no_decay", "backbone", "backbone_no_decay"}
    assert by_name["decoder"]["lr"] == 1e-3 and by_name["backbone"]["lr"] == 1e-5
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0 and by_name["decoder"]["weight_decay"] == 0.05
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    assert all(id(p) in backbone for g in groups if g["group_name"].startswith("backbone") for p in g["params"])


def test_fully_active_sparse_group_equals_torch_adamw():
    torch.manual_seed(0)
    ref = nn.Parameter(torch.randn(50))
    ours = nn.Parameter(ref.detach().clone())
    opt_ref = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1)
    opt = FisherTuneAdamW([{"params": [ours], "sparse_prefix": True}], lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(50)
        ref.grad, ours.grad = g.clone(), g.clone()
        opt_ref.step()
        opt.step()
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


def test_inactive_tail_gets_no_decay_no_state_and_late_entries_start_fresh():
    torch.manual_seed(0)
    p = nn.Parameter(torch.zeros(10))
    active = {"n": 4}
    opt = FisherTuneAdamW(
        [{"params": [p], "sparse_prefix": True}], active_counts={p: lambda: active["n"]}, lr=0.1, weight_decay=0.5
    )
    for _ in range(3):
        p.grad = torch.ones(10)  # even a (wrong) gradient on the tail must not move it
        opt.step()
    assert torch.all(p[4:] == 0) and torch.all(p[:4] != 0)
    state = opt.state[p]
    assert state["exp_avg"].numel() == 10 and torch.all(state["exp_avg"][4:] == 0)
    assert state["entry_step"].tolist() == [3.0] * 4 + [0.0] * 6
    # entries activated now take a first Adam step: magnitude lr (bias-corrected), not lr * 3.16
    active["n"] = 6
    before = p.detach().clone()
    p.grad = torch.ones(10)
    opt.step()
    torch.testing.assert_close((p - before)[4:6], torch.full((2,), -0.1), rtol=1e-4, atol=1e-6)
    assert torch.all(p[6:] == 0)
    # the state round-trips through state_dict
    clone = FisherTuneAdamW([{"params": [p], "sparse_prefix": True}], lr=0.1)
    clone.load_state_dict(opt.state_dict())
    assert torch.equal(clone.state[p]["entry_step"], state["entry_step"])


def test_sparse_group_rejects_amsgrad():
    with pytest.raises(ValueError, match="plain AdamW"):
        FisherTuneAdamW([{"params": [nn.Parameter(torch.zeros(2))], "sparse_prefix": True}], amsgrad=True)
