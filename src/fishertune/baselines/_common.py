"""Shared plumbing of the baselines: locate the backbone and its blocks (`fishertune.backbones`), wrap block
forwards, configs.

Every baseline is installed the same way: the backbone is frozen, one trainable module whose
attribute name starts with the method's prefix (``rein_``, ``vpt_``, ...) is attached to the
backbone root, and each block's ``forward`` is wrapped on the instance. Wrapping ``forward``
(rather than registering forward hooks) matters for the token-adding methods: transformers 5
records ``output_hidden_states`` with forward hooks on the blocks, which must see the block's
input and output *without* the extra prompt/query tokens, or the pyramid taps would change shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..backbones import BackboneFamily, backbone_blocks, locate

#: Attribute stored on the backbone once a baseline is installed (one baseline per backbone).
STATE_ATTR = "_fishertune_baseline"


@dataclass
class BaselineConfig:
    """Base of the baseline configs: a dataclass with validation and a JSON-friendly dict form.

    Args:
        layers (`list[int]`, *optional*):
            0-based indices of the backbone blocks to adapt. `None` (default) adapts every block,
            as all four papers do.
    """

    method: ClassVar[str] = ""
    #: The model card's sentence for a run of this method (`fishertune.training.methods`).
    card_line: ClassVar[str] = ""
    layers: list[int] | None = field(
        default=None, metadata={"help": "0-based block indices to adapt; None adapts every block."}
    )

    @property
    def prefix(self) -> str:
        return f"{self.method}_"

    def __post_init__(self):
        if self.layers is not None:
            self.layers = sorted({int(i) for i in self.layers})
            if not self.layers or self.layers[0] < 0:
                raise ValueError(f"layers must be non-empty non-negative block indices, got {self.layers}.")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaselineConfig:
        data = {k: v for k, v in data.items() if k != "method"}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} fields {unknown}; known: {sorted(names)}.")
        return cls(**data)


def _check_positive(config: BaselineConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}.")


def resolve_backbone(model: nn.Module) -> tuple[str, BackboneFamily, nn.Module]:
    """`(path, family, backbone)` of the registered ViT backbone inside `model` (EVA02 wrappers included)."""
    return locate(model)


def backbone_info(backbone: nn.Module, family: BackboneFamily) -> dict[str, int | str]:
    """Hidden size, depth and prefix-token count (the family's rule: CLS + registers, EVA02's own count)."""
    config = backbone.config
    blocks = backbone_blocks(backbone, family)
    return {
        "model_type": family.name,
        "hidden_size": int(config.hidden_size),
        "num_layers": len(blocks),
        "num_prefix_tokens": int(family.prefix_tokens(config, None)),
    }


def selected_layers(config: BaselineConfig, num_layers: int) -> list[int]:
    layers = list(range(num_layers)) if config.layers is None else list(config.layers)
    if layers[-1] >= num_layers:
        raise ValueError(f"{type(config).__name__}.layers {layers} out of range for a {num_layers}-block backbone.")
    return layers


def wrap_forward(block: nn.Module, make_forward) -> None:
    """Replace `block.forward` on the instance by `make_forward(original_forward)`."""
    # An instance attribute wins over the class's forward; nn.Module.__call__ (and its hooks) is
    # unchanged. Deep-copying a wrapped model is not supported (the closure keeps the old block).
    original = block.forward
    block.forward = make_forward(original)
    block._fishertune_original_forward = original


def unwrap_forward(block: nn.Module) -> None:
    if "forward" in block.__dict__:
        del block.forward
    block.__dict__.pop("_fishertune_original_forward", None)


def first_tensor(output):
    """Blocks return a tensor (transformers 5, timm) or a tuple whose first item is the hidden state."""
    return output[0] if isinstance(output, tuple) else output


def replace_first(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def prepare_backbone(model: nn.Module, config: BaselineConfig) -> tuple[nn.Module, dict]:
    """Find and freeze the backbone; refuse a second baseline on the same backbone."""
    path, family, backbone = resolve_backbone(model)
    if hasattr(backbone, STATE_ATTR):
        installed = getattr(backbone, STATE_ATTR)["config"].method
        raise ValueError(f"A '{installed}' baseline is already installed on this backbone; use a fresh model.")
    info = backbone_info(backbone, family)
    info["path"] = path
    info["layers"] = selected_layers(config, info["num_layers"])
    # Why freeze only the backbone: the segmentation decoder is trained in full by every method.
    for param in backbone.parameters():
        param.requires_grad_(False)
    return backbone, info


def record_install(backbone: nn.Module, config: BaselineConfig, info: dict, **extra) -> None:
    # A plain dict attribute: not a submodule, so it never enters state_dict or named_parameters.
    object.__setattr__(backbone, STATE_ATTR, {"config": config, "info": info, **extra})


def installed_state(model: nn.Module) -> tuple[nn.Module, dict]:
    """`(backbone, state)` of the baseline installed in `model`; raises if there is none."""
    for module in model.modules():
        if hasattr(module, STATE_ATTR):
            return module, getattr(module, STATE_ATTR)
    raise ValueError("No baseline installed in this model; call apply_<method>(model, config) first.")
