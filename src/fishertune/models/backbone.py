"""Shared ViT-backbone plumbing: build/load an HF ViT, find its blocks, tap patch tokens.

Every segmenter of the package keeps its backbone at `model.backbone`, so that
`fishertune.tuner.target_regex(model)` finds it and `backbone_blocks` / `patch_tokens` work
on any of them (DINOv2 with or without registers, ViT, CLIP vision, ViT-MAE, and timm's EVA02
through `fishertune.baselines.Eva02Backbone`; timm itself is imported only when an EVA02 is created).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, CLIPVisionModel, PreTrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

# The wrapper module needs no timm; only creating an EVA02 imports it.
from ..baselines.eva02 import TIMM_PREFIX, Eva02Backbone, timm_eva02_name
from ..tuner import num_prefix_tokens  # noqa: F401  (re-exported: the count lives with the backbone presets)

# Where each supported family keeps its blocks (tried in order; a generic search follows).
_BLOCK_PATHS = ("encoder.layer", "encoder.layers", "layers", "vision_model.encoder.layers", "blocks", "eva.blocks")

#: Rein's taps for DINOv2-L/14 (1-based block indices), used by the paper's Mask2Former.
REIN_DINOV2_LARGE_TAPS = (8, 12, 16, 24)
#: Rein's resampling factors to strides 4, 8, 16, 32 of the tapped stride-16 maps.
REIN_SCALES = (4.0, 2.0, 1.0, 0.5)


def vision_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """The vision tower's config of `config` (CLIP's `vision_config`, otherwise `config` itself)."""
    return getattr(config, "vision_config", None) or config


def default_taps(num_layers: int, num_taps: int = 4) -> tuple[int, ...]:
    """`num_taps` evenly spaced 1-based block indices ending at the last block (12 blocks: 3, 6, 9, 12)."""
    return tuple(max(1, math.ceil(num_layers * (i + 1) / num_taps)) for i in range(num_taps))


def check_taps(taps: Sequence[int], num_layers: int) -> tuple[int, ...]:
    taps = tuple(int(t) for t in taps)
    if not taps or any(t < 1 or t > num_layers for t in taps):
        raise ValueError(
            f"taps must be 1-based block indices in [1, {num_layers}], got {taps}; e.g. {default_taps(num_layers)}."
        )
    return taps


def backbone_blocks(backbone: nn.Module) -> nn.ModuleList:
    """The `nn.ModuleList` of transformer blocks of an HF ViT backbone (also inside a PEFT wrapper)."""
    for path in _BLOCK_PATHS:
        try:
            blocks = backbone.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList):
            return blocks
    num_layers = getattr(getattr(backbone, "config", None), "num_hidden_layers", None)
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and (num_layers is None or len(module) == num_layers):
            return module
    raise ValueError(f"No block list found in {type(backbone).__name__}; looked for {_BLOCK_PATHS}.")


def patch_tokens(
    hidden_state: torch.Tensor, backbone: nn.Module, image_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Drop the CLS and register tokens of `hidden_state` [B, N, C] and fold the rest to [B, C, h, w].

    Args:
        hidden_state (`torch.Tensor`): a block output, `[batch, prefix + h * w, channels]`.
        backbone (`nn.Module`): the backbone (or its config) that produced it; gives the patch size
            and the number of prefix tokens.
        image_size (`tuple[int, int]`, *optional*): the input's pixel size `(H, W)`; needed for
            non-square inputs. Without it the patch grid is assumed square.
    """
    config = vision_config(backbone if isinstance(backbone, PreTrainedConfig) else backbone.config)
    tokens = hidden_state[:, num_prefix_tokens(config) :, :]
    batch, n, channels = tokens.shape
    if image_size is None:
        h = w = math.isqrt(n)
    else:
        patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        h, w = image_size[0] // patch, image_size[1] // patch
    if h * w != n:
        raise ValueError(f"{n} patch tokens do not fold to a {h}x{w} grid; pass image_size=(H, W) of the input.")
    return tokens.transpose(1, 2).reshape(batch, channels, h, w)


def is_eva02(backbone) -> bool:
    """Whether `backbone` (a model, config or `"timm:..."` string) is a timm EVA02."""
    if isinstance(backbone, (str, os.PathLike)):
        return str(backbone).startswith(TIMM_PREFIX)
    config = backbone if isinstance(backbone, PreTrainedConfig) else getattr(backbone, "config", None)
    return getattr(config, "model_type", None) == "eva02"


