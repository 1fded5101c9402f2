"""Eq. 5 and 7, and every selection criterion -> ``{name: per-entry score shaped like the weight}``.

Higher is more important everywhere; the tuner ranks all entries of all layers globally.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from ..tuner import FUSED_QKV_FAMILIES

CRITERIA = ("random", "random_q", "random_k", "random_v", "magnitude", "fim", "delta_fim", "dr_fim")
DATA_FREE = ("random", "random_q", "random_k", "random_v", "magnitude")

_GROUP_LEAVES = {
    "q": ("q_proj", "query", "q", "q_lin"),
    "k": ("k_proj", "key", "k", "k_lin"),
    "v": ("v_proj", "value", "v", "v_lin"),
}
_FUSED_LEAVES = tuple(sorted({s.split(".")[-1] for s in FUSED_QKV_FAMILIES.values()} | {"qkv"}))


def domain_sensitivity(fisher: torch.Tensor, fisher_shift: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 5: dF = |F(x) - F(x')| / (min(F(x), F(x')) + eps)."""
    return (fisher - fisher_shift).abs() / (torch.minimum(fisher, fisher_shift) + eps)


def shift_weight(abs_mean_sum: float, signed_mean_sum: float, mode: str = "abs_mean") -> float:
    """The factor exp(-(eps_mu + eps_sigma)) of Eq. 7 / 15 for one step's DSU draws.

    ``abs_mean`` (this project's reading, METHOD.md): exp(-(mean|eps_mu| + mean|eps_sigma|)), in
    (0, 1], smaller for a larger simulated shift. ``literal``: exp(-(mean eps_mu + mean eps_sigma))
    with the signed draws, as printed (can exceed 1).
    """
    return math.exp(-(abs_mean_sum if mode == "abs_mean" else signed_mean_sum))


def dr_fim(fisher: torch.Tensor, fisher_shift: torch.Tensor, weight: float, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 7: DRF = F(x) + w * dF, with dF from Eq. 5 and w the accumulated shift weight."""
    return fisher + weight * domain_sensitivity(fisher, fisher_shift, eps)


def qkv_group_mask(name: str, shape: torch.Size, group: str) -> torch.Tensor:
    """Bool mask of the entries of weight ``name`` that belong to attention group ``group`` (q, k or v).

    Separate projections match by leaf name (``q_proj``/``query``...); a fused qkv weight (SAM's
    ``attn.qkv``, rows ordered q, k, v) contributes its third of the rows.
    """
    leaf = name.split(".")[-1]
    mask = torch.zeros(tuple(shape), dtype=torch.bool)
    if leaf in _GROUP_LEAVES[group]:
        mask[:] = True
    elif leaf in _FUSED_LEAVES:
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
            f"{_GROUP_LEAVES[group]} and fused {_FUSED_LEAVES}); target the attention projections."
        )
    return out


def magnitude_scores(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``magnitude``: |W| per entry."""
    return {n: w.detach().abs().float().cpu() for n, w in weights.items()}


def data_free_scores(criterion: str, weights: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    if criterion == "magnitude":
        return magnitude_scores(weights)
    m = re.fullmatch(r"random(?:_([qkv]))?", criterion)
    if m is None:
        raise ValueError(f"{criterion!r} needs data; use estimate_scores.")
    return random_scores(weights, seed, m.group(1))
