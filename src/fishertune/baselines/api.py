"""One API over the four baselines: apply, count, save/load only the method's parameters, compare."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..outputs import BASELINE_CONFIG_NAME as CONFIG_NAME
from ..outputs import BASELINE_WEIGHTS_NAME as WEIGHTS_NAME
from ..registry import Registry
from ..tuner.presets import target_regex
from ._common import BaselineConfig, backbone_info, installed_state, resolve_backbone
from .adaptformer import AdaptFormerConfig, adaptformer_num_parameters, apply_adaptformer
from .rein import ReinConfig, apply_rein, rein_num_parameters
from .vpt import VPTConfig, apply_vpt, vpt_num_parameters
from .vqt import VQTConfig, apply_vqt, vqt_num_parameters
from .vqt_heads import vqt_head


@dataclass(frozen=True)
class Baseline:
    """One baseline method.

    Args:
        config_cls (`type[BaselineConfig]`): its config (`config_cls.method` is its name, `card_line` its card line).
        apply (`Callable[[nn.Module, BaselineConfig], nn.Module]`): installs it on a model's frozen backbone.
        num_parameters (`Callable[..., int]`): its trainable parameters for a width and depth (`parameter_table`).
    """

    config_cls: type[BaselineConfig]
    apply: Callable[[nn.Module, BaselineConfig], nn.Module]
    num_parameters: Callable[..., int]

    @property
    def name(self) -> str:
        return self.config_cls.method


#: The baselines by name; `training.methods` offers each as `method: <name>`.
METHODS: Registry[Baseline] = Registry("baseline", "fishertune.baselines.METHODS.register(Baseline(...))")
for _baseline in (
    Baseline(ReinConfig, apply_rein, rein_num_parameters),
    Baseline(VPTConfig, apply_vpt, vpt_num_parameters),
    Baseline(AdaptFormerConfig, apply_adaptformer, adaptformer_num_parameters),
    Baseline(VQTConfig, apply_vqt, vqt_num_parameters),
):
    METHODS.register(_baseline)


def apply_method(model: nn.Module, config: BaselineConfig) -> nn.Module:
    """Install the baseline described by `config` (dispatch on its `method`)."""
    return METHODS.get(config.method).apply(model, config)


def count_trainable(model: nn.Module) -> int:
    """Number of parameter entries with `requires_grad` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def method_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The installed method's parameters only, keyed `backbone.<rel>` or `model.<full>` (head links)."""
    backbone, state = installed_state(model)
    prefix, path = state["config"].prefix, state["info"]["path"]
    out = {}
    for key, value in model.state_dict().items():
        if not any(part.startswith(prefix) for part in key.split(".")):
            continue
        if path == "" or key.startswith(path + "."):
            out["backbone." + (key[len(path) + 1 :] if path else key)] = value
        else:
            out["model." + key] = value
    return out


def _full_key(key: str, path: str) -> str:
    if key.startswith("backbone."):
        rel = key[len("backbone.") :]
        return f"{path}.{rel}" if path else rel
    return key[len("model.") :]


