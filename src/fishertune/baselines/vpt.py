"""VPT-deep (Jia et al., ECCV 2022): learnable prompt tokens prepended at every block.

Before block l the sequence [prefix, patches] becomes [prefix, P_l, patches]; after the block the
prompt outputs are dropped, so block l+1 sees fresh prompts P_{l+1} (the "deep" variant) and every
block output seen outside (pyramid taps, `output_hidden_states`, the final output) keeps its usual
shape and token order. Prompts are inserted after the embeddings (position embeddings included),
so they carry no position embedding, as in VPT; "prefix" is CLS plus any register tokens.
Initialization follows VPT: uniform(+-sqrt(6 / (3 * patch^2 + C))); prompt dropout 0 by default
(VPT's `PROMPT.DROPOUT` default).

EVA02 (timm): the same layout [prefix, P_l, patches]; the block's attention counts the prompts as
prefix tokens while they are present (`eva02.extra_prefix_tokens`), so timm's RoPE rotates the
patches exactly as without VPT and never the prompts, which carry no position at all, as in VPT.
Reproduced there: deep prompts per block, dropped after it, outputs without prompts. Not supported
(`NotImplementedError`): an incoming attention mask or causal attention (the backbones pass none),
and blocks whose attention has no timm `num_prefix_tokens`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbones import backbone_blocks
from ..backbones.eva02 import check_extra_token_blocks, extra_prefix_tokens
from ._common import (
    BaselineConfig,
    _check_positive,
    first_tensor,
    prepare_backbone,
    record_install,
    replace_first,
    resolve_backbone,
    wrap_forward,
)


@dataclass
class VPTConfig(BaselineConfig):
    """Configuration of VPT-deep.

    Args:
        num_tokens (`int`, defaults to 150): prompts per block. 150 reproduces the 3.69M trainable
            parameters that Rein's comparison (Table 4 of Rein) reports for VPT on DINOv2-L.
        dropout (`float`, defaults to 0.0): dropout on the prompts (VPT's `PROMPT.DROPOUT`).
    """

    method = "vpt"
    card_line = "VPT-deep: learnable prompt tokens prepended at every block (backbone frozen), plus the decoder."
    num_tokens: int = field(default=150, metadata={"help": "Prompt tokens per block."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the prompt embeddings."})

    def __post_init__(self):
        super().__post_init__()
        _check_positive(self, "num_tokens")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VPTConfig.dropout must be in [0, 1), got {self.dropout}.")


class VPTPrompts(nn.Module):
    def __init__(self, config: VPTConfig, num_layers: int, dim: int, patch_size: int):
        super().__init__()
        self.prompt_embeddings = nn.Parameter(torch.empty(num_layers, config.num_tokens, dim))
        val = math.sqrt(6.0 / float(3 * patch_size**2 + dim))
        nn.init.uniform_(self.prompt_embeddings, -val, val)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, layer: int, batch: int) -> torch.Tensor:
        return self.dropout(self.prompt_embeddings[layer]).unsqueeze(0).expand(batch, -1, -1)


def apply_vpt(model: nn.Module, config: VPTConfig | None = None) -> nn.Module:
    """Freeze the backbone of `model` and prepend learnable prompts at each selected block."""
    config = VPTConfig() if config is None else config
    _, family, found = resolve_backbone(model)
    mtype = family.name
    if mtype == "eva02":  # checked before prepare_backbone freezes anything
        check_extra_token_blocks(backbone_blocks(found), "VPT")
    backbone, info = prepare_backbone(model, config)
    patch = getattr(backbone.config, "patch_size", 16)
    prompts = VPTPrompts(
        config, len(info["layers"]), info["hidden_size"], patch if isinstance(patch, int) else patch[0]
    )
    backbone.vpt_prompts = prompts
    blocks = backbone_blocks(backbone)
    npt, num = info["num_prefix_tokens"], config.num_tokens
    for j, i in enumerate(info["layers"]):
        if mtype == "eva02":
            wrap_forward(blocks[i], _vpt_forward_eva02(prompts, j, npt, num, blocks[i]))
        else:
            wrap_forward(blocks[i], _vpt_forward(prompts, j, npt, num))
    record_install(backbone, config, info)
    return model


def _vpt_forward(prompts: VPTPrompts, layer: int, npt: int, num: int):
    def make(original):
        def forward(hidden_states, *args, **kwargs):
            mask = kwargs.get("attention_mask", args[0] if args else None)
            if mask is not None:
                raise NotImplementedError("VPT with an attention mask is not supported (vision backbones pass none).")
            prompt = prompts(layer, hidden_states.shape[0]).to(hidden_states.dtype)
            x = torch.cat([hidden_states[:, :npt], prompt, hidden_states[:, npt:]], dim=1)
            out = original(x, *args, **kwargs)
            y = first_tensor(out)
            return replace_first(out, torch.cat([y[:, :npt], y[:, npt + num :]], dim=1))

        return forward

    return make


def _vpt_forward_eva02(prompts: VPTPrompts, layer: int, npt: int, num: int, block: nn.Module):
    """timm EvaBlock: the prompts sit after the prefix and count as prefix tokens, so RoPE skips them."""

    def make(original):
        def forward(x, rope=None, attn_mask=None, is_causal=False):
            if attn_mask is not None or is_causal:
                raise NotImplementedError("VPT on EVA02 with an attention mask or causal attention is not supported.")
            prompt = prompts(layer, x.shape[0]).to(x.dtype)
            with extra_prefix_tokens(block, num):
                y = original(torch.cat([x[:, :npt], prompt, x[:, npt:]], dim=1), rope=rope)
            return torch.cat([y[:, :npt], y[:, npt + num :]], dim=1)

        return forward

    return make


def vpt_num_parameters(dim: int, num_layers: int, config: VPTConfig | None = None) -> int:
    config = VPTConfig() if config is None else config
    return num_layers * config.num_tokens * dim
