"""The data-free scores: rank the targeted entries from the weights alone (`init_criterion` at injection, and the
`magnitude` / `random` criteria of `fishertune.fisher`). Higher is more important; the tuner ranks globally."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..backbones import fused_qkv_leaves

#: Leaf names of the separate q, k and v projections of the registered backbone families.
QKV_LEAVES = {
    "q": ("q_proj", "query", "q", "q_lin"),
    "k": ("k_proj", "key", "k", "k_lin"),
    "v": ("v_proj", "value", "v", "v_lin"),
}


def qkv_group_mask(name: str, shape: torch.Size, group: str) -> torch.Tensor:
    """Bool mask of the entries of weight ``name`` that belong to attention group ``group`` (q, k or v).

    Separate projections match by leaf name (``q_proj``/``query``...); a fused qkv weight (SAM's
    ``attn.qkv``, rows ordered q, k, v) contributes its third of the rows.
    """
    leaf = name.split(".")[-1]
    mask = torch.zeros(tuple(shape), dtype=torch.bool)
    if leaf in QKV_LEAVES[group]:
        mask[:] = True
    elif leaf in fused_qkv_leaves():
        rows = shape[0] // 3
        i = "qkv".index(group)
        mask[i * rows : (i + 1) * rows] = True
    return mask


def random_scores(weights: Mapping[str, torch.Tensor], seed: int, group: str | None = None) -> dict[str, torch.Tensor]:
    """``random``: U(0, 1) per entry. ``random_q/k/v``: in-group entries get 1 + U(0, 1), all others U(0, 1),
    so every in-group entry outranks every other one and the budget is spent inside the group."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        s = torch.rand(tuple(w.shape), generator=gen)
        if group is not None:
            s = s + qkv_group_mask(name, w.shape, group).float()
        out[name] = s
    if group is not None and not any(bool((s >= 1).any()) for s in out.values()):
        raise ValueError(
            f"criterion random_{group}: no targeted weight is a {group} projection (looked for leaf names "
            f"{QKV_LEAVES[group]} and fused {fused_qkv_leaves()}); target the attention projections."
        )
    return out


def magnitude_scores(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``magnitude``: |W| per entry."""
    return {n: w.detach().abs().float().cpu() for n, w in weights.items()}
