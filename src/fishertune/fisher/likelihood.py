"""The likelihood behind every Fisher statistic: the model's per-pixel (or per-image) class
distribution, label sampling for the true Fisher (Eq. 4) and the per-sample negative log-likelihood.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .perturb import unwrap_model

#: ``log_prob_fn(model, outputs, batch) -> [B, C, ...]`` log-space class scores (softmax over dim 1).
LogProbFn = Callable[[nn.Module, Any, Mapping[str, torch.Tensor]], torch.Tensor]

SEG_IGNORE_INDEX = 255  # dense labels only: 255 is a real class id for a 1000-way classifier
HF_IGNORE_INDEX = -100


def default_log_prob_fn(model: nn.Module, outputs: Any, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Log-space class scores of the prediction.

    A segmentation model of the package exposes ``semantic_logits(outputs, size) -> [B, C, H, W]``
    (the evaluator's argmax uses the same function), called with the label size; anything else is
    treated as a classifier and ``outputs.logits`` (or ``outputs`` itself, if a tensor) is used.
    """
    base = unwrap_model(model)
    if hasattr(base, "semantic_logits"):
        labels = batch.get("labels")
        size = tuple(labels.shape[-2:]) if labels is not None else tuple(batch["pixel_values"].shape[-2:])
        return base.semantic_logits(outputs, size)
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise TypeError(
            "Could not find class scores in the model outputs: the model has no `semantic_logits(outputs, size)` "
            "and its outputs have no `.logits`. Pass `log_prob_fn=lambda model, outputs, batch: <[B, C, ...] scores>`."
        )
    return logits


def valid_mask(labels: torch.Tensor) -> torch.Tensor:
    """Entries that count: not -100, and not 255 for dense (segmentation) labels."""
    mask = labels != HF_IGNORE_INDEX
    if labels.dim() > 1:
        mask &= labels != SEG_IGNORE_INDEX
    return mask


def sample_labels(
    log_probs: torch.Tensor, generator: torch.Generator, offset: int = 0, global_size: Optional[int] = None
) -> torch.Tensor:
    """Eq. 4: draw y ~ p_theta(y | x) independently per sample and per pixel (one draw each).

    Inverse-CDF sampling with one uniform per position, drawn on the generator's device for the
    global batch and sliced at ``offset`` so that every rank gives a sample the same label.
    """
    b, c = log_probs.shape[:2]
    probs = torch.softmax(log_probs.detach().float(), dim=1).movedim(1, -1)  # [B, ..., C]
    total = b if global_size is None else global_size
    u = torch.rand((total, *probs.shape[1:-1]), generator=generator, device=generator.device)
    u = u[offset : offset + b].to(probs.device)
    cdf = probs.cumsum(-1)
    return (cdf < u.unsqueeze(-1) * cdf[..., -1:]).sum(-1).clamp_max(c - 1)


def per_sample_nll(
    log_probs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_i [B], n_i [B])``: mean negative log-likelihood over the valid pixels of each sample, and
    their number (1 per sample for a classifier).

    The mean over pixels is the segmentation loss of Eq. 1. A sample with no valid pixel has
    ``n_i = 0``, contributes 0 and is not counted in the 1/N of Eq. 9.
    """
    logp = F.log_softmax(log_probs.float(), dim=1)
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1) * mask
    b = nll.shape[0]
    n = mask.reshape(b, -1).sum(1)
    return nll.reshape(b, -1).sum(1) / n.clamp_min(1), n


def fisher_sample_weights(n_valid: torch.Tensor, unit: str, power: float = 0.5) -> torch.Tensor:
    """Per-sample factors on L_i that put the Fisher in ``unit`` (``EstimationConfig.fisher_unit``).

    ``"pixel"``: the squared gradient of sample i is scaled by its number of valid pixels n_i,
    ``n_i (dL_i/dtheta)^2 = (d sum_p l_p / dtheta)^2 / n_i``. For the true Fisher (Eq. 4) labels
    are drawn independently per pixel, so the cross terms of the square vanish in expectation and
    this is the mean over pixels of the one-pixel Fisher: the same value whatever the crop size or
    the share of ignored pixels. With ``power=0.5`` the factor multiplies L_i before the squaring
    (``sqrt(n_i) L_i``, for the per-sample squares of Eq. 9); ``power=1`` gives the loss whose
    Hessian is that Fisher (``n_i L_i``, the ELBO data term of the sampled variational gradient).
    ``"sample"``: 1 per counted sample: the Fisher of the per-pixel-mean loss, which scales as
    1/pixels.
    """
    counted = (n_valid > 0).to(torch.float32)
    if unit == "sample":
        return counted
    return n_valid.to(torch.float32).pow(power) * counted


def batch_nll(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    log_prob_fn: LogProbFn,
    fisher_type: str,
    generator: torch.Generator,
    offset: int,
    global_size: int,
    labels_override: Optional[torch.Tensor] = None,
    forward: Optional[Callable[..., Any]] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward one batch through ``forward`` (default: ``model``); ``(L_i, n_i valid pixels, labels used)``.

    True Fisher: labels drawn from the prediction (Eq. 4) unless ``labels_override`` is given.
    """
    outputs = (forward or model)(pixel_values=batch["pixel_values"])
    log_probs = log_prob_fn(model, outputs, batch)
    gt = batch.get("labels")
    if gt is None and fisher_type == "empirical":
        raise KeyError("The empirical Fisher needs ground-truth `labels` in every batch.")
    if gt is not None and tuple(gt.shape) != (log_probs.shape[0], *log_probs.shape[2:]):
        raise ValueError(
            f"labels of shape {tuple(gt.shape)} do not match the class scores {tuple(log_probs.shape)} "
            "([B, C, ...] scores need [B, ...] labels); check `log_prob_fn` / `semantic_logits`."
        )
    gt = gt.to(log_probs.device) if gt is not None else None
    mask = (
        valid_mask(gt)
        if gt is not None
        else torch.ones(log_probs.shape[:1] + log_probs.shape[2:], dtype=torch.bool, device=log_probs.device)
    )
    if labels_override is not None:
        labels = labels_override
    elif fisher_type == "true":
        labels = sample_labels(log_probs, generator, offset, global_size)
    else:
        labels = gt
    nll, n_valid = per_sample_nll(log_probs, labels, mask)
    return nll, n_valid, labels
