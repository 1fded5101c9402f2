"""Eq. 3 target presets, checked against the module names of the installed transformers."""

import re

import pytest
import transformers as T

from fishertune.backbones import fused_qkv_leaves, get_family
from fishertune.tuner import target_regex

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def _linear_names(model):
    import torch

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


FAMILIES = {
    # name: (model factory, expected leaf suffixes per block, number of blocks)
    "dinov2": (
        lambda: T.Dinov2Model(T.Dinov2Config(**SMALL, intermediate_size=64)),
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1", "mlp.fc2"],
    ),
    "dinov2_swiglu": (
        lambda: T.Dinov2Model(T.Dinov2Config(**SMALL, intermediate_size=64, use_swiglu_ffn=True)),
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    ),
    "vit": (
        lambda: T.ViTModel(T.ViTConfig(**SMALL, intermediate_size=64)),
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1", "mlp.fc2"],
    ),
    "vit_cls": (
        lambda: T.ViTForImageClassification(T.ViTConfig(**SMALL, intermediate_size=64)),
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1", "mlp.fc2"],
    ),
    "vit_mae": (
        lambda: T.ViTMAEModel(T.ViTMAEConfig(**SMALL, intermediate_size=64)),
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1", "mlp.fc2"],
    ),
    "clip": (
        lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**SMALL, intermediate_size=64)),
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc1", "mlp.fc2"],
    ),
    "sam": (
        lambda: T.SamVisionModel(T.SamVisionConfig(**SMALL, mlp_dim=64, output_channels=16, global_attn_indexes=[1])),
        ["attn.qkv", "mlp.lin1", "mlp.lin2"],
    ),
    "eomt": (
        lambda: T.EomtForUniversalSegmentation(T.EomtConfig(**SMALL, intermediate_size=64, num_blocks=1)),
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1", "mlp.fc2"],
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_preset_matches_exactly_the_eq3_set(family):
    factory, leaves = FAMILIES[family]
    model = factory()
    pattern = re.compile(target_regex(model))
    matched = sorted(n for n in _linear_names(model) if pattern.fullmatch(n))
    assert len(matched) == 2 * len(leaves), matched
    for block in (0, 1):
        for leaf in leaves:
            assert sum(n.endswith(f".{block}.{leaf}") for n in matched) == 1, (block, leaf, matched)
    # nothing outside the blocks: no output projection, pooler or head
    assert not any(re.search(r"(o_proj|out_proj|attn\.proj|pooler|mask_head|class_predictor)$", n) for n in matched)


def test_sam_preset_is_a_fused_qkv_family():
    assert get_family("sam_vision_model").fused_qkv == "attn.qkv" and "qkv" in fused_qkv_leaves()


def test_mask2former_decoder_is_never_caught():
    backbone = T.Dinov2Config(
        **SMALL, intermediate_size=64, out_features=["stage1", "stage2"], image_size=32, patch_size=8
    )
    cfg = T.Mask2FormerConfig(
        backbone_config=backbone,
        num_queries=4,
        decoder_layers=2,
        hidden_dim=32,
        mask_feature_size=32,
        feature_size=32,
        encoder_layers=1,
        dim_feedforward=64,
        num_labels=3,
        use_pretrained_backbone=False,
    )
    model = T.Mask2FormerForUniversalSegmentation(cfg)
    names = _linear_names(model)
    decoder = [n for n in names if not n.startswith("model.pixel_level_module.encoder.")]
    # the decoder really does reuse the leaf names the blocks use, so the anchoring matters
    assert any(n.endswith("q_proj") for n in decoder) and any(n.endswith("fc1") for n in decoder)
    pattern = re.compile(target_regex(model))
    matched = [n for n in names if pattern.fullmatch(n)]
    assert len(matched) == 10
    assert all(n.startswith("model.pixel_level_module.encoder.encoder.layer.") for n in matched)


def test_unknown_model_asks_for_target_modules():
    import torch

    with pytest.raises(ValueError, match="target_modules"):
        target_regex(torch.nn.Sequential(torch.nn.Linear(2, 2)))
