"""Phase 2 of Algorithm 1: `estimate_scores` runs one criterion over a data loader. No weight changes."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call

from .config import EstimationConfig
from .criteria import DATA_FREE, data_free_scores, domain_sensitivity, dr_fim, shift_weight
from .diagonal import GradSquareAccumulator, linear_owners
from .dist import all_reduce_sum_, global_slice
from .likelihood import LogProbFn, batch_nll, default_log_prob_fn
from .perturb import DSUHooks, find_blocks
from .variational import (
    PrecisionFit,
    expected_data_grad,
    fisher_from_precision,
    reparam_data_grad,
    variational_delta,
    variational_dr_fim,
)

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


def _check_finite(stats: Mapping[str, torch.Tensor], what: str) -> None:
    for name, t in stats.items():
        bad = ~torch.isfinite(t)
        if bad.any():
            raise FloatingPointError(
                f"The {what} of '{name}' holds {int(bad.sum())} NaN/inf entries. Check the loss/inputs for NaN, "
                "or run the estimation in fp32/bf16 instead of fp16."
            )


class _ShiftWeight:
    """Eq. 7's exp(-(eps_mu + eps_sigma)), averaged over the steps that perturbed at least one block.
    The draws are global (identical on every rank), so no reduction is needed."""

    def __init__(self, mode: str) -> None:
        self.mode, self.total, self.count = mode, 0.0, 0

    def add(self, step_shift) -> None:
        if step_shift is not None:
            self.total += shift_weight(*step_shift, mode=self.mode)
            self.count += 1

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else 1.0


def _run_diagonal(model, batches, weights, cfg, log_prob_fn, dsu, device, gens, scale):
    owners = linear_owners(model, weights)
    clean = GradSquareAccumulator(owners, weights)
    shifted = GradSquareAccumulator(owners, weights) if dsu is not None else None
    w = _ShiftWeight(cfg.shift_weight)
    for batch in batches:
        b = batch["pixel_values"].shape[0]
        offset, total = global_slice(b)
        label_state = gens["labels"].get_state()
        passes = [(clean, False)] + ([(shifted, True)] if shifted is not None else [])
        for acc, perturbed in passes:
            # Common random numbers: both passes draw labels from the same uniforms (lower-variance dF).
            gens["labels"].set_state(label_state)
            if perturbed:
                dsu.new_draws()
                dsu.batch_slice, dsu.enabled = (offset, total), True
            try:
                with acc.capture():
                    nll, counted, _ = batch_nll(model, batch, log_prob_fn, cfg.fisher_type, gens["labels"], offset, total,
                                                forward=model)
                acc.accumulate((nll * counted).sum() * scale, b, int(counted.sum()), scale)
            finally:
                if perturbed:
                    dsu.enabled = False
            if perturbed:
                w.add(dsu.step_shift())
    fisher = clean.finalize()
    _check_finite(fisher, "diagonal Fisher (Eq. 9)")
    if shifted is None:
        return fisher, None, w.value
    fisher_shift = shifted.finalize()
    _check_finite(fisher_shift, "DSU-perturbed diagonal Fisher (Eq. 9 on x')")
    return fisher, fisher_shift, w.value


def _antithetic_grad_diff(model, batch, weights, full_names, offsets, cfg, log_prob_fn, gens, b, offset, total, scale):
    """Sum over this rank's samples of dL_i/dtheta at theta_hat + off minus at theta_hat - off, and the count."""
    labels = None
    if cfg.fisher_type == "true":
        with torch.no_grad():  # y ~ p(y | x, theta_hat): one plain forward, then both evaluations use it
            _, _, labels = batch_nll(model, batch, log_prob_fn, "true", gens["labels"], offset, total, forward=model)
    grads = []
    for sign in (1.0, -1.0):
        params = {full_names[n]: (w.detach().float() + sign * offsets[n]).to(w.dtype).requires_grad_(True)
                  for n, w in weights.items()}

        def forward(**kwargs):
            return functional_call(model, params, args=(), kwargs=kwargs)

        nll, counted, _ = batch_nll(model, batch, log_prob_fn, cfg.fisher_type, gens["labels"], offset, total,
                                    labels_override=labels, forward=forward)
        g = torch.autograd.grad((nll * counted).sum() * scale, list(params.values()), allow_unused=True)
        grads.append([torch.zeros_like(p, dtype=torch.float32) if x is None else x.float() / scale
                      for p, x in zip(params.values(), g)])
    return {n: gp - gm for n, gp, gm in zip(weights, *grads)}, int(counted.sum())


