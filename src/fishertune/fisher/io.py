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
