"""A light segmentation head for fast runs and CPU work: DINOv2's linear protocol on tapped blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SemanticSegmenterOutput

from ._base import BackboneSegmenterMixin, backbone_config_spec
from .backbone import build_backbone, check_taps, default_taps, tapped_features


class LightSegConfig(PreTrainedConfig):
    r"""Configuration of [`LightSegmenter`].

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the HF ViT backbone (DINOv2, ViT, CLIP vision, ViT-MAE), stored nested as a dict.
        taps (`list[int]`, *optional*):
            1-based blocks whose patch tokens (no final norm) are concatenated; default 4 evenly
            spaced blocks ending at the last.
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout before the 1x1 classifier.
        ignore_index (`int`, *optional*, defaults to 255):
            Label ignored by the loss.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the classifier's init.
    """

    model_type = "fishertune_light_seg"
    sub_configs_defaults = backbone_config_spec()

    backbone_config: dict | PreTrainedConfig | None = None
    taps: list[int] | None = None
    classifier_dropout: float = 0.0
    ignore_index: int = 255
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        num_layers = self.backbone_config.num_hidden_layers
        self.taps = list(check_taps(self.taps if self.taps is not None else default_taps(num_layers), num_layers))


class LightHead(nn.Module):
    """BatchNorm + 1x1 conv on the channel-concatenated taps (the DINOv2 linear "+ms"-style head)."""

    def __init__(self, in_channels: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.batch_norm = nn.BatchNorm2d(in_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(in_channels, num_labels, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.batch_norm(torch.cat(features, dim=1))))


class LightSegmenter(BackboneSegmenterMixin, PreTrainedModel):
    """ViT backbone + BN/1x1-conv head on the concatenated patch tokens of `config.taps`, upsampled.

    Input: `pixel_values` [B, 3, H, W] (normalised), optional `labels` [B, H, W] (255 = ignore).
    The logits are at the patch grid; the loss upsamples them bilinearly to the labels (as mmseg does).
    With VQT installed (`fishertune.baselines.apply_vqt`), `decode_head` also adds image-level class
    logits read from the query outputs (see `fishertune.baselines.vqt_heads`).

    Example:

        ```py
        >>> model = LightSegmenter.from_backbone("path/to/dinov2-small", num_labels=19)
        >>> out = model(pixel_values=x, labels=y)
        >>> probs = model.semantic_logits(out, size=y.shape[-2:]).softmax(1)
        ```
    """

    config_class = LightSegConfig
    config: LightSegConfig
    base_model_prefix = "fishertune_light_seg"
    # The backbone's blocks are GradientCheckpointingLayers; the default non-reentrant checkpoint also gives
    # frozen-backbone methods (sparse deltas, LoRA, VQT) their gradients (tests/models/test_gradient_checkpointing.py).
    supports_gradient_checkpointing = True
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    decoder_modules = ["decode_head"]

    def __init__(self, config: LightSegConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.backbone_config)
        hidden = config.backbone_config.hidden_size
        self.decode_head = LightHead(hidden * len(config.taps), config.num_labels, config.classifier_dropout)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> SemanticSegmenterOutput:
        """Args:
        pixel_values (`torch.FloatTensor` of shape `(batch, 3, H, W)`): normalised images.
        labels (`torch.LongTensor` of shape `(batch, H, W)`, *optional*): semantic labels, 255 = ignore.
        output_hidden_states (`bool`): also return the tapped feature maps.
        """
        features = tapped_features(self.backbone, pixel_values, self.config.taps)
        logits = self.decode_head(features)
        loss = None
        if labels is not None:
            upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(upsampled, labels.long(), ignore_index=self.config.ignore_index)
            if not (labels != self.config.ignore_index).any():  # an all-void batch gives 0, not NaN
                loss = upsampled.sum() * 0.0
        return SemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=tuple(features) if output_hidden_states else None
        )

    def semantic_logits(self, outputs: SemanticSegmenterOutput, size: tuple[int, int]) -> torch.Tensor:
        """Per-pixel class logits `[B, C, *size]`: the head's logits bilinearly upsampled."""
        return F.interpolate(outputs.logits, size=tuple(size), mode="bilinear", align_corners=False)