def _run_variational(model, batches, weights, cfg, log_prob_fn, dsu, device, gens, scale, total_steps):
    shapes = {n: w.shape for n, w in weights.items()}
    fits = [(PrecisionFit(shapes, cfg.gamma, cfg.tau, cfg.variational_lr, total_steps, device), False)]
    if dsu is not None:
        fits.append((PrecisionFit(shapes, cfg.gamma, cfg.tau, cfg.variational_lr, total_steps, device), True))
    if cfg.variational_gradient == "reparam":
        by_id = {id(p): n for n, p in model.named_parameters()}
        full_names = {n: by_id[id(w)] for n, w in weights.items()}
    else:
        owners = linear_owners(model, weights)
    w = _ShiftWeight(cfg.shift_weight)
    for batch in batches:
        b = batch["pixel_values"].shape[0]
        offset, total = global_slice(b)
        label_state = gens["labels"].get_state()
        fisher_t: dict[bool, dict] = {}
        for step in range(cfg.variational_steps_per_batch):
            # One xi per step, shared by the clean and the perturbed fit: their noise cancels in Lambda_x - Lambda_x'.
            xi = None
            if cfg.variational_gradient == "reparam":
                xi = {n: torch.randn(tuple(s), generator=gens["xi"], device=gens["xi"].device).to(device)
                      for n, s in shapes.items()}
            for fit, perturbed in fits:
                if cfg.variational_gradient == "expected" and perturbed in fisher_t:
                    fit.update({n: expected_data_grad(fit.log_var[n], f) for n, f in fisher_t[perturbed].items()})
                    continue
                gens["labels"].set_state(label_state)
                if perturbed:
                    dsu.new_draws()
                    dsu.batch_slice, dsu.enabled = (offset, total), True
                try:
                    if cfg.variational_gradient == "reparam":
                        diff, n = _antithetic_grad_diff(model, batch, weights, full_names, fit.offsets(xi), cfg,
                                                        log_prob_fn, gens, b, offset, total, scale)
                        count = torch.tensor(float(n), dtype=torch.float64)
                        for t in diff.values():
                            all_reduce_sum_(t)
                        all_reduce_sum_(count)
                        fit.update({k: reparam_data_grad(fit.log_var[k], xi[k], v / max(float(count), 1.0))
                                    for k, v in diff.items()})
                    else:  # the batch's Eq. 9 Fisher, all-reduced so every rank takes the same step
                        acc = GradSquareAccumulator(owners, weights)
                        with acc.capture():
                            nll, counted, _ = batch_nll(model, batch, log_prob_fn, cfg.fisher_type, gens["labels"],
                                                        offset, total, forward=model)
                        acc.accumulate((nll * counted).sum() * scale, b, int(counted.sum()), scale)
                        fisher_t[perturbed] = acc.finalize()
                        fit.update({n: expected_data_grad(fit.log_var[n], f) for n, f in fisher_t[perturbed].items()})
                finally:
                    if perturbed:
                        dsu.enabled = False
                if perturbed and step == 0:
                    w.add(dsu.step_shift())
    precisions = [fit.precision() for fit, _ in fits]
    for p, what in zip(precisions, ("variational precision (Eq. 11)", "DSU-perturbed variational precision (Eq. 11)")):
        _check_finite(p, what)
    resolved = sum(int((v > 2.0 / cfg.tau**2).sum()) for v in precisions[0].values())
    total_n = sum(v.numel() for v in precisions[0].values())
    if resolved < 0.01 * total_n:
        logger.warning(
            "Only %d of %d entries have a Fisher above the prior floor gamma/tau^2=%.3g: the variational ranking is "
            "mostly noise. Lower `gamma` (or raise `tau`).", resolved, total_n, cfg.gamma / cfg.tau**2)
    return precisions[0], (precisions[1] if len(precisions) > 1 else None), w.value