def build_backbone(config: PreTrainedConfig) -> nn.Module:
    """A randomly initialised backbone for `config`, without pooler (unused; it would stall DDP)."""
    config = vision_config(config)
    if config.model_type == "eva02":
        model = Eva02Backbone.from_config(config)
        # Keep timm's own init: the segmenter's post_init would otherwise redraw every timm Linear and
        # LayerNorm with HF's generic init (HF backbones keep theirs as PreTrainedModels). Not on the meta
        # device (from_pretrained): there the generic init must still fill weights a checkpoint lacks.
        if next(model.parameters()).device.type != "meta":
            for module in model.modules():
                module._is_hf_initialized = True
        return model
    if config.model_type in ("clip_vision_model", "clip"):
        return CLIPVisionModel(config)
    if config.model_type == "vit_mae":
        config.mask_ratio = 0.0  # segmentation needs every patch
    model_cls = MODEL_MAPPING[type(config)]
    has_pooler_arg = "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters
    kwargs = {"add_pooling_layer": False} if has_pooler_arg else {}
    return model_cls(config, **kwargs)


def load_backbone(
    backbone: str | os.PathLike | nn.Module | PreTrainedConfig, **from_pretrained_kwargs
) -> tuple[PreTrainedConfig, nn.Module | None]:
    """Resolve a `from_backbone` argument to `(backbone config, loaded model or None)`.

    A path or Hub id is loaded with real weights (`AutoModel.from_pretrained`; a CLIP checkpoint
    gives its vision tower); `"timm:<eva02 name>"` creates a timm EVA02 with its pretrained weights
    (`from_pretrained_kwargs` then go to `timm.create_model`); a model (HF or `Eva02Backbone`) is
    used as is; a config gives `None` (random init later).
    """
    if isinstance(backbone, PreTrainedConfig):
        return vision_config(backbone), None
    if is_eva02(backbone):
        if isinstance(backbone, (str, os.PathLike)):
            name = timm_eva02_name(str(backbone))
            backbone = Eva02Backbone.from_timm(name, pretrained=True, **from_pretrained_kwargs)
        return backbone.config, backbone
    if isinstance(backbone, PreTrainedModel):
        if getattr(backbone.config, "vision_config", None) is not None and hasattr(backbone, "vision_model"):
            raise ValueError("Pass the vision tower (e.g. CLIPVisionModel), not the full multimodal model.")
        return backbone.config, backbone
    if isinstance(backbone, nn.Module):
        raise TypeError(
            f"Unsupported backbone module {type(backbone).__name__}: pass an HF ViT model (DINOv2, ViT, CLIP "
            "vision, ViT-MAE), a fishertune.baselines.Eva02Backbone, a config, a path / Hub id or 'timm:eva02_...'."
        )
    config = AutoConfig.from_pretrained(backbone)
    if config.model_type == "clip":
        model = CLIPVisionModel.from_pretrained(backbone, **from_pretrained_kwargs)
    else:
        model_cls = MODEL_MAPPING[type(config)]
        kwargs = dict(from_pretrained_kwargs)
        if "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters:
            kwargs.setdefault("add_pooling_layer", False)
        model = model_cls.from_pretrained(backbone, **kwargs)
    if model.config.model_type == "vit_mae":
        model.config.mask_ratio = 0.0
    return model.config, model


def tapped_features(
    backbone: nn.Module, pixel_values: torch.Tensor, taps: Sequence[int]
) -> list[torch.Tensor]:
    """Patch-token maps [B, C, h, w] of the 1-based `taps` blocks (no final norm, prefix tokens dropped).

    Position embeddings are interpolated to the input size, so non-square and larger inputs work.
    """
    config = vision_config(backbone.config)
    params = inspect.signature(backbone.forward).parameters
    kwargs = {"output_hidden_states": True, "return_dict": True}
    if "interpolate_pos_encoding" in params:  # DINOv2 always interpolates and has no flag
        kwargs["interpolate_pos_encoding"] = True
    if config.model_type == "vit_mae":
        # ViT-MAE shuffles patches by `noise` even at mask_ratio 0; increasing noise keeps the order.
        patch = config.patch_size
        n = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
        kwargs["noise"] = torch.arange(n, device=pixel_values.device, dtype=torch.float32).expand(len(pixel_values), n)
    outputs = backbone(pixel_values=pixel_values, **kwargs)
    if getattr(outputs, "hidden_states", None) is None:
        # transformers 5 records hidden states through a per-class registry filled in PreTrainedModel.__init__;
        # a backbone unpickled in a process that never built one skips it and returns none, silently.
        raise RuntimeError(
            f"{type(backbone).__name__} returned no hidden_states although output_hidden_states=True was passed. "
            "If the model was unpickled (torch.load of a whole module), build it with from_pretrained / "
            "from_config and load a state dict instead, or construct one instance of its class first."
        )
    # hidden_states[i] is the raw output of block i (1-based), before the final layer norm.
    size = tuple(pixel_values.shape[-2:])
    return [patch_tokens(outputs.hidden_states[t], config, size) for t in taps]


def resample(features: Sequence[torch.Tensor], scales: Sequence[float]) -> list[torch.Tensor]:
    """Rein's pyramid: bilinear resampling by fixed factors (x4, x2, x1, x0.5); x1 is left untouched."""
    return [
        f if s == 1 else F.interpolate(f, scale_factor=s, mode="bilinear", align_corners=False)
        for f, s in zip(features, scales)
    ]
