"""Fig. 6: the sensitivity map, blocks x {Q, K, V, FFN}: mean score and selected fraction."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Optional

import torch

from ..backbones import fused_qkv_leaves
from ..tuner.data_free import QKV_LEAVES

GROUPS = ("Q", "K", "V", "FFN")


def _block_index(name: str) -> Optional[int]:
    m = re.search(r"(?:^|\.)(?:layer|layers|blocks|block|h)\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _as_mask(sel: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if sel.dtype == torch.bool:
        return sel.reshape(shape).cpu()
    mask = torch.zeros(int(torch.tensor(shape).prod()), dtype=torch.bool)
    mask[sel.reshape(-1).long().cpu()] = True
    return mask.view(shape)


def sensitivity_table(
    scores: Mapping[str, torch.Tensor], selected: Optional[Mapping[str, torch.Tensor]] = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(mean score [4, L], selected fraction [4, L], L)`` over blocks (columns) and Q, K, V, FFN (rows).

    Q/K/V come from the projection names (a fused qkv weight is split in thirds of rows); every
    other targeted linear of a block counts as FFN. Cells with no entry are NaN.
    """
    cells: dict[tuple[int, int], list[float]] = {}
    for name, s in scores.items():
        blk = _block_index(name)
        if blk is None:
            continue
        s = s.detach().float().cpu()
        mask = (
            _as_mask(selected[name], s.shape)
            if selected is not None and name in selected
            else torch.zeros_like(s, dtype=torch.bool)
        )
        leaf = name.split(".")[-1]
        parts = []
        if leaf in fused_qkv_leaves():
            r = s.shape[0] // 3
            parts = [(g, slice(g * r, (g + 1) * r)) for g in range(3)]
        else:
            g = next((i for i, k in enumerate("qkv") if leaf in QKV_LEAVES[k]), 3)
            parts = [(g, slice(None))]
        for g, rows in parts:
            acc = cells.setdefault((g, blk), [0.0, 0.0, 0.0])
            acc[0] += float(s[rows].sum())
            acc[1] += float(mask[rows].sum())
            acc[2] += s[rows].numel()
    num_blocks = max((b for _, b in cells), default=-1) + 1
    mean = torch.full((4, num_blocks), float("nan"))
    frac = torch.full((4, num_blocks), float("nan"))
    for (g, b), (tot, sel, n) in cells.items():
        mean[g, b], frac[g, b] = tot / n, sel / n
    return mean, frac, num_blocks


def plot_sensitivity_map(
    scores: Mapping[str, torch.Tensor],
    selected: Optional[Mapping[str, torch.Tensor]],
    path: str | os.PathLike,
) -> str:
    """Draw Fig. 6 to a PNG at ``path``: log10 mean score and (if ``selected`` is given: bool masks
    shaped like the weights, or flat indices) the selected fraction, per block and Q/K/V/FFN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, frac, num_blocks = sensitivity_table(scores, selected)
    if num_blocks == 0:
        raise ValueError("No score key names a block (like 'encoder.layer.3.attention.q_proj'); nothing to draw.")
    positive = bool((mean[~mean.isnan()] > 0).all())
    shown = mean.clamp_min(1e-30).log10() if positive else mean
    panels = [(shown, "log10 mean score" if positive else "mean score", "viridis")]
    if selected is not None:
        panels.append((frac, "selected fraction", "magma"))
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(max(4.0, 0.45 * num_blocks + 2), 2.2 * len(panels)), squeeze=False
    )
    for ax, (data, title, cmap) in zip(axes[:, 0], panels):
        im = ax.imshow(data.numpy(), aspect="auto", cmap=cmap)
        ax.set_yticks(range(4), GROUPS)
        ax.set_xticks(range(num_blocks), [str(i + 1) for i in range(num_blocks)])
        ax.set_xlabel("block")
        ax.set_title(title)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    return str(path)
