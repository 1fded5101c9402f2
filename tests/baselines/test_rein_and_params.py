"""Rein's query link on the package's Mask2Former, and the parameter table against Rein's Table 4."""

import pytest
import torch

from fishertune.baselines import (
    AdaptFormerConfig,
    ReinConfig,
    adaptformer_num_parameters,
    apply_rein,
    count_trainable,
    load_method_state,
    parameter_table,
    rein_num_parameters,
    save_method_state,
    vpt_num_parameters,
)

from .conftest import DEPTH, DIM, FFN, tiny_backbone

M2F = dict(
    num_queries=4, decoder_layers=3, encoder_layers=1, train_num_points=16, feature_size=32, mask_feature_size=32,
    hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32, num_attention_heads=2,
)  # fmt: skip


def _m2f(seed=0):
    from fishertune.models import PyramidMask2Former

    torch.manual_seed(seed)
    backbone = tiny_backbone("dinov2").config
    backbone.num_hidden_layers = 4  # the pyramid needs >= 3 taps
    return PyramidMask2Former.from_backbone(backbone, num_labels=3, **M2F).eval()


def test_paper_counts_for_dinov2_large():
    # Rein's Table 4 (DINOv2-L, 1024 x 24): Rein 2.99M, AdaptFormer 3.17M, VPT 3.69M trainable.
    assert rein_num_parameters(1024, 24) == 2_990_081
    assert adaptformer_num_parameters(1024, 24) == 3_171_840
    assert vpt_num_parameters(1024, 24) == 3_686_400


def test_rein_links_tokens_to_mask2former_queries(tmp_path):
    pytest.importorskip("fishertune.models")
    model = apply_rein(_m2f(), ReinConfig(token_length=4, lora_dim=2, query_dims=32))
    rein = model.backbone.rein_tokens
    head = model.transformer_module
    assert torch.equal(head.queries_embedder.weight, rein.queries())
    assert torch.equal(head.queries_features.weight, head.queries_features.rein_querys2feat(rein.queries()))
    # Backbone side: Rein's formula; the head-side querys2feat is decoder and stays trainable.
    backbone_side = sum(p.numel() for n, p in model.backbone.named_parameters() if p.requires_grad)
    assert backbone_side == rein_num_parameters(DIM, 4, ReinConfig(token_length=4, lora_dim=2, query_dims=32))
    x = torch.randn(2, 3, 28, 28)
    out = model(pixel_values=x)
    out.masks_queries_logits[-1].sum().backward()
    assert rein.transform.weight.grad.abs().sum() > 0 and rein.merge.weight.grad.abs().sum() > 0
    save_method_state(model, tmp_path)
    fresh = _m2f()
    fresh.load_state_dict(model.state_dict(), strict=False)  # decoder weights come from the full checkpoint
    load_method_state(fresh, tmp_path)
    torch.testing.assert_close(
        fresh(pixel_values=x).masks_queries_logits[-1], model(pixel_values=x).masks_queries_logits[-1], rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="num_queries"):
        apply_rein(_m2f(), ReinConfig(token_length=5, lora_dim=2, query_dims=32))


def test_parameter_table_matches_hand_formulas():
    model = tiny_backbone("dinov2")
    rows = {r["method"]: r for r in parameter_table(model)}
    targeted = DEPTH * (3 * DIM * DIM + 2 * DIM * FFN)  # q, k, v, fc1, fc2 weights; no biases
    assert rows["fishertune"]["trainable"] == round(0.05 * targeted)
    assert rows["lora"]["trainable"] == DEPTH * 16 * (3 * (DIM + DIM) + 2 * (DIM + FFN))
    assert rows["adaptformer"]["trainable"] == DEPTH * (2 * DIM * 64 + 64 + DIM)
    assert rows["vpt"]["trainable"] == DEPTH * 150 * DIM and rows["vqt"]["trainable"] == DEPTH * 10 * DIM
    assert rows["rein"]["trainable"] == rein_num_parameters(DIM, DEPTH)
    total = sum(p.numel() for p in model.parameters())
    assert rows["lora"]["percent_of_backbone"] == pytest.approx(100 * rows["lora"]["trainable"] / total)
    # The table is the same once a method is installed (its own parameters are not backbone size).
    from fishertune.baselines import apply_method

    apply_method(model, AdaptFormerConfig())
    assert parameter_table(model) == list(rows.values())
    assert count_trainable(model) == rows["adaptformer"]["trainable"]
