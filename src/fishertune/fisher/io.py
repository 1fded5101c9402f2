"""Scores as safetensors: one fp32 tensor per targeted module name."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import torch
from safetensors.torch import load_file, save_file


def save_scores(scores: Mapping[str, torch.Tensor], path: str | os.PathLike) -> str:
    """Write ``{module name: score tensor}`` to ``path`` (safetensors, fp32, CPU). Returns the path."""
    tensors = {n: s.detach().float().cpu().contiguous() for n, s in scores.items()}
    # safetensors may reorder keys; the module order breaks ties in the tuner's ranking, so keep it.
    meta = {"format": "pt", "content": "fishertune-scores", "order": json.dumps(list(tensors))}
    save_file(tensors, str(path), metadata=meta)
    return str(path)


def load_scores(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read scores written by `save_scores`; keys keep the order they were saved in."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        order = json.loads((f.metadata() or {}).get("order", "[]"))
    tensors = load_file(str(path))
    order = [n for n in order if n in tensors] + [n for n in tensors if n not in order]
    return {n: tensors[n] for n in order}


_STAT_TENSORS = ("fisher", "fisher_shift", "weighted_delta")
_STAT_SCALARS = ("weight", "floor", "gamma", "num_weighted", "batch_weights")


def save_statistics(stats, path: str | os.PathLike) -> str:
    """Write an `EstimationStats` (F, F', the per-batch weighted dF, the precisions and the scalars) so that
    `scores_from_stats(load_statistics(path), config)` scores any Fisher criterion / exchange without a pass."""
    tensors, order = {}, []
    groups = {k: getattr(stats, k) for k in _STAT_TENSORS} | {k: v for k, v in stats.extra.items() if v is not None}
    for group, values in groups.items():
        for n, t in (values or {}).items():
            tensors[f"{group}/{n}"] = t.detach().float().cpu().contiguous()
            order.append(f"{group}/{n}")
    meta = {
        "format": "pt",
        "content": "fishertune-statistics",
        "order": json.dumps(order),
        "scalars": json.dumps({k: getattr(stats, k) for k in _STAT_SCALARS}),
    }
    save_file(tensors, str(path), metadata=meta)
    return str(path)


def load_statistics(path: str | os.PathLike):
    """Read statistics written by `save_statistics` back into an `EstimationStats`."""
    from safetensors import safe_open

    from .passes import EstimationStats

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("content") != "fishertune-statistics":
        raise ValueError(f"{path} is not a fishertune statistics file (content={meta.get('content')!r}).")
    tensors = load_file(str(path))
    groups: dict[str, dict] = {}
    for key in json.loads(meta["order"]):
        group, name = key.split("/", 1)
        groups.setdefault(group, {})[name] = tensors[key]
    extra = {k: v for k, v in groups.items() if k not in _STAT_TENSORS}
    # files written before batch_weights existed lack it: the dataclass default (empty) stands in
    return EstimationStats(**{k: groups.get(k) for k in _STAT_TENSORS}, **json.loads(meta["scalars"]), extra=extra)
