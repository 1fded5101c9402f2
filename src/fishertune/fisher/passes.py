"""The estimation passes of phase 2: clean and DSU-perturbed Fisher statistics over T2 batches.

`run_diagonal` (Eq. 9) and `run_variational` (Eq. 10-14) return an `EstimationStats`; turning it
into scores (Eq. 5, 7, 15) is `estimate.scores_from_stats`. Every pass of a batch draws its labels
from the same generator state (common random numbers: lower-variance dF), and the DSU draws are
global, so every rank gets the same statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.func import functional_call

from .criteria import domain_sensitivity, mean_value, relative_eps, shift_weight
from .diagonal import GradSquareAccumulator, linear_owners
from .dist import all_reduce_sum_, global_slice
from .likelihood import batch_nll, fisher_sample_weights
from .variational import PrecisionFit, expected_data_grad, fisher_from_precision, reparam_data_grad


@dataclass
class EstimationStats:
    """What the passes measured. ``fisher`` / ``fisher_shift``: F on clean and DSU-perturbed inputs (the
    variational F of Eq. 14 for that estimator); ``weight``: Eq. 7's mean exp(-(eps_mu + eps_sigma));
    ``floor``: the prior floor gamma/tau^2 added to Eq. 5's denominator (0 for the diagonal estimator);
    ``gamma``: the ELBO's gamma (variational); ``weighted_delta``: sum_t w_t dF_t over batches and
    ``num_weighted`` its count (``shift_weight_reading="per_batch"`` only); ``batch_weights``: each perturbed
    batch's own w_t, in order (``weight`` is their mean)."""

    fisher: dict
    fisher_shift: Optional[dict] = None
    weight: float = 1.0
    floor: float = 0.0
    gamma: Optional[float] = None
    weighted_delta: Optional[dict] = None
    num_weighted: int = 0
    batch_weights: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class ShiftWeight:
    """Eq. 7's exp(-(eps_mu + eps_sigma)), averaged over the steps that perturbed at least one block.
    The draws are global (identical on every rank), so no reduction is needed."""

    def __init__(self, mode: str) -> None:
        self.mode, self.weights = mode, []

    def add(self, step_shift) -> Optional[float]:
        if step_shift is None:
            return None
        w = shift_weight(*step_shift, mode=self.mode)
        self.weights.append(w)
        return w

    @property
    def value(self) -> float:
        return sum(self.weights) / len(self.weights) if self.weights else 1.0


class PerBatchDelta:
    """``shift_weight_reading="per_batch"``: sum_t w_t * dF_t with dF_t from batch t's F_t and F'_t (Eq. 5)."""

    def __init__(self, delta_eps: float, floor: float = 0.0) -> None:
        self.delta_eps, self.floor, self.sums, self.count = delta_eps, floor, None, 0

    def add(self, fisher_t: Mapping, fisher_shift_t: Mapping, weight: Optional[float]) -> None:
        if weight is None:  # DSU perturbed no block in this step: no simulated shift to weigh
            return
        eps = relative_eps(fisher_t, self.delta_eps) + self.floor
        d = {n: weight * domain_sensitivity(fisher_t[n].double(), fisher_shift_t[n].double(), eps) for n in fisher_t}
        self.sums = d if self.sums is None else {n: self.sums[n] + d[n] for n in d}
        self.count += 1


def _loss_for_squares(nll: torch.Tensor, n_valid: torch.Tensor, unit: str, scale: float) -> torch.Tensor:
    """sum_i c_i L_i, with c_i chosen so that the per-sample squared gradients are in `unit` (Eq. 9)."""
    return (nll * fisher_sample_weights(n_valid, unit, power=0.5).to(nll.device)).sum() * scale


def micro_batches(batch: Mapping, size: Optional[int]):
    """``(start, part)`` for consecutive slices of ``size`` samples of ``batch`` (the whole batch if None)."""
    b = batch["pixel_values"].shape[0]
    size = b if size is None else size
    for start in range(0, b, size):
        yield (
            start,
            {
                k: v[start : start + size] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == b else v
                for k, v in batch.items()
            },
        )


