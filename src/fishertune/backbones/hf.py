"""The transformers ViT families: DINOv2 (with and without registers), DINOv3 ViT, ViT, ViT-MAE, CLIP vision,
SAM vision and EoMT.
Target patterns are written against the module names of transformers 5 (checked against the installed
version by ``tests/backbones/test_registry.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionModel, EomtForUniversalSegmentation, PreTrainedConfig

from .auto import cls_and_registers, default_tap_kwargs, no_prefix
from .registry import BackboneFamily, register_family

# Dinov2Model / Dinov2Backbone: encoder.layer.N.{attention.{q,k,v}_proj, mlp.fc1/fc2 or the SwiGLU FFN}
_DINOV2 = r"encoder\.layer\.\d+\.(attention\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj))"
# ViTModel / ViTMAEModel: layers.N.{attention.{q,k,v}_proj, mlp.fc1/fc2}
_VIT = r"layers\.\d+\.(attention\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2))"


def _build_clip(config: PreTrainedConfig) -> nn.Module:
    return CLIPVisionModel(config)


def _load_clip(name_or_path, config: PreTrainedConfig, **kwargs) -> nn.Module:
    # A full CLIP checkpoint gives its vision tower; CLIPVisionModel has no pooler argument to drop.
    return CLIPVisionModel.from_pretrained(name_or_path, **kwargs)


def _mae_keep_every_patch(config: PreTrainedConfig) -> None:
    config.mask_ratio = 0.0  # segmentation needs every patch


def _mae_tap_kwargs(backbone: nn.Module, pixel_values: torch.Tensor) -> dict:
    # ViT-MAE shuffles patches by `noise` even at mask_ratio 0; increasing noise keeps the order.
    patch = backbone.config.patch_size
    n = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
    noise = torch.arange(n, device=pixel_values.device, dtype=torch.float32).expand(len(pixel_values), n)
    return {**default_tap_kwargs(backbone, pixel_values), "noise": noise}


def _build_eomt(config: PreTrainedConfig) -> nn.Module:
    # transformers maps EomtConfig to no AutoModel: the segmentation model is the backbone.
    return EomtForUniversalSegmentation(config)


def _load_eomt(name_or_path, config: PreTrainedConfig, **kwargs) -> nn.Module:
    return EomtForUniversalSegmentation.from_pretrained(name_or_path, **kwargs)


def _eomt_prefix(config: PreTrainedConfig, num_blocks: int | None = None) -> int | list[int]:
    """CLS + registers, plus EoMT's ``num_queries`` query tokens in front of the last ``config.num_blocks``."""
    prefix = cls_and_registers(config)
    if num_blocks is None:
        return prefix
    first_query_block = num_blocks - int(config.num_blocks)
    return [prefix + (int(config.num_queries) if i >= first_query_block else 0) for i in range(num_blocks)]


HF_FAMILIES = (
    BackboneFamily(name="dinov2", target_pattern=_DINOV2, block_paths=("encoder.layer",)),
    BackboneFamily(name="dinov2_with_registers", target_pattern=_DINOV2, block_paths=("encoder.layer",)),
    # DINOv3ViTModel: model.layer.N.{attention.{q,k,v}_proj, mlp.{up,down}_proj (+ gate_proj when gated)};
    # RoPE positions (any crop size), CLS + registers in front of the patches.
    BackboneFamily(
        name="dinov3_vit",
        target_pattern=r"model\.layer\.\d+\.(attention\.(q_proj|k_proj|v_proj)|mlp\.(gate_proj|up_proj|down_proj))",
        block_paths=("model.layer",),
    ),
    BackboneFamily(name="vit", target_pattern=_VIT, block_paths=("layers",)),
    BackboneFamily(
        name="vit_mae",
        target_pattern=_VIT,
        block_paths=("layers",),
        prepare_config=_mae_keep_every_patch,
        tap_kwargs=_mae_tap_kwargs,
    ),
    # CLIPVisionModel: encoder.layers.N.{self_attn.{q,k,v}_proj, mlp.fc1/fc2}; a "clip" checkpoint loads its tower.
    BackboneFamily(
        name="clip_vision_model",
        model_types=("clip",),
        target_pattern=r"encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2))",
        block_paths=("encoder.layers",),
        build=_build_clip,
        load=_load_clip,
    ),
    # SamVisionModel: fused qkv, mlp.lin1/lin2; blocks output [B, H, W, C] without prefix tokens.
    BackboneFamily(
        name="sam_vision_model",
        target_pattern=r"(vision_encoder\.)?layers\.\d+\.(attn\.qkv|mlp\.(lin1|lin2))",
        block_paths=("vision_encoder.layers", "layers"),
        fused_qkv="attn.qkv",
        prefix_tokens=no_prefix,
    ),
    # EomtForUniversalSegmentation: the ViT blocks only, never mask_head / class_predictor.
    BackboneFamily(
        name="eomt",
        target_pattern=(r"layers\.\d+\.(attention\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj))"),
        block_paths=("layers",),
        prefix_tokens=_eomt_prefix,
        build=_build_eomt,
        load=_load_eomt,
    ),
)

for _family in HF_FAMILIES:
    register_family(_family, replace=True)  # replace: a reloaded module registers its entries again
