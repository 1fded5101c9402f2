"""Mask2Former on an HF ViT backbone with Rein's feature pyramid (the paper's segmentation model).

The HF pieces are reused as they are (`Mask2FormerPixelDecoder`, `Mask2FormerTransformerModule`,
the class predictor and the loss); only the Swin backbone is replaced by four tapped ViT blocks
resampled x4, x2, x1, x0.5 to strides 4, 8, 16, 32, as in Rein's DINOv2 backbone. The baselines
that feed the decoder queries (Rein's token-query link, VQT's query outputs) install themselves on the
HF transformer module (`fishertune.baselines.rein`, `fishertune.baselines.vqt_heads`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Mask2FormerConfig, PreTrainedConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerForUniversalSegmentationOutput,
    Mask2FormerPixelDecoder,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from ._base import BackboneSegmenterMixin, backbone_config_spec
from .backbone import REIN_SCALES, build_backbone, check_taps, default_taps, resample, tapped_features
from .mask_classification import DistributedMask2FormerLoss, mask_class_semantic_logits, semantic_to_instances

# Fields handed to Mask2FormerConfig unchanged (defaults: Rein's mmseg Mask2Former head).
_M2F_FIELDS = (
    "feature_size", "mask_feature_size", "hidden_dim", "encoder_feedforward_dim", "activation_function",
    "encoder_layers", "decoder_layers", "num_attention_heads", "dropout", "dim_feedforward", "pre_norm",
    "enforce_input_projection", "common_stride", "ignore_value", "num_queries", "no_object_weight",
    "class_weight", "mask_weight", "dice_weight", "train_num_points", "oversample_ratio",
    "importance_sample_ratio", "init_std", "init_xavier_std", "use_auxiliary_loss",
)  # fmt: skip


class PyramidMask2FormerConfig(PreTrainedConfig):
    r"""Configuration of [`PyramidMask2Former`]. Mask2Former fields mean what they mean in [`Mask2FormerConfig`].

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, *optional*): the HF ViT backbone's config (nested dict).
        taps (`list[int]`, *optional*): 1-based tapped blocks, one per pyramid level (DINOv2-L in Rein:
            8, 12, 16, 24); default 4 evenly spaced ending at the last block.
        scales (`list[float]`, *optional*, defaults to `[4, 2, 1, 0.5]`): bilinear factors taking the
            stride-16 taps to strides 4, 8, 16, 32.
        decoder_layers (`int`, *optional*, defaults to 10): HF counts the initial prediction, so 10 gives
            Rein's 9 masked-attention layers.
        num_queries (`int`, *optional*, defaults to 100), class_weight / mask_weight / dice_weight
            (2 / 5 / 5), no_object_weight (0.1), train_num_points (12544), encoder_layers (6-layer
            deformable pixel decoder), hidden_dim / feature_size / mask_feature_size (256): Rein's values.
    """

    model_type = "fishertune_mask2former"
    sub_configs_defaults = backbone_config_spec()

    backbone_config: dict | PreTrainedConfig | None = None
    taps: list[int] | None = None
    scales: list[float] | tuple[float, ...] = REIN_SCALES
    feature_size: int = 256
    mask_feature_size: int = 256
    hidden_dim: int = 256
    encoder_feedforward_dim: int = 1024
    activation_function: str = "relu"
    encoder_layers: int = 6
    decoder_layers: int = 10
    num_attention_heads: int = 8
    dropout: float = 0.0
    dim_feedforward: int = 2048
    pre_norm: bool = False
    enforce_input_projection: bool = False
    common_stride: int = 4
    ignore_value: int = 255
    num_queries: int = 100
    no_object_weight: float = 0.1
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    use_auxiliary_loss: bool = True
    output_auxiliary_logits: bool | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        num_layers = self.backbone_config.num_hidden_layers
        self.taps = list(check_taps(self.taps if self.taps is not None else default_taps(num_layers), num_layers))
        self.scales = [float(s) for s in self.scales]
        if len(self.scales) != len(self.taps) or len(self.taps) < 3:
            raise ValueError(
                f"Need one scale per tap and at least 3 levels; got taps={self.taps}, scales={self.scales}."
            )

    @property
    def feature_strides(self) -> list[int]:
        """Nominal strides of the pyramid levels (a patch of 16 at scale 1 is stride 16)."""
        return [int(round(16 / s)) for s in self.scales]

    def to_mask2former_config(self) -> Mask2FormerConfig:
        """The `Mask2FormerConfig` the HF decoder modules and loss are built from."""
        return Mask2FormerConfig(
            **{k: getattr(self, k) for k in _M2F_FIELDS},
            feature_strides=self.feature_strides,
            id2label=dict(self.id2label),
            label2id=dict(self.label2id) if self.label2id else None,
        )


@dataclass
class PyramidMask2FormerOutput(Mask2FormerForUniversalSegmentationOutput):
    r"""`Mask2FormerForUniversalSegmentationOutput` plus `loss_dict` (the weighted loss terms)."""

    loss_dict: dict[str, torch.Tensor] | None = None


class PyramidMask2Former(BackboneSegmenterMixin, Mask2FormerPreTrainedModel):
    """Mask2Former (HF pixel decoder + masked-attention decoder) on Rein's pyramid of ViT taps.

    `forward(pixel_values, labels=None)` takes semantic labels [B, H, W] (255 = ignore) and converts
    them to one mask per present class; `semantic_logits(outputs, size)` gives log-space class scores.
    """

    config_class = PyramidMask2FormerConfig
    config: PyramidMask2FormerConfig
    base_model_prefix = "fishertune_mask2former"
    # The backbone's blocks are GradientCheckpointingLayers; the default non-reentrant checkpoint also gives
    # frozen-backbone methods (sparse deltas, LoRA, VQT) their gradients (tests/models/test_gradient_checkpointing.py).
    supports_gradient_checkpointing = True
    decoder_modules = ["pixel_decoder", "transformer_module", "class_predictor"]

    def __init__(self, config: PyramidMask2FormerConfig):
        super().__init__(config)
        m2f = config.to_mask2former_config()
        self.backbone = build_backbone(config.backbone_config)
        hidden = config.backbone_config.hidden_size
        self.pixel_decoder = Mask2FormerPixelDecoder(m2f, feature_channels=[hidden] * len(config.taps))
        self.transformer_module = Mask2FormerTransformerModule(in_features=m2f.feature_size, config=m2f)
        self.class_predictor = nn.Linear(m2f.hidden_dim, m2f.num_labels + 1)
        self.weight_dict = {
            "loss_cross_entropy": m2f.class_weight,
            "loss_mask": m2f.mask_weight,
            "loss_dice": m2f.dice_weight,
        }
        self.criterion = DistributedMask2FormerLoss(config=m2f, weight_dict=self.weight_dict)
        self.post_init()

    def pyramid(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Rein's multi-scale features: the tapped patch-token maps resampled by `config.scales`."""
        return resample(tapped_features(self.backbone, pixel_values, self.config.taps), self.config.scales)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        mask_labels: list[torch.Tensor] | None = None,
        class_labels: list[torch.Tensor] | None = None,
        output_hidden_states: bool = False,
        output_auxiliary_logits: bool | None = None,
        **kwargs,
    ) -> PyramidMask2FormerOutput:
        """Args:
        pixel_values (`torch.FloatTensor` of shape `(batch, 3, H, W)`): normalised images.
        labels (`torch.LongTensor` of shape `(batch, H, W)`, *optional*): semantic labels, 255 = ignore.
        mask_labels / class_labels (`list[torch.Tensor]`, *optional*): instance targets as in HF
            Mask2Former, instead of `labels`.
        output_hidden_states (`bool`): return the pyramid, pixel-decoder and decoder states.
        output_auxiliary_logits (`bool`, *optional*): return the per-layer predictions.
        """
        features = self.pyramid(pixel_values)
        pixel_out = self.pixel_decoder(features, output_hidden_states=output_hidden_states)
        decoder_out = self.transformer_module(
            multi_scale_features=pixel_out.multi_scale_features,
            mask_features=pixel_out.mask_features,
            output_hidden_states=True,
        )
        class_logits = tuple(self.class_predictor(h.transpose(0, 1)) for h in decoder_out.intermediate_hidden_states)
        mask_logits = decoder_out.masks_queries_logits
        auxiliary = [
            {"masks_queries_logits": m, "class_queries_logits": c} for m, c in zip(mask_logits[:-1], class_logits[:-1])
        ]

        loss = loss_dict = None
        if labels is not None:
            mask_labels, class_labels = semantic_to_instances(labels, self.config.ignore_value)
        if mask_labels is not None and class_labels is not None:
            loss_dict = self.criterion(
                masks_queries_logits=mask_logits[-1],
                class_queries_logits=class_logits[-1],
                mask_labels=mask_labels,
                class_labels=class_labels,
                auxiliary_predictions=auxiliary if self.config.use_auxiliary_loss else None,
            )
            # Weight every term, auxiliary ones included ("loss_mask_3" contains "loss_mask").
            loss_dict = {
                k: v * next(w for name, w in self.weight_dict.items() if name in k) for k, v in loss_dict.items()
            }
            loss = sum(loss_dict.values())

        if output_auxiliary_logits is None:
            output_auxiliary_logits = bool(self.config.output_auxiliary_logits)
        return PyramidMask2FormerOutput(
            loss=loss,
            loss_dict=loss_dict,
            class_queries_logits=class_logits[-1],
            masks_queries_logits=mask_logits[-1],
            auxiliary_logits=auxiliary if output_auxiliary_logits else None,
            encoder_last_hidden_state=features[-1],
            pixel_decoder_last_hidden_state=pixel_out.mask_features,
            transformer_decoder_last_hidden_state=decoder_out.last_hidden_state,
            encoder_hidden_states=tuple(features) if output_hidden_states else None,
            pixel_decoder_hidden_states=pixel_out.multi_scale_features if output_hidden_states else None,
            transformer_decoder_hidden_states=decoder_out.hidden_states if output_hidden_states else None,
        )

    def semantic_logits(self, outputs: PyramidMask2FormerOutput, size: tuple[int, int]) -> torch.Tensor:
        """`[B, C, *size]` log of the normalised class-mask product (see `mask_class_semantic_logits`)."""
        return mask_class_semantic_logits(outputs.class_queries_logits, outputs.masks_queries_logits, size)
