"""transformers' EoMT (Encoder-only Mask Transformer) behind the package's segmenter interface.

EoMT is a DINOv2 whose last `num_blocks` blocks also process learned queries; masks come from a
small upscaling head. The whole `EomtForUniversalSegmentation` sits at `model.backbone`, so the
tuner's "eomt" preset targets its ViT blocks only; the EoMT-specific parts are `decoder_modules`.
Limits: EoMT has fixed position embeddings, so inputs must be `image_size` square (use sliding
windows for other sizes), and the masked-attention annealing (`backbone.attn_mask_probs`) is
left at 1 (always masked) unless the trainer anneals it. VQT (`fishertune.baselines`) is refused with
a `NotImplementedError`: EoMT's last blocks already carry its own queries and no decoder would read VQT's.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    EomtConfig,
    EomtForUniversalSegmentation,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.models.eomt.modeling_eomt import EomtForUniversalSegmentationOutput

from ..backbones import family_of
from ._base import backbone_reference, from_backbone_reference, labels_kwargs
from .mask_classification import DistributedEomtLoss, mask_class_semantic_logits, semantic_to_instances

_DINOV2_TO_EOMT = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "hidden_act", "layer_norm_eps",
    "patch_size", "num_channels", "layerscale_value", "use_swiglu_ffn", "drop_path_rate", "image_size",
)  # fmt: skip
#: Backbone families EoMT converts (`eomt_config_from_dinov2`) or loads as is.
_EOMT_SOURCES = ("dinov2", "dinov2_with_registers", "eomt")


class EomtSegConfig(PreTrainedConfig):
    r"""Configuration of [`EomtSegmenter`].

    Args:
        backbone_config (`dict` or `EomtConfig`, *optional*): the full `EomtConfig` (nested dict); its
            `num_labels` follows this config's `id2label`.
        ignore_index (`int`, *optional*, defaults to 255): label ignored when building mask targets.
    """

    model_type = "fishertune_eomt"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="eomt")}

    backbone_config: dict | PreTrainedConfig | None = None
    ignore_index: int = 255

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.id2label is not None:  # the class predictor is sized from the EoMT config
            self.backbone_config.id2label = dict(self.id2label)
            self.backbone_config.label2id = dict(self.label2id or {v: k for k, v in self.id2label.items()})


def eomt_config_from_dinov2(config: PreTrainedConfig, **kwargs) -> EomtConfig:
    """An `EomtConfig` with the ViT shape of a DINOv2 (with or without registers) config."""
    fields = {k: getattr(config, k) for k in _DINOV2_TO_EOMT if hasattr(config, k)}
    fields["num_register_tokens"] = int(getattr(config, "num_register_tokens", 0) or 0)
    fields.update(kwargs)
    return EomtConfig(**fields)


def eomt_state_dict_from_dinov2(dinov2: PreTrainedModel, config: EomtConfig) -> dict[str, torch.Tensor]:
    """DINOv2 weights renamed for EoMT; position embeddings resampled to EoMT's fixed grid.

    DINOv2 adds a position embedding to CLS, EoMT does not, so it is folded into the CLS token.
    """
    out = {}
    for key, value in dinov2.state_dict().items():
        if key.startswith("encoder.layer."):
            out["layers." + key[len("encoder.layer.") :].replace("attention.o_proj", "attention.out_proj")] = value
        elif key == "layernorm.weight" or key == "layernorm.bias" or key.startswith("embeddings.patch_embeddings"):
            out[key] = value
        elif key == "embeddings.register_tokens":
            out[key] = value
    pos = dinov2.embeddings.position_embeddings.detach()  # [1, 1 + n, C]
    out["embeddings.cls_token"] = dinov2.embeddings.cls_token.detach() + pos[:, :1]
    patch_pos = pos[0, 1:]
    side = math.isqrt(patch_pos.shape[0])
    grid = config.image_size // config.patch_size
    if side != grid:
        patch_pos = patch_pos.T.reshape(1, -1, side, side)
        patch_pos = F.interpolate(patch_pos.float(), size=(grid, grid), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.to(pos.dtype).reshape(-1, grid * grid).T
    out["embeddings.position_embeddings.weight"] = patch_pos
    return out


class EomtSegmenter(PreTrainedModel):
    """`EomtForUniversalSegmentation` at `self.backbone`, with semantic labels in and log-scores out.

    The loss is EoMT's (summed over the query blocks' predictions) with the world-size fix of
    `DistributedEomtLoss`.
    """

    accepts_loss_kwargs = False  # the loss is computed inside forward; see BackboneSegmenterMixin

    config_class = EomtSegConfig
    config: EomtSegConfig
    base_model_prefix = "fishertune_eomt"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    decoder_modules = ["query", "mask_head", "upscale_block", "class_predictor"]

    def __init__(self, config: EomtSegConfig):
        super().__init__(config)
        self.backbone = EomtForUniversalSegmentation(config.backbone_config)
        self.backbone.criterion = DistributedEomtLoss(
            config=config.backbone_config, weight_dict=self.backbone.weight_dict
        )
        self.post_init()

    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike | PreTrainedModel | PreTrainedConfig,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        taps: tuple[int, ...] | None = None,
        **kwargs,
    ) -> "EomtSegmenter":
        """Build EoMT from a DINOv2 (path, model or config) or an EoMT config/checkpoint.

        Args:
            backbone: a DINOv2 / DINOv2-with-registers folder, model or config (weights are renamed
                and copied; the EoMT head starts random), or an `EomtConfig`.
            num_labels / id2label: the classes.
            taps: not used by EoMT (accepted for a uniform `build_model` call; must be `None`).
            kwargs: `EomtConfig` fields, e.g. `num_queries`, `num_blocks`, `image_size`, `train_num_points`.
        """
        family = family_of(backbone)  # before any download: "timm:..." strings and models are known up front
        if family is not None and family.name not in _EOMT_SOURCES:
            # EoMT's query blocks are transformers' DINOv2-style layers; EVA02's RoPE blocks have no counterpart.
            raise ValueError(
                f"EoMT is built from DINOv2 only (or an EoMT checkpoint), got a {family.name!r} backbone; for it use "
                "build_model('light' or 'mask2former', ...)."
            )
        if taps is not None:
            raise ValueError("EoMT has no feature taps; its last `num_blocks` blocks process the queries.")
        source = None
        if isinstance(backbone, (str, os.PathLike)):
            source = AutoModel.from_pretrained(backbone)
            backbone = source
        if isinstance(backbone, PreTrainedModel):
            source, backbone = backbone, backbone.config
        if backbone.model_type == "eomt":
            eomt_config = EomtConfig.from_dict({**backbone.to_dict(), **kwargs})
        elif backbone.model_type in ("dinov2", "dinov2_with_registers"):
            eomt_config = eomt_config_from_dinov2(backbone, **kwargs)
        else:
            raise ValueError(f"EoMT is built from DINOv2 or EoMT, got model_type={backbone.model_type!r}.")
        depth = eomt_config.num_hidden_layers
        if not 1 <= eomt_config.num_blocks <= depth:
            # Otherwise the queries would join before the first block and fail deep inside with a shape error.
            raise ValueError(
                f"num_blocks={eomt_config.num_blocks}: EoMT's queries join the last num_blocks of the "
                f"backbone's {depth} blocks; choose 1 <= num_blocks <= {depth} (EoMT's default is 4)."
            )
        config = cls.config_class(backbone_config=eomt_config.to_dict(), **labels_kwargs(num_labels, id2label))
        model = cls(config)
        if source is not None:
            cls._copy_backbone_weights(model, source)
        return model

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`; a folder with a config and `BACKBONE_REFERENCE` but no weights is
        built from the config with the named DINOv2's (or EoMT's) weights, as `from_backbone` converts them."""
        reference = backbone_reference(args[0], **kwargs) if args else None
        if reference is not None:
            return from_backbone_reference(cls, args[0], reference, kwargs)
        return super().from_pretrained(*args, **kwargs)

    @classmethod
    def _load_backbone_weights(cls, model, backbone: str) -> None:
        cls._copy_backbone_weights(model, AutoModel.from_pretrained(backbone))

    @staticmethod
    def _copy_backbone_weights(model, source: PreTrainedModel) -> None:
        if source.config.model_type == "eomt":
            state = {k: v for k, v in source.state_dict().items() if not k.startswith("class_predictor")}
        else:
            state = eomt_state_dict_from_dinov2(source, model.backbone.config)
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"Unexpected EoMT weights: {unexpected[:8]}")

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask_labels: list[torch.Tensor] | None = None,
        class_labels: list[torch.Tensor] | None = None,
        **kwargs,
    ) -> EomtForUniversalSegmentationOutput:
        """Args:
        pixel_values (`torch.FloatTensor` of shape `(batch, 3, S, S)`): normalised, `S = image_size`.
        labels (`torch.LongTensor` of shape `(batch, S, S)`, *optional*): semantic labels, 255 = ignore.
        mask_labels / class_labels (`list[torch.Tensor]`, *optional*): instance targets instead of `labels`.
        """
        size = self.backbone.config.image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"EoMT takes {size}x{size} inputs (fixed position embeddings), got {tuple(pixel_values.shape[-2:])}; "
                "crop or use a sliding window."
            )
        if labels is not None:
            mask_labels, class_labels = semantic_to_instances(labels, self.config.ignore_index)
        return self.backbone(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels, **kwargs)

    def semantic_logits(self, outputs: EomtForUniversalSegmentationOutput, size: tuple[int, int]) -> torch.Tensor:
        """`[B, C, *size]` log of the normalised class-mask product of EoMT's semantic post-processing."""
        return mask_class_semantic_logits(outputs.class_queries_logits, outputs.masks_queries_logits, size)
