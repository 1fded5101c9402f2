"""VQT (Tu et al., CVPR 2023): learnable query tokens that summarize each block's features.

At block l the queries Q_l are appended to the block input and the *frozen* block runs on
[Z_l, Q_l] with an attention mask that stops Z_l from attending to Q_l: the queries read the
block's intermediate features, the patch/CLS tokens are computed exactly as without VQT (up to
float summation order), and the block output passed on is Z_{l+1} alone. The query outputs of all
blocks, `vqt_features(model)` -> [B, L, T, C], are what VQT hands to the head (the paper
concatenates them with the final CLS for a linear classifier). Init follows VPT's uniform rule.

Not reproduced: VQT has no segmentation head; the HF decoders here do not consume these features,
so VQT in a segmentation model needs a head that reads `vqt_features` (e.g. as extra decoder
queries). VQT's optional feature compression of the query outputs is not implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ._common import (
    BaselineConfig,
    _check_positive,
    backbone_blocks,
    first_tensor,
    installed_state,
    prepare_backbone,
    record_install,
    replace_first,
    wrap_forward,
)


@dataclass
class VQTConfig(BaselineConfig):
    """Configuration of VQT.

    Args:
        num_queries (`int`, defaults to 10): query tokens per block (the paper sweeps 1 to 20 or so).
    """

    method = "vqt"
    num_queries: int = field(default=10, metadata={"help": "Query tokens per block."})

    def __post_init__(self):
        super().__post_init__()
        _check_positive(self, "num_queries")


class VQTQueries(nn.Module):
    def __init__(self, num_layers: int, num_queries: int, dim: int, patch_size: int):
        super().__init__()
        self.query_embeddings = nn.Parameter(torch.empty(num_layers, num_queries, dim))
        val = math.sqrt(6.0 / float(3 * patch_size**2 + dim))
        nn.init.uniform_(self.query_embeddings, -val, val)
        self.outputs: dict[int, torch.Tensor] = {}  # query outputs of the last forward, per layer


def apply_vqt(model: nn.Module, config: VQTConfig | None = None) -> nn.Module:
    """Freeze the backbone of `model`; learn queries that read each selected block. Outputs are unchanged."""
    config = VQTConfig() if config is None else config
    backbone, info = prepare_backbone(model, config)
    if info["model_type"] == "eva02":
        raise NotImplementedError("VQT on EVA02: its blocks apply RoPE to a fixed number of tokens.")
    patch = getattr(backbone.config, "patch_size", 16)
    queries = VQTQueries(len(info["layers"]), config.num_queries, info["hidden_size"],
                         patch if isinstance(patch, int) else patch[0])
    backbone.vqt_queries = queries
    blocks = backbone_blocks(backbone)
    for j, i in enumerate(info["layers"]):
        wrap_forward(blocks[i], _vqt_forward(queries, j))
    record_install(backbone, config, info)
    return model


def _vqt_forward(queries: VQTQueries, layer: int):
    def make(original):
        def forward(hidden_states, *args, **kwargs):
            args = list(args)
            if (args and args[0] is not None) or kwargs.get("attention_mask") is not None:
                raise NotImplementedError("VQT with an incoming attention mask is not supported.")
            b, n, _ = hidden_states.shape
            q = queries.query_embeddings[layer].to(hidden_states.dtype)
            x = torch.cat([hidden_states, q.unsqueeze(0).expand(b, -1, -1)], dim=1)
            t = q.shape[0]
            # Additive mask: rows are queries of attention, columns keys. Original tokens never see Q.
            mask = hidden_states.new_zeros(1, 1, n + t, n + t)
            mask[..., :n, n:] = torch.finfo(hidden_states.dtype).min
            if args:
                args[0] = mask
            else:
                kwargs["attention_mask"] = mask
            out = original(x, *args, **kwargs)
            y = first_tensor(out)
            queries.outputs[layer] = y[:, n:]
            return replace_first(out, y[:, :n])

        return forward

    return make


def vqt_features(model: nn.Module) -> torch.Tensor:
    """Query outputs of the last forward pass, [batch, num_layers, num_queries, hidden]."""
    backbone, state = installed_state(model)
    if state["config"].method != "vqt":
        raise ValueError(f"vqt_features needs a VQT model, this one has '{state['config'].method}'.")
    outputs = backbone.vqt_queries.outputs
    if len(outputs) != backbone.vqt_queries.query_embeddings.shape[0]:
        raise RuntimeError("vqt_features: run a forward pass of the model first.")
    return torch.stack([outputs[j] for j in sorted(outputs)], dim=1)


def vqt_num_parameters(dim: int, num_layers: int, config: VQTConfig | None = None) -> int:
    config = VQTConfig() if config is None else config
    return num_layers * config.num_queries * dim
