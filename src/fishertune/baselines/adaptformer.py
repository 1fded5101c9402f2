"""AdaptFormer (Chen et al., NeurIPS 2022): a scaled bottleneck MLP parallel to each block's FFN.

Per the public code (`ffn_option="parallel"`, `ffn_adapter_layernorm_option="none"`,
`ffn_adapter_init_option="lora"`): with x the residual stream entering the FFN sub-block,
    x <- x + FFN(norm2(x)) + s * up(ReLU(down(x)))
down is kaiming-uniform, up and both biases are zero, so the model is exactly unchanged at init.
Installed with two hooks per block: a pre-hook on the FFN's norm captures x, a forward hook on the
last module of the FFN branch adds the adapter. For DINOv2 that module is `layer_scale2`, so the
adapter output is not shrunk by DINOv2's LayerScale (the original ViT has none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from ..backbones import backbone_blocks
from ._common import BaselineConfig, _check_positive, prepare_backbone, record_install

#: model_type -> (norm whose input is the residual stream, last module of the FFN branch).
FFN_MODULES: dict[str, tuple[str, str]] = {
    "dinov2": ("norm2", "layer_scale2"),
    "dinov2_with_registers": ("norm2", "layer_scale2"),
    "vit": ("layernorm_after", "mlp"),
    "vit_mae": ("layernorm_after", "mlp"),
    "clip_vision_model": ("layer_norm2", "mlp"),
    # timm EvaBlock: x + gamma_2 * mlp(norm2(x)); gamma_2 is a bare parameter (None for EVA02 models).
    "eva02": ("norm2", "mlp"),
}


@dataclass
class AdaptFormerConfig(BaselineConfig):
    """Configuration of AdaptFormer.

    Args:
        bottleneck (`int`, defaults to 64): bottleneck width (3.17M parameters on DINOv2-L, as in Rein's table).
        scale (`float`, defaults to 0.1): fixed scale s of the adapter branch.
        input (`str`, defaults to `"residual"`): adapter input, `"residual"` (the official code) or
            `"normed"` (the FFN's normalized input, as the paper's figure draws it).
    """

    method = "adaptformer"
    card_line = (
        "AdaptFormer: a scaled bottleneck MLP parallel to every block's FFN (backbone frozen), plus the decoder."
    )
    bottleneck: int = field(default=64, metadata={"help": "Bottleneck width."})
    scale: float = field(default=0.1, metadata={"help": "Fixed scale of the adapter branch."})
    input: str = field(default="residual", metadata={"help": "'residual' or 'normed' adapter input."})

    def __post_init__(self):
        super().__post_init__()
        _check_positive(self, "bottleneck")
        if self.input not in ("residual", "normed"):
            raise ValueError(f"AdaptFormerConfig.input must be 'residual' or 'normed', got {self.input!r}.")


class Bottleneck(nn.Module):
    def __init__(self, dim: int, bottleneck: int, scale: float):
        super().__init__()
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)
        self._input = None  # the captured FFN input of the current forward

    def forward(self, x):
        return self.up_proj(nn.functional.relu(self.down_proj(x))) * self.scale


def apply_adaptformer(model: nn.Module, config: AdaptFormerConfig | None = None) -> nn.Module:
    """Freeze the backbone of `model` and add a parallel bottleneck to each selected block's FFN."""
    config = AdaptFormerConfig() if config is None else config
    backbone, info = prepare_backbone(model, config)
    if info["model_type"] not in FFN_MODULES:
        raise NotImplementedError(f"AdaptFormer: no FFN layout known for {info['model_type']!r}.")
    norm_name, out_name = FFN_MODULES[info["model_type"]]
    adapters = nn.ModuleList(Bottleneck(info["hidden_size"], config.bottleneck, config.scale) for _ in info["layers"])
    backbone.adaptformer_adapters = adapters
    blocks = backbone_blocks(backbone)
    handles = []
    for adapter, i in zip(adapters, info["layers"]):
        block = blocks[i]
        norm, out = block.get_submodule(norm_name), block.get_submodule(out_name)
        handles.append(norm.register_forward_hook(_capture(adapter, config.input)))
        handles.append(out.register_forward_hook(_add(adapter)))
    record_install(backbone, config, info, handles=handles)
    return model


def _capture(adapter: Bottleneck, which: str):
    def hook(module, args, output):
        adapter._input = args[0] if which == "residual" else output

    return hook


def _add(adapter: Bottleneck):
    def hook(module, args, output):
        x, adapter._input = adapter._input, None  # release the tensor once used
        if x is None:
            raise RuntimeError("AdaptFormer: the FFN ran without its norm; unexpected block layout.")
        return output + adapter(x)

    return hook


def adaptformer_num_parameters(dim: int, num_layers: int, config: AdaptFormerConfig | None = None) -> int:
    config = AdaptFormerConfig() if config is None else config
    b = config.bottleneck
    return num_layers * (dim * b + b + b * dim + dim)
