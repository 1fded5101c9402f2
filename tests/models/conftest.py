"""Tiny backbones and decoders (hidden 32, 2-4 blocks, 32-48 px) so the suite runs in seconds on CPU."""

import pytest
import torch
import transformers as T

VIT_SHAPE = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=32, patch_size=8)

# Mask2Former reduced everywhere except its structure (3 transformer levels + 1 FPN level).
TINY_M2F = dict(
    num_queries=4, decoder_layers=3, encoder_layers=1, train_num_points=64, feature_size=32, mask_feature_size=32,
    hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32, num_attention_heads=2,
)  # fmt: skip
TINY_EOMT = dict(num_queries=4, num_blocks=1, train_num_points=64)


def tiny_config(family: str) -> T.PreTrainedConfig:
    if family == "vit":
        return T.ViTConfig(**VIT_SHAPE, intermediate_size=64)
    if family == "dinov2":
        return T.Dinov2Config(**VIT_SHAPE, mlp_ratio=2)
    if family == "dinov2_reg":
        return T.Dinov2WithRegistersConfig(**VIT_SHAPE, mlp_ratio=2, num_register_tokens=2)
    if family == "clip":
        return T.CLIPVisionConfig(**VIT_SHAPE, intermediate_size=64)
    if family == "vit_mae":
        return T.ViTMAEConfig(**VIT_SHAPE, intermediate_size=64, mask_ratio=0.75)
    raise KeyError(family)


FAMILIES = ["vit", "dinov2", "dinov2_reg", "clip", "vit_mae"]


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 48, generator=g)


@pytest.fixture
def labels():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 5, (2, 32, 48), generator=g)
    y[0, :8] = 255
    return y
