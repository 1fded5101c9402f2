"""One global ranking of all targeted weight entries by a per-entry score."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass
class LayerSelection:
    """The allocated entries of one layer.

    Args:
        indices: flat indices into the layer's weight, ordered by global rank (best first).
        ranks: the global rank (0 = best over all layers) of each entry of ``indices``; ascending.
    """

    indices: torch.Tensor
    ranks: torch.Tensor


def global_topk(
    scores: Mapping[str, torch.Tensor],
    fraction: float,
    shapes: Mapping[str, torch.Size] | None = None,
    num_entries: int | None = None,
) -> dict[str, LayerSelection]:
    """Rank all entries of all ``scores`` together and allocate the top ``fraction`` of them.

    The budget is ``round(fraction * N)`` entries with N the total number of scored entries, so a
    layer gets as many as its scores earn (no per-layer quota). Ties are broken deterministically
    by position: layers in the order of ``scores``, then flat index within the layer, so the same
    scores always give the same selection on every rank and every run.

    Args:
        scores: ``{layer name: score tensor shaped like its weight}``. Higher is more important.
        fraction: the share of all entries to allocate (``delta_max``).
        shapes: if given, the expected weight shape of every layer; a mismatch is an error.
        num_entries: if given, allocate exactly this many entries instead of ``round(fraction * N)``
            (a budget counted on another base, see ``FisherTuneConfig.budget_base``).

    Returns:
        ``{layer name: LayerSelection}`` for every layer in ``scores`` (empty tensors where a
        layer got nothing).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    names = list(scores)
    if not names:
        raise ValueError("No scores given: pass one score tensor per targeted layer.")
    flat = []
    for name in names:
        s = scores[name]
        if shapes is not None and tuple(s.shape) != tuple(shapes[name]):
            raise ValueError(
                f"Score tensor for '{name}' has shape {tuple(s.shape)} but the layer's weight has shape "
                f"{tuple(shapes[name])}: scores must be shaped like the weight they rank."
            )
        s = s.detach().reshape(-1).float()
        bad = ~torch.isfinite(s)
        if bad.any():
            raise ValueError(
                f"Score tensor for '{name}' holds {int(bad.sum())} NaN/inf values; fix the statistic that "
                "produced it (see fishertune.fisher) before selecting."
            )
        flat.append(s.cpu())
    sizes = [f.numel() for f in flat]
    allv = torch.cat(flat)
    total = allv.numel()
    k = int(round(fraction * total)) if num_entries is None else int(num_entries)
    k = max(1, min(k, total))

    # Threshold on the k-th largest value, then complete with the first tied entries by position.
    thr = torch.kthvalue(allv, total - k + 1).values
    above = torch.nonzero(allv > thr).squeeze(1)
    ties = torch.nonzero(allv == thr).squeeze(1)[: k - above.numel()]
    chosen = torch.sort(torch.cat([above, ties])).values
    # Stable sort on descending score keeps position order among equal scores.
    order = torch.sort(-allv[chosen], stable=True).indices
    ranked = chosen[order]
    rank_of = torch.empty_like(ranked)
    rank_of[order] = torch.arange(k, dtype=ranked.dtype)

    offsets = torch.tensor([0] + sizes).cumsum(0)
    layer_of = torch.searchsorted(offsets[1:], chosen, right=True)
    out: dict[str, LayerSelection] = {}
    for i, name in enumerate(names):
        sel = layer_of == i
        pos = chosen[sel] - offsets[i]
        r = rank_of[sel]
        o = torch.argsort(r)
        out[name] = LayerSelection(indices=pos[o].long(), ranks=r[o].long())
    return out