def save_method_state(model: nn.Module, save_directory: str | os.PathLike) -> None:
    """Write the method's parameters (safetensors) and its config + backbone signature (JSON)."""
    backbone, state = installed_state(model)
    os.makedirs(save_directory, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in method_state_dict(model).items()}
    save_file(tensors, os.path.join(save_directory, WEIGHTS_NAME), metadata={"method": state["config"].method})
    info = {k: state["info"][k] for k in ("model_type", "hidden_size", "num_layers", "num_prefix_tokens")}
    meta = {"method": state["config"].method, "config": state["config"].to_dict(), "backbone": info}
    with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def load_method_state(model: nn.Module, save_directory: str | os.PathLike) -> nn.Module:
    """Load a saved baseline into `model`, installing it first on a fresh backbone.

    Raises a `ValueError` naming the mismatch when the saved method, config or backbone signature
    (family, width, depth) differs from `model`, or when any tensor is missing, extra or misshapen.
    """
    with open(os.path.join(save_directory, CONFIG_NAME)) as f:
        meta = json.load(f)
    method = meta["method"]
    if method not in METHODS:
        raise ValueError(f"{save_directory} holds an unknown baseline {method!r} (registered: {', '.join(METHODS)}).")
    config = METHODS.get(method).config_cls.from_dict(meta["config"])
    try:
        backbone, state = installed_state(model)
    except ValueError:
        _, family, backbone = resolve_backbone(model)
        got = backbone_info(backbone, family)
        _check_signature(meta["backbone"], got)
        apply_method(model, config)
        backbone, state = installed_state(model)
    if state["config"].to_dict() != config.to_dict():
        raise ValueError(f"Installed baseline {state['config'].to_dict()} differs from the saved {config.to_dict()}.")
    _check_signature(meta["backbone"], state["info"])
    saved = load_file(os.path.join(save_directory, WEIGHTS_NAME))
    expected = method_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(f"Baseline weights do not fit the model: missing {missing}, unexpected {unexpected}.")
    path = state["info"]["path"]
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in saved.items():
            if tensor.shape != expected[key].shape:
                raise ValueError(f"{key}: saved shape {tuple(tensor.shape)} != model {tuple(expected[key].shape)}.")
            params[_full_key(key, path)].copy_(tensor)
    return model


def _check_signature(saved: dict, got: dict) -> None:
    keys = ("model_type", "hidden_size", "num_layers", "num_prefix_tokens")
    diff = {k: (saved.get(k), got.get(k)) for k in keys if saved.get(k) != got.get(k)}
    if diff:
        raise ValueError(f"Saved baseline was made for another backbone: (saved, this model) = {diff}.")


def parameter_table(model: nn.Module, fishertune_fraction: float = 0.05, lora_rank: int = 16) -> list[dict]:
    """Trainable backbone-side parameters of each method on `model`'s backbone, with default configs.

    FisherTune: `fishertune_fraction` of the Eq. 3 weight entries (q, k, v, FFN; biases excluded).
    LoRA: rank `lora_rank` on the same linears, r * (in + out) each. Rein with its query link; VQT
    with its link to `model`'s head (light head or Mask2Former) when it has one.
    Decoder parameters are excluded everywhere (every method trains the decoder in full).
    """
    _, family, backbone = resolve_backbone(model)
    regex = re.compile(target_regex(model))
    linears = [m for n, m in model.named_modules() if regex.fullmatch(n) and isinstance(m, nn.Linear)]
    entries = sum(m.weight.numel() for m in linears)
    info = backbone_info(backbone, family)
    dim, depth = info["hidden_size"], info["num_layers"]
    prefixes = tuple(name + "_" for name in METHODS)  # an installed method is not backbone size
    total = sum(
        p.numel() for n, p in backbone.named_parameters() if not any(s.startswith(prefixes) for s in n.split("."))
    )
    rows = [
        (
            "fishertune",
            int(round(fishertune_fraction * entries)),
            f"{fishertune_fraction:.0%} of {entries} targeted entries",
        ),
        ("lora", sum(lora_rank * (m.in_features + m.out_features) for m in linears), f"r={lora_rank} on q/k/v/FFN"),
    ]
    head = vqt_head(model)
    for name, baseline in METHODS.items():
        formula, config = baseline.num_parameters, baseline.config_cls()
        if name == "vqt" and head is not None:  # its head link is vqt_-prefixed: trained and saved with it
            rows.append((name, formula(dim, depth, config, head=head[2]), f"default config + {head[2]['kind']} link"))
        else:
            rows.append((name, formula(dim, depth, config), "default config"))
    return [
        {"method": name, "trainable": count, "percent_of_backbone": 100.0 * count / total, "note": note}
        for name, count, note in rows
    ]
