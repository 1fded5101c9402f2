"""Shared ViT-backbone plumbing: build/load a ViT, tap its patch tokens.

Every segmenter of the package keeps its backbone at `model.backbone`, so that
`fishertune.tuner.target_regex(model)` finds it and `backbone_blocks` / `patch_tokens` work on any of
them. Which backbones are supported, and how each is built, loaded and tapped, is the registry of
`fishertune.backbones` (DINOv2 with or without registers, ViT, CLIP vision, ViT-MAE, and timm's EVA02
through `fishertune.backbones.Eva02Backbone`; timm itself is imported only when an EVA02 is created).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel

from ..backbones import (
    build_auto_model,
    families,
    family_of,
    load_auto_model,
    num_prefix_tokens,
    vision_config,
)
from ..backbones.auto import default_tap_kwargs

#: Rein's taps for DINOv2-L/14 (1-based block indices), used by the paper's Mask2Former.
REIN_DINOV2_LARGE_TAPS = (8, 12, 16, 24)
#: Rein's resampling factors to strides 4, 8, 16, 32 of the tapped stride-16 maps.
REIN_SCALES = (4.0, 2.0, 1.0, 0.5)


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


def build_backbone(config: PreTrainedConfig) -> nn.Module:
    """A randomly initialised backbone for `config` by its registered family, without pooler (unused; it would
    stall DDP). A model type with no family gets transformers' `AutoModel` class (taps work; the tuner presets
    need a registered family)."""
    config = vision_config(config)
    family = family_of(config)
    if family is None:
        return build_auto_model(config)
    if family.prepare_config is not None:
        family.prepare_config(config)
    return family.build(config)


def load_backbone(
    backbone: str | os.PathLike | nn.Module | PreTrainedConfig, **from_pretrained_kwargs
) -> tuple[PreTrainedConfig, nn.Module | None]:
    """Resolve a `from_backbone` argument to `(backbone config, loaded model or None)`.

    A path or Hub id is loaded with real weights by its family (`from_pretrained`; a CLIP checkpoint
    gives its vision tower); a string with a family's `spec_prefix` such as `"timm:<eva02 name>"` goes to
    that family's loader (timm's pretrained EVA02; `from_pretrained_kwargs` then go to `timm.create_model`);
    a model (HF or a registered wrapper such as `Eva02Backbone`) is used as is; a config gives `None`
    (random init later).
    """
    if isinstance(backbone, PreTrainedConfig):
        return vision_config(backbone), None
    if isinstance(backbone, nn.Module):
        if family_of(backbone) is None and not isinstance(backbone, PreTrainedModel):
            raise TypeError(
                f"Unsupported backbone module {type(backbone).__name__}: pass a model of a registered family "
                f"({sorted(families())}, e.g. fishertune.backbones.Eva02Backbone), a config, a path / Hub id or "
                "'timm:eva02_...'; register a new family with fishertune.backbones.register_family."
            )
        if getattr(backbone.config, "vision_config", None) is not None and hasattr(backbone, "vision_model"):
            raise ValueError("Pass the vision tower (e.g. CLIPVisionModel), not the full multimodal model.")
        return backbone.config, backbone
    family = family_of(backbone)  # a spec prefix such as "timm:"
    if family is not None:
        model = family.load(str(backbone), None, **from_pretrained_kwargs)
    else:
        config = AutoConfig.from_pretrained(backbone)
        family = family_of(config)
        load = family.load if family is not None else load_auto_model
        model = load(backbone, config, **from_pretrained_kwargs)
    if family is not None and family.prepare_config is not None:
        family.prepare_config(model.config)
    return model.config, model


def tapped_features(backbone: nn.Module, pixel_values: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
    """Patch-token maps [B, C, h, w] of the 1-based `taps` blocks (no final norm, prefix tokens dropped).

    Position embeddings are interpolated to the input size, so non-square and larger inputs work.
    """
    config = vision_config(backbone.config)
    family = family_of(backbone)
    # The family's extra kwargs: interpolated position embeddings, ViT-MAE's order-keeping noise.
    tap_kwargs = family.tap_kwargs if family is not None else default_tap_kwargs
    kwargs = {"output_hidden_states": True, "return_dict": True, **tap_kwargs(backbone, pixel_values)}
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
