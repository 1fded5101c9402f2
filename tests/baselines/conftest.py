"""Tiny HF ViTs (hidden 32, 2 blocks, 28 px, patch 14 -> 4 patches) built from configs, no Hub access."""

import pytest
import torch
import transformers as T

SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14)
DIM, DEPTH, FFN = 32, 2, 64
#: timm EVA02 kwargs for the tests in .venv-eva02 (28 px, patch 14 -> 4 patches); override `depth` where needed.
EVA02_TINY = dict(img_size=28, embed_dim=32, depth=2, num_heads=2)
#: Mask2Former reduced everywhere except its structure (3 transformer levels + 1 FPN level).
TINY_M2F = dict(
    num_queries=4, decoder_layers=3, encoder_layers=1, train_num_points=64, feature_size=32, mask_feature_size=32,
    hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32, num_attention_heads=2,
)  # fmt: skip


def tiny_backbone(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    shape = {**SHAPE, **overrides}
    if family == "dinov2":
        model = T.Dinov2Model(T.Dinov2Config(**shape, mlp_ratio=FFN // shape["hidden_size"]))
    elif family == "dinov2_reg":
        model = T.Dinov2WithRegistersModel(
            T.Dinov2WithRegistersConfig(**shape, mlp_ratio=FFN // shape["hidden_size"], num_register_tokens=2)
        )
    elif family == "vit":
        model = T.ViTModel(T.ViTConfig(**shape, intermediate_size=FFN), add_pooling_layer=False)
    elif family == "clip":
        model = T.CLIPVisionModel(T.CLIPVisionConfig(**shape, intermediate_size=FFN))
    elif family == "vit_mae":
        model = T.ViTMAEModel(T.ViTMAEConfig(**shape, intermediate_size=FFN, mask_ratio=0.0))
    else:
        raise KeyError(family)
    return model.eval()


def run(model: torch.nn.Module, x: torch.Tensor, **kw):
    """Forward with the family's quirks: ViT-MAE shuffles patches by `noise`, so fix it."""
    if model.config.model_type == "vit_mae":
        kw["noise"] = torch.arange(4, dtype=torch.float32).expand(len(x), 4)
    return model(pixel_values=x, **kw)


@pytest.fixture
def images():
    return torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(1))