def _record_dsu_stds(model, batch, dsu) -> None:
    """A no-grad forward of the whole batch that keeps each perturbed block's Sigma_mu, Sigma_sigma (Eq. 6): the
    micro-batches then perturb with the whole batch's statistics. It holds no graph, so its memory is an
    inference forward's, far below a pass's saved activations."""
    dsu.stds_mode = "record"
    try:
        with torch.no_grad():
            model(pixel_values=batch["pixel_values"])
    finally:
        dsu.stds_mode = "replay"


def fisher_pass(model, batch, acc, cfg, log_prob_fn, gens, label_state, dsu=None, scale=1.0):
    """One forward/backward of ``batch`` into the accumulator ``acc`` (perturbed by ``dsu`` if given), in
    micro-batches of ``cfg.micro_batch_size``: each draws the labels and DSU noise of the whole batch and keeps
    its own slice, so the sum of per-sample squares is the whole batch's (up to float rounding).

    Returns the step's DSU shift summary (None if unperturbed)."""
    b = batch["pixel_values"].shape[0]
    offset, total = global_slice(b)
    parts = list(micro_batches(batch, cfg.micro_batch_size))
    if dsu is not None:
        dsu.new_draws()
        dsu.batch_slice, dsu.enabled = (offset, total), True
    try:
        if dsu is not None and len(parts) > 1:
            _record_dsu_stds(model, batch, dsu)
        for start, part in parts:
            m = part["pixel_values"].shape[0]
            gens["labels"].set_state(label_state)  # the whole batch's uniforms, sliced at this part's offset
            if dsu is not None:
                dsu.batch_slice = (offset + start, total)
            with acc.capture():
                nll, n_valid, _ = batch_nll(
                    model, part, log_prob_fn, cfg.fisher_type, gens["labels"], offset + start, total, forward=model
                )
            acc.accumulate(_loss_for_squares(nll, n_valid, cfg.fisher_unit, scale), m, int((n_valid > 0).sum()), scale)
            del nll, n_valid
    finally:
        if dsu is not None:
            dsu.enabled, dsu.stds_mode = False, "live"
    return dsu.step_shift() if dsu is not None else None


def accumulator(owners, weights, cfg) -> GradSquareAccumulator:
    """The running sums of per-sample squares in ``cfg.accumulator_dtype``."""
    return GradSquareAccumulator(owners, weights, getattr(torch, cfg.accumulator_dtype))


class _Running:
    """Count-weighted fp64 mean of per-batch Fisher estimates (the per-batch reading's overall F)."""

    def __init__(self) -> None:
        self.sums, self.count = None, 0.0

    def add(self, fisher_t: Mapping, count: float) -> None:
        d = {n: f.double() * count for n, f in fisher_t.items()}
        self.sums = d if self.sums is None else {n: self.sums[n] + d[n] for n in d}
        self.count += count

    def value(self) -> dict:
        return {n: (s / max(self.count, 1.0)).float() for n, s in self.sums.items()}


def run_diagonal(model, batches, weights, cfg, log_prob_fn, dsu, gens, scale, per_batch=False) -> EstimationStats:
    """Eq. 9 on clean inputs and, with ``dsu``, on DSU-perturbed ones (Eq. 6); ``per_batch`` also keeps
    sum_t w_t dF_t (always with ``shift_weight_reading="per_batch"``)."""
    owners = linear_owners(model, weights)
    per_batch = dsu is not None and (per_batch or cfg.shift_weight_reading == "per_batch")
    accs = {False: accumulator(owners, weights, cfg)}
    if dsu is not None:
        accs[True] = accumulator(owners, weights, cfg)
    w = ShiftWeight(cfg.shift_weight)
    running = {False: _Running(), True: _Running()}
    weighted = PerBatchDelta(cfg.delta_eps)
    for batch in batches:
        label_state = gens["labels"].get_state()
        step_fisher, step_w = {}, None
        for perturbed in accs:
            acc = accumulator(owners, weights, cfg) if per_batch else accs[perturbed]
            shift = fisher_pass(
                model, batch, acc, cfg, log_prob_fn, gens, label_state, dsu if perturbed else None, scale
            )
            if perturbed:
                step_w = w.add(shift)
            if per_batch:
                step_fisher[perturbed] = acc.finalize()  # all-reduced: every rank gets batch t's F
                running[perturbed].add(step_fisher[perturbed], float(acc.count))
        if per_batch:
            weighted.add(step_fisher[False], step_fisher[True], step_w)
    if per_batch:
        fisher, fisher_shift = running[False].value(), running[True].value()
    else:
        fisher = accs[False].finalize()
        fisher_shift = accs[True].finalize() if dsu is not None else None
    return EstimationStats(
        fisher,
        fisher_shift,
        w.value,
        weighted_delta=weighted.sums,
        num_weighted=weighted.count,
        batch_weights=w.weights,
    )


