"""What every segmenter of the package shares: config fields and the `from_backbone` constructor."""

from __future__ import annotations

import os
from typing import Any

from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec

from .backbone import load_backbone

# The backbone's own task fields would only bloat our config (ImageNet's 1000 labels).
_DROP_FROM_BACKBONE = ("id2label", "label2id", "architectures", "problem_type", "num_labels", "_name_or_path")


def backbone_config_spec(default_type: str = "dinov2") -> dict[str, SubConfigSpec]:
    return {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type=default_type)}


def labels_kwargs(num_labels: int | None, id2label: dict[int, str] | None) -> dict[str, Any]:
    if id2label is None:
        if num_labels is None:
            raise ValueError("Pass num_labels or id2label.")
        id2label = {i: str(i) for i in range(num_labels)}
    elif num_labels is not None and len(id2label) != num_labels:
        raise ValueError(f"num_labels={num_labels} but id2label has {len(id2label)} entries.")
    id2label = {int(k): v for k, v in id2label.items()}
    return {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


class BackboneSegmenterMixin:
    """`from_backbone` for a `PreTrainedModel` whose config has `backbone_config` and `taps` fields."""

    #: Top-level submodules trained in full (pass to `FisherTuneConfig(modules_to_save=...)`).
    decoder_modules: list[str] = []

    #: The loss is a per-pixel mean computed inside forward; a plain `Trainer` must not rescale it by
    #: `num_items_in_batch` (it would otherwise multiply it by the number of processes).
    accepts_loss_kwargs: bool = False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the backbone's non-persistent buffers are recomputed.

        transformers builds the model on the meta device and fills only what the checkpoint holds (and
        what HF modules' `_init_weights` know); timm's EVA02 keeps RoPE tables in non-persistent
        buffers, which `Eva02Backbone.init_non_persistent_buffers` restores.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives a tuple
        reinit = getattr(getattr(model, "backbone", None), "init_non_persistent_buffers", None)
        if callable(reinit):
            reinit()
        return loaded

    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike | PreTrainedModel | nn.Module | PreTrainedConfig,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        taps: tuple[int, ...] | None = None,
        **kwargs,
    ):
        """Build the segmenter on an HF ViT backbone or a timm EVA02.

        Args:
            backbone (`str`, `os.PathLike`, `PreTrainedModel`, `Eva02Backbone` or `PreTrainedConfig`):
                A local folder or Hub id (loaded with its pretrained weights), `"timm:<eva02 name>"`
                (timm's pretrained EVA02), a backbone model (its weights are copied), or a config such
                as `Eva02BackboneConfig` (random initialisation). CLIP checkpoints give their vision
                tower; task checkpoints such as `ViTForImageClassification` give their encoder.
            num_labels (`int`, *optional*): number of classes (or pass `id2label`).
            id2label (`dict[int, str]`, *optional*): class names.
            taps (`tuple[int, ...]`, *optional*): 1-based blocks whose patch tokens feed the head;
                default: evenly spaced ending at the last block (DINOv2-L in Rein: 8, 12, 16, 24).
            kwargs: further fields of the model's config (e.g. `num_queries=100`).
        """
        backbone_config, backbone_model = load_backbone(backbone)
        sub = backbone_config.to_dict()
        for key in _DROP_FROM_BACKBONE:
            sub.pop(key, None)
        config = cls.config_class(
            backbone_config=sub,
            taps=list(taps) if taps is not None else None,
            **labels_kwargs(num_labels, id2label),
            **kwargs,
        )
        model = cls(config)
        if backbone_model is not None:
            missing, unexpected = model.backbone.load_state_dict(backbone_model.state_dict(), strict=False)
            # A pooler or CLIP's projection may be present in the source; nothing of ours may be missing.
            if missing:
                raise ValueError(f"Backbone weights missing after loading: {missing[:8]}")
        return model
