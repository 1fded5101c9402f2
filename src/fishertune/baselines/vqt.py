"""VQT (Tu et al., CVPR 2023): learnable query tokens that summarize each block's features.

At block l the queries Q_l are appended to the block input and the *frozen* block runs on
[Z_l, Q_l] with an attention mask that stops Z_l from attending to Q_l: the queries read the
block's intermediate features, the patch/CLS tokens are computed exactly as without VQT (up to
float summation order), and the block output passed on is Z_{l+1} alone. The query outputs of all
blocks, `vqt_features(model)` -> [B, L, T, C], are what VQT hands to the head (the paper
concatenates them with the final CLS for a linear classifier). Init follows VPT's uniform rule.

Heads (see `vqt_heads.py`): `apply_vqt` links the queries to the segmentation head it finds, the
light head (an image-level linear classifier on the layer-concatenated mean query outputs, added to
every pixel's logits) or HF Mask2Former (the outputs, pooled over layers as Rein's token-query
link pools its tokens, are added to the per-image decoder query content). Both links end in a
zero-initialised map, so installing VQT leaves the predictions unchanged; their parameters are
`vqt_`-prefixed and saved with the queries. EoMT is refused (`NotImplementedError`): its last
blocks already run its own queries under a masked attention, and it has no decoder to read ours.

EVA02 (timm): timm's EVA attention rotates every token after its `num_prefix_tokens` by the RoPE
table of the patch grid, so the queries are placed right after CLS/registers, [prefix, Q_l, patches],
and counted as prefix tokens for the block's call (`eva02.extra_prefix_tokens`): they are not
rotated (no position, as appended tokens in VQT) and the patches keep their rotation. The mask is
the same (no original token attends to a query; queries attend to everything, themselves included),
passed as timm's `attn_mask`; token order does not otherwise matter to attention, so this is the
appended-query computation. Light and Mask2Former links work unchanged on EVA02 segmenters.
Refused there: an incoming mask or causal attention, and blocks without timm's `num_prefix_tokens`.

Not reproduced: VQT defines no segmentation head; the two links above are our reading of its
linear classifier for dense prediction. VQT's optional feature compression of the query outputs
is not implemented.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..backbones import backbone_blocks
from ..backbones.eva02 import check_extra_token_blocks, extra_prefix_tokens
from ._common import (
    BaselineConfig,
    _check_positive,
    first_tensor,
    installed_state,
    prepare_backbone,
    record_install,
    replace_first,
    resolve_backbone,
    wrap_forward,
)
from .vqt_heads import install_link, link_num_parameters, vqt_head

_UNSUPPORTED = {
    "eomt": "its last blocks run EoMT's own queries under a masked attention, and no decoder reads ours",
}


@dataclass
class VQTConfig(BaselineConfig):
    """Configuration of VQT.

    Args:
        num_queries (`int`, defaults to 10): query tokens per block (the paper sweeps 1 to 20 or so).
        link_to_head (`bool`, *optional*): let the segmentation head read the query outputs (light
            head or HF Mask2Former, see `vqt_heads.py`). `None` links when such a head is found,
            `True` requires one, `False` only exposes them through `vqt_features`.
    """

    method = "vqt"
    card_line = (
        "VQT: learnable query tokens summarizing every block's features for the head (backbone frozen), "
        "plus the decoder."
    )
    num_queries: int = field(default=10, metadata={"help": "Query tokens per block."})
    link_to_head: bool | None = field(default=None, metadata={"help": "None: link if a known head is found."})

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

    def features(self, batch_size: int | None = None) -> torch.Tensor:
        """Query outputs of the last forward, [batch, num_layers, num_queries, hidden]."""
        if len(self.outputs) != self.query_embeddings.shape[0]:
            raise RuntimeError("vqt_features: run a forward pass of the model first.")
        stacked = torch.stack([self.outputs[j] for j in sorted(self.outputs)], dim=1)
        # A head run on its own after a forward of another batch would silently read stale queries.
        if batch_size is not None and stacked.shape[0] != batch_size:
            raise RuntimeError(f"VQT holds queries of a batch of {stacked.shape[0]}, the head got {batch_size}.")
        return stacked


def apply_vqt(model: nn.Module, config: VQTConfig | None = None) -> nn.Module:
    """Freeze the backbone of `model`; learn queries that read each selected block and link them to the head."""
    config = VQTConfig() if config is None else config
    _, family, found_backbone = resolve_backbone(model)
    mtype = family.name
    if mtype in _UNSUPPORTED:  # checked before prepare_backbone freezes anything
        raise NotImplementedError(f"VQT on {mtype.upper()}: {_UNSUPPORTED[mtype]}.")
    if mtype == "eva02":
        check_extra_token_blocks(backbone_blocks(found_backbone), "VQT")
    found = vqt_head(model) if config.link_to_head is not False else None
    if config.link_to_head and found is None:
        raise ValueError("link_to_head=True but the model has no light head nor HF Mask2Former queries.")
    backbone, info = prepare_backbone(model, config)
    patch = getattr(backbone.config, "patch_size", 16)
    queries = VQTQueries(
        len(info["layers"]), config.num_queries, info["hidden_size"], patch if isinstance(patch, int) else patch[0]
    )
    backbone.vqt_queries = queries
    blocks = backbone_blocks(backbone)
    for j, i in enumerate(info["layers"]):
        if mtype == "eva02":
            wrap_forward(blocks[i], _vqt_forward_eva02(queries, j, info["num_prefix_tokens"], blocks[i]))
        else:
            wrap_forward(blocks[i], _vqt_forward(queries, j))
    if found is not None:
        install_link(found, queries, len(info["layers"]), info["hidden_size"])
    elif config.link_to_head is None:
        warnings.warn("VQT: no light head nor Mask2Former found; the queries only feed `vqt_features`.")
    resolved = VQTConfig.from_dict({**config.to_dict(), "link_to_head": found is not None})
    record_install(backbone, resolved, info, head_path=found[0] if found else None)
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
            mask = _query_mask(x, n, q.shape[0])
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


def _query_mask(x: torch.Tensor, start: int, num: int) -> torch.Tensor:
    """Additive [1, 1, S, S] mask of `x` [B, S, C] whose tokens start:start+num are VQT queries.

    Rows are attention queries, columns keys: the original tokens never see the VQT queries; the
    VQT queries see every token.
    """
    size = x.shape[1]
    is_query = torch.zeros(size, dtype=torch.bool, device=x.device)
    is_query[start : start + num] = True
    mask = x.new_zeros(1, 1, size, size)
    return mask.masked_fill(~is_query[:, None] & is_query[None, :], torch.finfo(x.dtype).min)


def _vqt_forward_eva02(queries: VQTQueries, layer: int, npt: int, block: nn.Module):
    """timm EvaBlock: the queries sit after the prefix and count as prefix tokens, so RoPE skips them."""

    def make(original):
        def forward(x, rope=None, attn_mask=None, is_causal=False):
            if attn_mask is not None or is_causal:
                raise NotImplementedError("VQT on EVA02 with an incoming attention mask or causal attention.")
            q = queries.query_embeddings[layer].to(x.dtype)
            t = q.shape[0]
            x = torch.cat([x[:, :npt], q.unsqueeze(0).expand(x.shape[0], -1, -1), x[:, npt:]], dim=1)
            with extra_prefix_tokens(block, t):
                y = original(x, rope=rope, attn_mask=_query_mask(x, npt, t))
            queries.outputs[layer] = y[:, npt : npt + t]
            return torch.cat([y[:, :npt], y[:, npt + t :]], dim=1)

        return forward

    return make


def vqt_features(model: nn.Module) -> torch.Tensor:
    """Query outputs of the last forward pass, [batch, num_layers, num_queries, hidden]."""
    backbone, state = installed_state(model)
    if state["config"].method != "vqt":
        raise ValueError(f"vqt_features needs a VQT model, this one has '{state['config'].method}'.")
    return backbone.vqt_queries.features()


def vqt_num_parameters(dim: int, num_layers: int, config: VQTConfig | None = None, head: dict | None = None) -> int:
    """Queries, plus the head link for `head = vqt_head(model)[2]` (light head or Mask2Former) when given."""
    config = VQTConfig() if config is None else config
    link = link_num_parameters(head, dim, num_layers, config.num_queries) if config.link_to_head is not False else 0
    return num_layers * config.num_queries * dim + link
