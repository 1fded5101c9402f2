"""The defaults a [`BackboneFamily`] falls back to: transformers' own model class for a config, built or loaded
without pooler, the CLS + register prefix rule, and the forward kwargs every tapped backbone gets.

Kept apart from the registry so that a family definition (``hf.py``, ``eva02.py``) can reuse or wrap them.
"""

from __future__ import annotations

import inspect
import os

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.models.auto.modeling_auto import MODEL_MAPPING


def vision_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """The vision tower's config of ``config`` (CLIP's ``vision_config``, otherwise ``config`` itself)."""
    return getattr(config, "vision_config", None) or config


def cls_and_registers(config: PreTrainedConfig | None, num_blocks: int | None = None) -> int:
    """Tokens in front of the patch tokens: the config's ``num_prefix_tokens`` when it has one (EVA02),
    else CLS plus register tokens (DINOv2-reg: 1 + 4). HF's ViT configs have no such field."""
    explicit = getattr(config, "num_prefix_tokens", None)
    if explicit is not None:
        return int(explicit)
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def no_prefix(config: PreTrainedConfig | None, num_blocks: int | None = None) -> int:
    """SAM's windowed blocks see a ``[B, H, W, C]`` grid: no CLS or register token."""
    return 0


def _auto_model_class(config: PreTrainedConfig) -> type[nn.Module]:
    if type(config) not in MODEL_MAPPING:
        raise ValueError(
            f"transformers has no AutoModel class for {type(config).__name__} (model_type={config.model_type!r}); "
            "give its backbone family a `build=` (and `load=`) callable."
        )
    return MODEL_MAPPING[type(config)]


def _without_pooler(model_cls: type[nn.Module], kwargs: dict) -> dict:
    # The pooler is unused by segmentation and its parameters would never get a gradient, which stalls DDP.
    if "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters:
        kwargs.setdefault("add_pooling_layer", False)
    return kwargs


def build_auto_model(config: PreTrainedConfig) -> nn.Module:
    """A randomly initialised ``AutoModel`` of ``config``, without pooler."""
    model_cls = _auto_model_class(config)
    return model_cls(config, **_without_pooler(model_cls, {}))


def load_auto_model(name_or_path: str | os.PathLike, config: PreTrainedConfig, **from_pretrained_kwargs) -> nn.Module:
    """``AutoModel.from_pretrained`` of a folder or Hub id whose config is ``config``, without pooler."""
    model_cls = _auto_model_class(config)
    return model_cls.from_pretrained(name_or_path, **_without_pooler(model_cls, dict(from_pretrained_kwargs)))


def default_tap_kwargs(backbone: nn.Module, pixel_values: torch.Tensor) -> dict:
    """Forward kwargs for pyramid taps: interpolate position embeddings to the input size when the forward has
    the flag (ViT, ViT-MAE, CLIP); DINOv2 always interpolates and has none."""
    if "interpolate_pos_encoding" in inspect.signature(backbone.forward).parameters:
        return {"interpolate_pos_encoding": True}
    return {}
