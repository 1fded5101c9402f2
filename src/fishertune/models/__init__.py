"""Segmentation models on HF ViT backbones (and timm's EVA02), all with one interface.

Every model takes `pixel_values` [B, 3, H, W] and optional semantic `labels` [B, H, W]
(255 = ignore), returns a `ModelOutput` with `.loss` when labels are given, exposes
`semantic_logits(outputs, size)` (log-space per-pixel class scores), keeps its backbone at
`model.backbone`, and lists the submodules trained in full in `decoder_modules`.

- `LightSegmenter`: BN + 1x1 conv on concatenated taps (DINOv2 linear protocol); fast, CPU-friendly.
- `PyramidMask2Former`: Rein's pyramid of 4 taps feeding HF Mask2Former (the paper's model).
- `EomtSegmenter`: transformers' EoMT, built from DINOv2 (EVA02 is refused).

EVA02 (needs `timm`): `build_model("light" | "mask2former", backbone, ...)` with `backbone` an
`fishertune.backbones.Eva02Backbone`, an `Eva02BackboneConfig` (random init) or
`"timm:eva02_large_patch14_224.mim_m38m"` (timm's pretrained weights); use
`fishertune.backbones.eva02_pyramid_taps(24)` for Rein's taps (8, 12, 16, 24). A saved EVA02
segmenter reloads with `AutoModel.from_pretrained(folder)` without downloading timm weights.

Importing this package registers the configs and models with `AutoConfig`, `AutoModel` and
`AutoModelForSemanticSegmentation`, and `FisherTuneImageProcessor` with `AutoImageProcessor`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation
from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

# Registers the backbone families, and Eva02BackboneConfig with AutoConfig (nested in saved EVA02 segmenters);
# imports no timm.
from .. import backbones as _backbones  # noqa: F401
from ._base import BACKBONE_REFERENCE, backbone_reference, save_backbone_reference
from .backbone import (
    REIN_DINOV2_LARGE_TAPS,
    REIN_SCALES,
    default_taps,
    load_backbone,
    patch_tokens,
    tapped_features,
)
from .eomt import EomtSegConfig, EomtSegmenter
from .light import LightSegConfig, LightSegmenter
from .mask2former import PyramidMask2Former, PyramidMask2FormerConfig, PyramidMask2FormerOutput
from .mask_classification import (
    DistributedEomtLoss,
    DistributedMask2FormerLoss,
    mask_class_semantic_logits,
    semantic_to_instances,
)
from .processing import FisherTuneImageProcessor, processor_for

MODEL_CLASSES = {"light": LightSegmenter, "mask2former": PyramidMask2Former, "eomt": EomtSegmenter}


def build_model(name: str, backbone, num_labels: int | None = None, **kwargs):
    """Build a segmenter by name.

    Args:
        name (`str`): `"light"`, `"mask2former"` or `"eomt"`.
        backbone: path / Hub id, backbone model or backbone config (see `from_backbone`).
        num_labels (`int`, *optional*): number of classes (or pass `id2label=`).
        kwargs: `id2label`, `taps` and config fields of the chosen model.
    """
    if name not in MODEL_CLASSES:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODEL_CLASSES)}.")
    return MODEL_CLASSES[name].from_backbone(backbone, num_labels=num_labels, **kwargs)


for _config_cls, _model_cls in (
    (LightSegConfig, LightSegmenter),
    (PyramidMask2FormerConfig, PyramidMask2Former),
    (EomtSegConfig, EomtSegmenter),
):
    # exist_ok: a reloaded module registers its new classes again.
    AutoConfig.register(_config_cls.model_type, _config_cls, exist_ok=True)
    AutoModel.register(_config_cls, _model_cls, exist_ok=True)
    AutoModelForSemanticSegmentation.register(_config_cls, _model_cls, exist_ok=True)
    AutoImageProcessor.register(_config_cls, image_processor_classes={"pil": FisherTuneImageProcessor}, exist_ok=True)
    # pipeline("image-segmentation") checks the model's class name against these static name tables (the
    # registry above is not consulted) and logs an error otherwise. Every lookup of the table is joined with
    # transformers' own config names, which never hold ours, so the entry affects only that check.
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES.setdefault(_config_cls.model_type, _model_cls.__name__)

__all__ = [
    "BACKBONE_REFERENCE",
    "REIN_DINOV2_LARGE_TAPS",
    "REIN_SCALES",
    "DistributedEomtLoss",
    "DistributedMask2FormerLoss",
    "EomtSegConfig",
    "EomtSegmenter",
    "FisherTuneImageProcessor",
    "LightSegConfig",
    "LightSegmenter",
    "MODEL_CLASSES",
    "PyramidMask2Former",
    "PyramidMask2FormerConfig",
    "PyramidMask2FormerOutput",
    "backbone_reference",
    "build_model",
    "default_taps",
    "load_backbone",
    "mask_class_semantic_logits",
    "patch_tokens",
    "processor_for",
    "save_backbone_reference",
    "semantic_to_instances",
    "tapped_features",
]
