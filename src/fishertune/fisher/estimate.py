"""Phase 2 of Algorithm 1: `estimate_scores` runs one criterion over a data loader. No weight changes."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .config import EstimationConfig
from .likelihood import LogProbFn, default_log_prob_fn
from .memory import check_phase2_memory
from .passes import EstimationStats, run_diagonal, run_variational
from .perturb import DSUHooks, find_blocks
from .registry import get_criterion
from .timing import EstimationTiming

logger = logging.getLogger(__name__)
_FP16_LOSS_SCALE = 2.0**10  # keeps fp16 activation gradients of a per-pixel-mean loss above underflow


@contextmanager
def _estimation_mode(model: nn.Module, weights: Mapping[str, nn.Parameter]):
    """eval() (no dropout: the Fisher of the deterministic predictor), gradients only into the targeted
    weights; every module's mode and every parameter's requires_grad restored on exit."""
    modes = {m: m.training for m in model.modules()}
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        yield
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        for m, t in modes.items():
            m.train(t)


def _to_device(batch: Mapping, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batches(first: dict, source, num_batches: int, device: torch.device, timing: Optional[EstimationTiming]):
    """``first`` (already on the device: the memory check read it), then the rest of ``source``."""
    yield first
    for batch in itertools.islice(source, num_batches - 1):
        if timing is not None:
            timing.arrived()  # as the loader hands it over, before the copy to the device
        yield _to_device(batch, device)


def _hide_progress(disable_tqdm: Optional[bool]) -> bool:
    """`TrainingArguments.disable_tqdm` semantics: a bar on the main process only; `True` hides it there too."""
    main_process = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    return (not main_process) if disable_tqdm is None else (disable_tqdm or not main_process)


def _check_finite(stats: Mapping[str, torch.Tensor], what: str) -> None:
    for name, t in stats.items():
        bad = ~torch.isfinite(t)
        if bad.any():
            raise FloatingPointError(
                f"The {what} of '{name}' holds {int(bad.sum())} NaN/inf entries. Check the loss/inputs for NaN, "
                "or run the estimation in fp32/bf16 instead of fp16."
            )


def scores_from_stats(
    stats: EstimationStats, config: EstimationConfig, timing: Optional[EstimationTiming] = None
) -> dict[str, torch.Tensor]:
    """The criterion's score from the measured statistics, by its registry entry's `from_stats`: e.g. F
    (Eq. 9 / 14), dF (Eq. 5 / the ratio of Eq. 15) with eps relative to F's scale, or DR-FIM (Eq. 7 / 15)
    with the configured exchange rate (`fishertune.fisher.registry`). `timing` (an `EstimationTiming`)
    records its seconds as `scoring_s`."""
    criterion = get_criterion(config.criterion)
    if not criterion.needs_data:
        raise ValueError(f"criterion {config.criterion!r} needs no data (no statistics); use estimate_scores.")
    if timing is None:
        return criterion.from_stats(stats, config)
    with timing.scoring(next(iter(stats.fisher.values())).device if stats.fisher else None):
        return criterion.from_stats(stats, config)


def _warn_if_floored(stats: EstimationStats, config: EstimationConfig) -> None:
    if stats.gamma is None:
        return
    resolved = sum(int((f > stats.floor).sum()) for f in stats.fisher.values())
    total = sum(f.numel() for f in stats.fisher.values())
    if resolved < 0.5 * total:
        logger.warning(
            "Only %d of %d entries have a Fisher above the prior floor gamma/tau^2=%.3g: the variational ranking of "
            "the rest is the prior's. Lower `prior_floor` (or `gamma`, or raise `tau`).",
            resolved,
            total,
            stats.floor,
        )


def estimate_scores(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, torch.Tensor]],
    weights: Mapping[str, nn.Parameter],
    config: EstimationConfig,
    log_prob_fn: Optional[LogProbFn] = None,
    *,
    blocks: Optional[Sequence[nn.Module]] = None,
    num_prefix_tokens: Optional[int | Sequence[int]] = None,
    disable_tqdm: Optional[bool] = None,
    timing: Optional[EstimationTiming] = None,
) -> dict[str, torch.Tensor]:
    """Score every entry of ``weights`` by ``config.criterion`` (phase 2 of Algorithm 1).

    Args:
        model: any ``nn.Module``: a PEFT model wrapping a FisherTune model, or a plain model. It is
            called as ``model(pixel_values=...)``.
        dataloader: yields dicts with ``pixel_values`` and ``labels`` ([B, H, W] long with 255 = ignore
            for segmentation, [B] for a classifier). The first ``config.num_batches`` batches are used;
            under torch.distributed each rank passes its own shard, all with the same number of batches.
        weights: ``{name: nn.Parameter}`` to score, e.g. ``peft_model.fishertune_target_weights()``.
        config: the `EstimationConfig`.
        log_prob_fn: ``(model, outputs, batch) -> [B, C, ...]`` log-space class scores; defaults to the
            model's ``semantic_logits(outputs, labels.shape[-2:])`` or else ``outputs.logits``.
        blocks, num_prefix_tokens: the modules whose outputs DSU perturbs and their number of leading
            non-patch tokens; found from the backbone (`find_blocks`) when not given.
        disable_tqdm (`bool`, *optional*): hide the progress bar (estimation batches); by default it shows
            on the main process only (`TrainingArguments.disable_tqdm` semantics). Data-free criteria have none.
        timing (`EstimationTiming`, *optional*): filled in with the arrival time of every batch and the seconds
            of the passes and of the scoring (data-free criteria leave it empty).

    Returns:
        ``{name: fp32 CPU tensor shaped like the weight}``, identical on every rank. No parameter is
        modified; modes, ``requires_grad`` flags are restored and every hook is removed, even on error.
    """
    weights = dict(weights)
    if not weights:
        raise ValueError("No weights to score: pass model.fishertune_target_weights().")
    criterion = get_criterion(config.criterion)
    if not criterion.needs_data:
        return criterion.scores(weights, config)
    stats = estimate_statistics(
        model,
        dataloader,
        weights,
        config,
        log_prob_fn,
        blocks=blocks,
        num_prefix_tokens=num_prefix_tokens,
        disable_tqdm=disable_tqdm,
        timing=timing,
    )
    scores = scores_from_stats(stats, config, timing=timing)
    _check_finite(scores, f"{config.criterion} score")
    return {n: s.detach().float().cpu() for n, s in scores.items()}


def estimate_statistics(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, torch.Tensor]],
    weights: Mapping[str, nn.Parameter],
    config: EstimationConfig,
    log_prob_fn: Optional[LogProbFn] = None,
    *,
    blocks: Optional[Sequence[nn.Module]] = None,
    num_prefix_tokens: Optional[int | Sequence[int]] = None,
    per_batch_delta: bool = False,
    disable_tqdm: Optional[bool] = None,
    timing: Optional[EstimationTiming] = None,
) -> EstimationStats:
    """The passes behind `estimate_scores` (same arguments): clean F, and for criteria with ``needs_dsu``
    (``delta_fim``, ``dr_fim``) the DSU-perturbed F' and Eq. 7's weight. `scores_from_stats(stats, config)`
    turns them into any of the Fisher criteria without another pass (e.g. to compare exchange rates on one estimate).
    ``per_batch_delta`` also keeps the per-batch weighted dF (so both weight readings can be scored).
    ``disable_tqdm`` and ``timing`` as in `estimate_scores` (here ``timing`` gets the arrivals and ``passes_s``)."""
    weights = dict(weights)
    if timing is not None:
        timing.start(next(iter(weights.values())).device if weights else torch.device("cpu"))
    criterion = get_criterion(config.criterion)
    if not criterion.needs_data:
        raise ValueError(f"criterion {config.criterion!r} needs no data; use estimate_scores.")
    params = {id(p) for p in model.parameters()}
    foreign = [n for n, w in weights.items() if id(w) not in params]
    if foreign:
        raise ValueError(f"Weights {foreign[:3]} are not parameters of `model`; pass the model they belong to.")
    log_prob_fn = log_prob_fn or default_log_prob_fn
    device = next(iter(weights.values())).device
    dsu = None
    if criterion.needs_dsu:  # F' on DSU-perturbed features (Eq. 6) and Eq. 7's weight w
        if blocks is None:
            blocks, found_prefix = find_blocks(model)
            num_prefix_tokens = found_prefix if num_prefix_tokens is None else num_prefix_tokens
        if config.dsu_blocks is not None:
            if max(config.dsu_blocks) >= len(blocks):
                raise ValueError(f"dsu_blocks {config.dsu_blocks} out of range: the backbone has {len(blocks)} blocks.")
            blocks = [blocks[i] for i in config.dsu_blocks]
            if isinstance(num_prefix_tokens, (list, tuple)):
                num_prefix_tokens = [num_prefix_tokens[i] for i in config.dsu_blocks]
        dsu_gen = torch.Generator().manual_seed(config.seed + 1)
        prefix = num_prefix_tokens if num_prefix_tokens is not None else 0
        dsu = DSUHooks(blocks, prefix, config.dsu_p, config.dsu_eps, dsu_gen, draw=config.dsu_draw)
    gens = {
        "labels": torch.Generator().manual_seed(config.seed + 2),
        "xi": torch.Generator(device=device).manual_seed(config.seed + 3),
    }
    ac_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    scale = _FP16_LOSS_SCALE if ac_dtype == torch.float16 else 1.0
    limit = config.num_batches
    if hasattr(dataloader, "__len__"):
        limit = min(limit, len(dataloader))
    source = iter(dataloader)
    first = next(source, None)
    if first is None:
        raise ValueError("The estimation data loader yielded no batch; phase 2 needs at least one.")
    if timing is not None:
        timing.arrived()
    first = _to_device(first, device)
    batches = _batches(first, source, config.num_batches, device, timing)
    batches = tqdm(
        batches,
        total=limit,
        desc=f"Estimating {config.criterion} ({config.estimator})",
        unit="batch",
        disable=_hide_progress(disable_tqdm),
        leave=False,
    )
    with batches, _estimation_mode(model, weights), dsu if dsu is not None else nullcontext():
        check_phase2_memory(
            model,
            weights,
            config,
            first,
            log_prob_fn,
            dsu is not None,
            show=None if _hide_progress(disable_tqdm) else tqdm.write,
        )  # printed above the bar
        del first  # the generator holds it until the passes take it
        if config.estimator == "diagonal":
            stats = run_diagonal(model, batches, weights, config, log_prob_fn, dsu, gens, scale, per_batch_delta)
        else:
            stats = run_variational(
                model,
                batches,
                weights,
                config,
                log_prob_fn,
                dsu,
                device,
                gens,
                scale,
                limit * config.variational_steps_per_batch,
                per_batch_delta,
            )
    what = "variational" if config.estimator == "variational" else "diagonal"
    _check_finite(stats.fisher, f"{what} Fisher (Eq. 9/14)")
    if stats.fisher_shift is not None:
        _check_finite(stats.fisher_shift, f"DSU-perturbed {what} Fisher (Eq. 9/14 on x')")
    _warn_if_floored(stats, config)
    if timing is not None:
        timing.passes_done()
    return stats