def _antithetic_grad_diff(model, batch, weights, full_names, offsets, cfg, log_prob_fn, gens, scale):
    """Sum over this rank's samples of dL_i/dtheta at theta_hat + off minus at theta_hat - off, and the count.

    L_i carries the `fisher_unit` factor (n_i L_i for "pixel"): the loss whose Hessian is F in that unit."""
    b = batch["pixel_values"].shape[0]
    offset, total = global_slice(b)
    labels = None
    if cfg.fisher_type == "true":
        with torch.no_grad():  # y ~ p(y | x, theta_hat): one plain forward, then both evaluations use it
            _, _, labels = batch_nll(model, batch, log_prob_fn, "true", gens["labels"], offset, total, forward=model)
    grads = []
    for sign in (1.0, -1.0):
        params = {
            full_names[n]: (w.detach().float() + sign * offsets[n]).to(w.dtype).requires_grad_(True)
            for n, w in weights.items()
        }

        def forward(**kwargs):
            return functional_call(model, params, args=(), kwargs=kwargs)

        nll, n_valid, _ = batch_nll(
            model,
            batch,
            log_prob_fn,
            cfg.fisher_type,
            gens["labels"],
            offset,
            total,
            labels_override=labels,
            forward=forward,
        )
        c = fisher_sample_weights(n_valid, cfg.fisher_unit, power=1.0).to(nll.device)
        g = torch.autograd.grad((nll * c).sum() * scale, list(params.values()), allow_unused=True)
        grads.append(
            [
                torch.zeros_like(p, dtype=torch.float32) if x is None else x.float() / scale
                for p, x in zip(params.values(), g)
            ]
        )
    return {n: gp - gm for n, gp, gm in zip(weights, *grads)}, int((n_valid > 0).sum())


def _reparam_step(fit, model, batch, weights, full_names, xi, cfg, log_prob_fn, gens, scale) -> None:
    diff, n = _antithetic_grad_diff(model, batch, weights, full_names, fit.offsets(xi), cfg, log_prob_fn, gens, scale)
    count = torch.tensor(float(n), dtype=torch.float64)
    for t in diff.values():
        all_reduce_sum_(t)
    all_reduce_sum_(count)
    fit.update({k: reparam_data_grad(fit.log_var[k], xi[k], v / max(float(count), 1.0)) for k, v in diff.items()})


def _expected_terms(fit: PrecisionFit, fisher_batch: Mapping):
    """The expected data term of each weight, made when `PrecisionFit.update` reaches it (4 B per entry never held)."""
    return lambda n: expected_data_grad(fit.log_var[n], fisher_batch[n])


