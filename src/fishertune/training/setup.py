"""Turn a segmentation model into what a method trains: FisherTune, LoRA, full/frozen backbone, the baselines.

Every method (`methods.METHODS`) ends as one model with the same decoder handling, so the trainer treats all
baselines of the paper's ablation alike: FisherTune's sparse tuning and LoRA wrap the model with PEFT
(decoder in `modules_to_save`), `full` and `frozen` keep the plain model, and `rein`, `vpt`,
`adaptformer` and `vqt` install the method of `fishertune.baselines` (default config) on the plain
model: the backbone frozen, the method's parameters (attached under the backbone, plus the head-side
links of Rein and VQT) and the decoder trainable.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from ..backbones import locate
from ..tuner import FisherTuneConfig, target_regex
from .arguments import FisherTuneTrainingArguments
from .methods import get_method


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


def _decoder_modules(model: nn.Module) -> list[str]:
    decoder = getattr(model, "decoder_modules", None)
    if not decoder:
        raise ValueError(
            f"{type(model).__name__} has no `decoder_modules`: set it to the names of the top-level decoder modules "
            "(e.g. ['decode_head']) or wrap the model with PEFT yourself (modules_to_save=...) and pass the PeftModel."
        )
    return list(decoder)


def prepare_model(model: nn.Module, args: FisherTuneTrainingArguments) -> nn.Module:
    """Return the model `args.method` trains (wrapping it with PEFT where the method needs it)."""
    model = _prepare_model(model, args)
    if args.reentrant_checkpointing():
        # The frozen patch embedding's output does not require grad, so a reentrant checkpoint would never run the
        # backward of its blocks: the deltas / adapters would get no gradient. transformers does the same for PEFT.
        base_model(model).enable_input_require_grads()
    return model


def _prepare_model(model: nn.Module, args: FisherTuneTrainingArguments) -> nn.Module:
    method = get_method(args.method)
    if isinstance(model, PeftModel):
        if method.saved_as == "whole":
            raise ValueError(f"method={method.name!r} trains the plain model; pass the model without its PEFT wrapper.")
        if method.kind == "sparse" and not is_fishertune(model):
            raise ValueError(
                f"method='sparse' needs a FisherTune adapter but the PeftModel holds "
                f"{type(model.peft_config[model.active_adapter]).__name__}; use method='lora' for other PEFT methods."
            )
        if method.kind == "lora" and is_fishertune(model):
            raise ValueError("method='lora' was given a FisherTune PeftModel; use method='sparse' (FisherTune).")
        if is_fishertune(model):
            config = model.peft_config[model.active_adapter]
            if args.budget_base is not None and args.budget_base != config.budget_base:
                raise ValueError(
                    f"args.budget_base={args.budget_base!r} but the FisherTuneConfig of the model says "
                    f"{config.budget_base!r}; leave args.budget_base unset (None) or make them agree."
                )
            for name in ("delta_min", "delta_max", "delta_max_count", "delta_min_count"):
                value = getattr(args, name)
                saved = getattr(config, name)
                if value is not None and (saved is None or abs(value - saved) > 1e-12):
                    raise ValueError(
                        f"args.{name}={value} but the FisherTuneConfig of the model says {saved}; "
                        f"leave args.{name} unset (None) or make them agree."
                    )
        return model
    if method.kind == "full":
        return model.requires_grad_(True)
    if method.kind == "frozen":
        model.requires_grad_(True)
        for _, param in backbone_parameters(model):
            param.requires_grad_(False)
        return model
    if method.baseline is not None:
        return _apply_baseline_method(model, method.baseline)
    decoder = _decoder_modules(model)
    if method.kind == "lora":
        config = LoraConfig(
            r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
            target_modules=target_regex(model), modules_to_save=decoder,
        )
        return get_peft_model(model, config)
    deltas = {k: getattr(args, k) for k in ("delta_min", "delta_max", "budget_base", "delta_max_count", "delta_min_count")
              if getattr(args, k) is not None}
    # Algorithm 1 selects from its estimated scores after the warm-up; a data-free selection at injection would be
    # a global top-k over every targeted entry (277M for ViT-L) thrown away at the end of phase 2.
    return get_peft_model(model, FisherTuneConfig(modules_to_save=decoder, init_criterion=None, **deltas))


def _apply_baseline_method(model: nn.Module, name: str) -> nn.Module:
    """Install `name` (Rein, VPT-deep, AdaptFormer, VQT; default config) unless the model already holds it."""
    from ..baselines import api as baselines

    try:
        _, state = baselines.installed_state(model)
    except ValueError:
        state = None
    if state is not None:
        if state["config"].method != name:
            raise ValueError(f"method={name!r} but the model already holds the {state['config'].method!r} baseline.")
        return model  # e.g. a model built and installed by the caller with its own config
    model.requires_grad_(True)  # the decoder (and the method's parameters) train; apply_method freezes the backbone
    config_cls = baselines.METHODS[name][0]
    return baselines.apply_method(model, config_cls())
