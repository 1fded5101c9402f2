"""Rein (Wei et al., CVPR 2024): learnable low-rank tokens that refine every block's patch features.

Follows the public `LoRAReins` code: after block l, with tokens T_l = A_l @ B_l ([m, r] @ [r, C]),
    attn    = softmax(f T_l^T / sqrt(C))                                   [N, m]
    delta_f = mlp_delta_f( attn[:, 1:] @ mlp_token2feat(T_l[1:]) + f )
    f      <- f + scale * delta_f                  (patch tokens only; CLS/registers untouched)
`mlp_token2feat`, `mlp_delta_f` and `scale` are shared by all layers; token 0 only enters the
softmax denominator, as in the original. The token-query link ("return_auto"): transform every
layer's tokens to the decoder width, take max / mean over layers and the last layer's tokens,
merge them to one query per token and use them as the Mask2Former query *position* embeddings
(HF `queries_embedder`); with `replace_query_feat` a linear map of them also replaces the query
*content* (`queries_features`), as `ReinMask2FormerHead(replace_query_feat=True)` does.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import backbone_blocks
from ._common import (
    BaselineConfig,
    _check_positive,
    first_tensor,
    prepare_backbone,
    record_install,
    replace_first,
    wrap_forward,
)


@dataclass
class ReinConfig(BaselineConfig):
    """Configuration of Rein; defaults are Rein's DINOv2 + Mask2Former configs.

    Args:
        token_length (`int`, defaults to 100): learnable tokens per layer (= Mask2Former queries when linked).
        lora_dim (`int`, defaults to 16): rank of the token factorization T = A @ B; 0 learns full tokens.
        query_dims (`int`, defaults to 256): decoder width the linked queries are mapped to.
        link_token_to_query (`bool`, *optional*): link tokens to the Mask2Former queries. `None` links
            when the model holds an HF Mask2Former transformer module, `True` requires one.
        replace_query_feat (`bool`, defaults to `True`): also replace the query content features.
        use_softmax (`bool`, defaults to `True`): softmax (scaled) feature-token similarity.
        scale_init (`float`, defaults to 1e-3): initial value of the learnable output scale.
        zero_mlp_delta_f (`bool`, defaults to `False`): zero-init `mlp_delta_f` and fix scale to 1
            (Rein's option; makes the method an exact identity at init).
    """

    method = "rein"
    card_line = "Rein: learnable low-rank tokens refining every block's features (backbone frozen), plus the decoder."
    token_length: int = field(default=100, metadata={"help": "Learnable tokens per layer."})
    lora_dim: int = field(default=16, metadata={"help": "Rank of T = A @ B; 0 for full tokens."})
    query_dims: int = field(default=256, metadata={"help": "Width of the linked decoder queries."})
    link_token_to_query: bool | None = field(default=None, metadata={"help": "None: link if a Mask2Former is found."})
    replace_query_feat: bool = field(default=True, metadata={"help": "Linked queries also replace query content."})
    use_softmax: bool = field(default=True, metadata={"help": "Scaled softmax over feature-token similarity."})
    scale_init: float = field(default=1e-3, metadata={"help": "Initial learnable output scale."})
    zero_mlp_delta_f: bool = field(default=False, metadata={"help": "Zero-init mlp_delta_f, scale fixed to 1."})

    def __post_init__(self):
        super().__post_init__()
        _check_positive(self, "token_length", "query_dims")
        if self.token_length < 2:
            raise ValueError("ReinConfig.token_length must be >= 2 (token 0 only enters the softmax).")
        if not isinstance(self.lora_dim, int) or self.lora_dim < 0:
            raise ValueError(f"ReinConfig.lora_dim must be an int >= 0, got {self.lora_dim!r}.")


class ReinTokens(nn.Module):
    """All of Rein's backbone-side parameters (one instance per backbone)."""

    def __init__(self, config: ReinConfig, num_layers: int, dim: int, patch_size: int, link: bool):
        super().__init__()
        self.config, self.dim = config, dim
        m, r = config.token_length, config.lora_dim
        if r:
            self.learnable_tokens_a = nn.Parameter(torch.empty(num_layers, m, r))
            self.learnable_tokens_b = nn.Parameter(torch.empty(num_layers, r, dim))
            val = math.sqrt(6.0 / float(3 * patch_size**2 + (dim * r) ** 0.5))
            nn.init.uniform_(self.learnable_tokens_a, -val, val)
            nn.init.uniform_(self.learnable_tokens_b, -val, val)
        else:
            self.learnable_tokens = nn.Parameter(torch.empty(num_layers, m, dim))
            val = math.sqrt(6.0 / float(3 * patch_size**2 + dim))
            nn.init.uniform_(self.learnable_tokens, -val, val)
        self.mlp_token2feat = nn.Linear(dim, dim)
        self.mlp_delta_f = nn.Linear(dim, dim)
        nn.init.kaiming_uniform_(self.mlp_token2feat.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.mlp_delta_f.weight, a=math.sqrt(5))
        if config.zero_mlp_delta_f:
            nn.init.zeros_(self.mlp_delta_f.weight)
            nn.init.zeros_(self.mlp_delta_f.bias)
            self.scale = 1.0
        else:
            self.scale = nn.Parameter(torch.tensor(float(config.scale_init)))
        if link:
            self.transform = nn.Linear(dim, config.query_dims)
            self.merge = nn.Linear(3 * config.query_dims, config.query_dims)

    def tokens(self, layer: int | None = None) -> torch.Tensor:
        """Tokens of one layer [m, C], or of all layers [L, m, C] when `layer` is None."""
        if self.config.lora_dim:
            if layer is None:
                return self.learnable_tokens_a @ self.learnable_tokens_b
            return self.learnable_tokens_a[layer] @ self.learnable_tokens_b[layer]
        return self.learnable_tokens if layer is None else self.learnable_tokens[layer]

    def refine(self, feats: torch.Tensor, layer: int) -> torch.Tensor:
        """f + scale * delta_f(f, T_layer) for patch features `feats` [B, N, C]."""
        tokens = self.tokens(layer)
        attn = torch.einsum("bnc,mc->bnm", feats, tokens)
        if self.config.use_softmax:
            attn = F.softmax(attn * self.dim**-0.5, dim=-1)
        delta = torch.einsum("bnm,mc->bnc", attn[..., 1:], self.mlp_token2feat(tokens[1:]))
        return feats + self.mlp_delta_f(delta + feats) * self.scale

    def queries(self) -> torch.Tensor:
        """The linked decoder queries [m, query_dims] (Rein's `return_auto`)."""
        tokens = self.transform(self.tokens()).permute(1, 2, 0)  # [m, Q, L]
        pooled = torch.cat(
            [tokens.amax(-1, keepdim=True), tokens.mean(-1, keepdim=True), tokens[..., -1:]], dim=-1
        )  # [m, Q, 3], flattened interleaved exactly like Rein's `flatten(-2, -1)`
        return self.merge(pooled.flatten(-2, -1))


class ReinQueryEmbedding(nn.Module):
    """Stands in for HF Mask2Former's `queries_embedder`: its `weight` is Rein's merged queries."""

    def __init__(self, rein: ReinTokens):
        super().__init__()
        object.__setattr__(self, "_rein", rein)  # not a submodule: its parameters live in the backbone

    @property
    def weight(self) -> torch.Tensor:
        return self._rein.queries()


class ReinQueryFeatures(nn.Module):
    """Stands in for `queries_features`: content = linear(Rein queries) (`querys2feat` in Rein)."""

    def __init__(self, rein: ReinTokens, dims: int):
        super().__init__()
        object.__setattr__(self, "_rein", rein)
        self.rein_querys2feat = nn.Linear(dims, dims)

    @property
    def weight(self) -> torch.Tensor:
        return self.rein_querys2feat(self._rein.queries())


def _find_query_module(model: nn.Module) -> tuple[str, nn.Module] | None:
    for name, module in model.named_modules():
        embedder = getattr(module, "queries_embedder", None)
        if isinstance(embedder, nn.Embedding) and isinstance(getattr(module, "queries_features", None), nn.Embedding):
            return name, module
    return None


def apply_rein(model: nn.Module, config: ReinConfig | None = None) -> nn.Module:
    """Freeze the backbone of `model`, install Rein after each selected block; link the queries if asked."""
    config = ReinConfig() if config is None else config
    backbone, info = prepare_backbone(model, config)
    found = _find_query_module(model)
    link = config.link_token_to_query
    if link and found is None:
        raise ValueError("link_token_to_query=True but the model has no HF Mask2Former `queries_embedder`.")
    link = found is not None if link is None else link
    if link:
        num_queries, width = found[1].queries_embedder.weight.shape
        if (num_queries, width) != (config.token_length, config.query_dims):
            raise ValueError(
                f"Rein's token-query link needs token_length == num_queries and query_dims == decoder width; "
                f"got tokens ({config.token_length}, {config.query_dims}) vs queries ({num_queries}, {width})."
            )
    patch = getattr(backbone.config, "patch_size", 16)
    patch = patch if isinstance(patch, int) else patch[0]
    rein = ReinTokens(config, len(info["layers"]), info["hidden_size"], patch, link)
    backbone.rein_tokens = rein
    npt = info["num_prefix_tokens"]
    blocks = backbone_blocks(backbone)
    for j, i in enumerate(info["layers"]):
        wrap_forward(blocks[i], _rein_forward(rein, j, npt))
    if link:
        head = found[1]
        head.queries_embedder = ReinQueryEmbedding(rein)
        if config.replace_query_feat:
            head.queries_features = ReinQueryFeatures(rein, config.query_dims)
    elif config.link_token_to_query is None:
        warnings.warn("Rein: no Mask2Former queries found; tokens refine features only (no query link).")
    resolved = ReinConfig.from_dict({**config.to_dict(), "link_token_to_query": link})
    record_install(backbone, resolved, info, head_path=found[0] if link else None)
    return model


def _rein_forward(rein: ReinTokens, layer: int, npt: int):
    def make(original):
        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            hidden = first_tensor(out)
            refined = rein.refine(hidden[:, npt:], layer)
            return replace_first(out, torch.cat([hidden[:, :npt], refined], dim=1))

        return forward

    return make


def rein_num_parameters(dim: int, num_layers: int, config: ReinConfig | None = None, link: bool = True) -> int:
    """Rein's backbone-side parameter count (the paper's 2.99M for DINOv2-L); `querys2feat` excluded."""
    config = ReinConfig() if config is None else config
    m, r, q = config.token_length, config.lora_dim, config.query_dims
    tokens = num_layers * (m * r + r * dim) if r else num_layers * m * dim
    mlps = 2 * (dim * dim + dim) + (0 if config.zero_mlp_delta_f else 1)
    return tokens + mlps + ((dim * q + q) + (3 * q * q + q) if link else 0)