def estimate_scores(
    model: nn.Module,
    dataloader: Iterable[Mapping[str, torch.Tensor]],
    weights: Mapping[str, nn.Parameter],
    config: EstimationConfig,
    log_prob_fn: Optional[LogProbFn] = None,
    *,
    blocks: Optional[Sequence[nn.Module]] = None,
    num_prefix_tokens: Optional[int | Sequence[int]] = None,
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

    Returns:
        ``{name: fp32 CPU tensor shaped like the weight}``, identical on every rank. No parameter is
        modified; modes, ``requires_grad`` flags are restored and every hook is removed, even on error.
    """
    weights = dict(weights)
    if not weights:
        raise ValueError("No weights to score: pass model.fishertune_target_weights().")
    if config.criterion in DATA_FREE:
        return data_free_scores(config.criterion, weights, config.seed)
    params = {id(p) for p in model.parameters()}
    foreign = [n for n, w in weights.items() if id(w) not in params]
    if foreign:
        raise ValueError(f"Weights {foreign[:3]} are not parameters of `model`; pass the model they belong to.")
    log_prob_fn = log_prob_fn or default_log_prob_fn
    device = next(iter(weights.values())).device
    dsu = None
    if config.criterion in ("delta_fim", "dr_fim"):
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
        dsu = DSUHooks(blocks, prefix, config.dsu_p, config.dsu_eps, dsu_gen)
    gens = {"labels": torch.Generator().manual_seed(config.seed + 2),
            "xi": torch.Generator(device=device).manual_seed(config.seed + 3)}
    ac_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    scale = _FP16_LOSS_SCALE if ac_dtype == torch.float16 else 1.0
    limit = config.num_batches
    if hasattr(dataloader, "__len__"):
        limit = min(limit, len(dataloader))
    batches = (_to_device(b, device) for b in itertools.islice(dataloader, config.num_batches))
    with _estimation_mode(model, weights), (dsu if dsu is not None else nullcontext()):
        if config.estimator == "diagonal":
            fisher, fisher_shift, w = _run_diagonal(model, batches, weights, config, log_prob_fn, dsu, device, gens, scale)
            if config.criterion == "fim":
                scores = fisher
            elif config.criterion == "delta_fim":
                scores = {n: domain_sensitivity(fisher[n], fisher_shift[n]) for n in fisher}
            else:
                scores = {n: dr_fim(fisher[n], fisher_shift[n], w) for n in fisher}
        else:
            total_steps = limit * config.variational_steps_per_batch
            prec, prec_shift, w = _run_variational(model, batches, weights, config, log_prob_fn, dsu, device, gens,
                                                   scale, total_steps)
            g, t = config.gamma, config.tau
            if config.criterion == "fim":
                scores = {n: fisher_from_precision(prec[n], g, t) for n in prec}
            elif config.criterion == "delta_fim":
                factor = g if config.drf_form == "literal" else 1.0
                scores = {n: factor * variational_delta(prec[n], prec_shift[n], g) for n in prec}
            else:
                scores = {n: variational_dr_fim(prec[n], prec_shift[n], g, t, w, config.drf_form) for n in prec}
    _check_finite(scores, f"{config.criterion} score")
    return {n: s.detach().float().cpu() for n, s in scores.items()}