def run_variational(
    model, batches, weights, cfg, log_prob_fn, dsu, device, gens, scale, total_steps, per_batch=False
) -> EstimationStats:
    """Eq. 10-14: one precision fit on clean inputs and, with ``dsu``, one on DSU-perturbed inputs."""
    shapes = {n: w.shape for n, w in weights.items()}
    fits = {False: PrecisionFit(shapes, cfg.gamma, cfg.tau, cfg.variational_lr, total_steps, device)}
    if dsu is not None:
        fits[True] = PrecisionFit(shapes, cfg.gamma, cfg.tau, cfg.variational_lr, total_steps, device)
    owners = linear_owners(model, weights)
    full_names = None
    if cfg.variational_gradient == "reparam":
        by_id = {id(p): n for n, p in model.named_parameters()}
        full_names = {n: by_id[id(w)] for n, w in weights.items()}
    per_batch = (
        dsu is not None
        and cfg.variational_gradient == "expected"
        and (per_batch or cfg.shift_weight_reading == "per_batch")
    )
    w = ShiftWeight(cfg.shift_weight)
    weighted = None
    for batch in batches:
        label_state = gens["labels"].get_state()
        if fits[False].gamma is None:
            # gamma from the data: the floor gamma/tau^2 is prior_floor times the first clean batch's mean Fisher.
            first = accumulator(owners, weights, cfg)
            fisher_pass(model, batch, first, cfg, log_prob_fn, gens, label_state, None, scale)
            gamma = max(cfg.prior_floor * cfg.tau**2 * mean_value(first.finalize()), torch.finfo(torch.float32).tiny)
            del first  # its fp64 sums (8 B per targeted entry) are not needed again
            for fit in fits.values():
                fit.gamma = gamma
            weighted = PerBatchDelta(cfg.delta_eps, floor=gamma / cfg.tau**2)
        elif weighted is None:
            weighted = PerBatchDelta(cfg.delta_eps, floor=cfg.gamma / cfg.tau**2)
        fisher_t: dict[bool, dict] = {}
        step_w = None
        for step in range(cfg.variational_steps_per_batch):
            # One xi per step, shared by the clean and the perturbed fit: their noise cancels in Lambda_x - Lambda_x'.
            xi = None
            if cfg.variational_gradient == "reparam":
                xi = {
                    n: torch.randn(tuple(s), generator=gens["xi"], device=gens["xi"].device).to(device)
                    for n, s in shapes.items()
                }
            for perturbed, fit in fits.items():
                if cfg.variational_gradient == "expected" and perturbed in fisher_t:
                    fit.update(_expected_terms(fit, fisher_t[perturbed]))
                    continue
                if cfg.variational_gradient == "reparam":
                    gens["labels"].set_state(label_state)
                    if perturbed:
                        dsu.new_draws()
                        dsu.batch_slice, dsu.enabled = global_slice(batch["pixel_values"].shape[0]), True
                    try:
                        _reparam_step(fit, model, batch, weights, full_names, xi, cfg, log_prob_fn, gens, scale)
                    finally:
                        if perturbed:
                            dsu.enabled = False
                    shift = dsu.step_shift() if perturbed else None
                else:  # the batch's Eq. 9 Fisher, all-reduced so every rank takes the same step
                    acc = accumulator(owners, weights, cfg)
                    shift = fisher_pass(
                        model, batch, acc, cfg, log_prob_fn, gens, label_state, dsu if perturbed else None, scale
                    )
                    fisher_t[perturbed] = acc.finalize()
                    del acc  # before the next pass allocates its own fp64 sums: one set alive at a time
                    fit.update(_expected_terms(fit, fisher_t[perturbed]))
                    if not per_batch and cfg.variational_steps_per_batch == 1:
                        del fisher_t[perturbed]  # used by neither a later step nor the per-batch reading
                if perturbed and step == 0:
                    step_w = w.add(shift)
        if per_batch:
            weighted.add(fisher_t[False], fisher_t[True], step_w)
    gamma = fits[False].gamma
    precisions = {p: fit.precision(release=True) for p, fit in fits.items()}
    fisher = {n: fisher_from_precision(v, gamma, cfg.tau) for n, v in precisions[False].items()}
    fisher_shift = (
        {n: fisher_from_precision(v, gamma, cfg.tau) for n, v in precisions[True].items()}
        if True in precisions
        else None
    )
    return EstimationStats(
        fisher,
        fisher_shift,
        w.value,
        floor=gamma / cfg.tau**2,
        gamma=gamma,
        weighted_delta=weighted.sums if (per_batch and weighted) else None,
        num_weighted=weighted.count if (per_batch and weighted) else 0,
        batch_weights=w.weights,
        extra={"precision": precisions[False], "precision_shift": precisions.get(True)},
    )
