"""The parts of a segmentation model that the training methods (`methods.py`) treat alike: the model inside a PEFT
wrapper, its backbone and the backbone's parameters (decoder modules living inside it excluded), its decoder."""

from __future__ import annotations

from peft import PeftModel
from torch import nn

from ..backbones import locate
from ..tuner import FisherTuneConfig


def base_model(model: nn.Module) -> nn.Module:
    """The segmentation model inside a PeftModel (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def backbone_module(model: nn.Module) -> nn.Module:
    """The ViT backbone: `model.backbone` (the package's models) or the one the tuner presets find."""
    base = base_model(model)
    backbone = getattr(base, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone
    return locate(base)[2]


def backbone_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """`(name, parameter)` of the backbone that a method freezes, selects in or tunes, named as in `model`.

    The parameters of `backbone_module(model)` except those of the decoder modules that live inside it: EoMT
    keeps its queries, mask head, upscaling and class predictor in its `EomtForUniversalSegmentation` backbone,
    and they are decoder (trained in every phase, like any head), not backbone.
    """
    backbone = backbone_module(model)
    decoder = tuple(f"{d}." for d in getattr(base_model(model), "decoder_modules", None) or ())
    decoder_ids = {id(p) for n, p in backbone.named_parameters() if n.startswith(decoder)}
    ids = {id(p) for p in backbone.parameters()} - decoder_ids
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def is_fishertune(model: nn.Module) -> bool:
    return isinstance(model, PeftModel) and isinstance(model.peft_config[model.active_adapter], FisherTuneConfig)


def decoder_modules(model: nn.Module) -> list[str]:
    """The top-level decoder modules of the segmenter (`modules_to_save` of an adapter method)."""
    decoder = getattr(model, "decoder_modules", None)
    if not decoder:
        raise ValueError(
            f"{type(model).__name__} has no `decoder_modules`: set it to the names of the top-level decoder modules "
            "(e.g. ['decode_head']) or wrap the model with PEFT yourself (modules_to_save=...) and pass the PeftModel."
        )
    return list(decoder)
