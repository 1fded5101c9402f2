"""Eq. 5 and 7, and every selection criterion -> ``{name: per-entry score shaped like the weight}``.

Higher is more important everywhere; the tuner ranks all entries of all layers globally. Which criterion
uses which of these is in `registry.py` (`get_criterion`); the data-free scores (magnitude, random) are the
tuner's (`fishertune.tuner.data_free`), which also makes its selection at injection from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


def domain_sensitivity(fisher: torch.Tensor, fisher_shift: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 5: dF = |F(x) - F(x')| / (min(F(x), F(x')) + eps).

    ``eps`` only prevents division by zero (the paper's words), so it must sit far below F: the
    estimator passes ``relative_eps(F, EstimationConfig.delta_eps)``, not an absolute constant.
    """
    return (fisher - fisher_shift).abs() / (torch.minimum(fisher, fisher_shift) + eps)


def mean_value(scores: Mapping[str, torch.Tensor]) -> float:
    """The mean of all entries of all tensors (fp64 sum): the scale of a statistic over the targeted weights."""
    total = sum(float(t.double().sum()) for t in scores.values())
    return total / max(sum(t.numel() for t in scores.values()), 1)


def relative_eps(fisher: Mapping[str, torch.Tensor], rel: float) -> float:
    """Eq. 5's eps as ``rel`` times the mean Fisher over all targeted entries (a tiny absolute floor keeps
    an all-zero Fisher finite). Relative, so that the denominator is min(F, F') wherever F is resolved,
    whatever the model, the crop or the loss scale."""
    return max(rel * mean_value(fisher), torch.finfo(torch.float32).tiny)


def shift_weight(abs_mean_sum: float, signed_mean_sum: float, mode: str = "abs_mean") -> float:
    """The factor exp(-(eps_mu + eps_sigma)) of Eq. 7 / 15 for one step's DSU draws.

    ``abs_mean`` (this project's reading, docs/METHOD.md): exp(-(mean|eps_mu| + mean|eps_sigma|)), in
    (0, 1], smaller for a larger simulated shift. ``literal``: exp(-(mean eps_mu + mean eps_sigma))
    with the signed draws, as printed (can exceed 1).
    """
    return math.exp(-(abs_mean_sum if mode == "abs_mean" else signed_mean_sum))


def percentile_ranks(scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each entry's mid-rank percentile among ALL entries of all tensors, in (0, 1).

    ``(#{< x} + #{<= x}) / (2 N)``: ties share one value (an all-equal statistic ranks nothing), and
    the result does not depend on the order of the layers.
    """
    flat = torch.cat([t.detach().reshape(-1).float().cpu() for t in scores.values()])
    flat.numpy().sort()  # in place: torch.sort would also allocate int64 indices (12 B per entry at ViT-L's 277M)
    n = flat.numel()
    out = {}
    for name, t in scores.items():
        # Sorted queries: neighbouring binary searches touch the same cache lines (~5x faster than in the
        # weight's order at ViT-L's 277M entries, where the searches dominated the scoring); same counts.
        v, order = torch.sort(t.detach().reshape(-1).float().cpu())
        lo = torch.searchsorted(flat, v, right=False)
        hi = torch.searchsorted(flat, v, right=True)
        ranks = torch.empty(v.shape, dtype=torch.float32)
        ranks[order] = ((lo + hi).double() / (2.0 * n)).float()
        out[name] = ranks.reshape(t.shape)
    return out


def quantile_value(scores: Mapping[str, torch.Tensor], q: float) -> float:
    """The ``q`` quantile (lower order statistic) of all entries of all tensors."""
    flat = torch.cat([t.detach().reshape(-1).float().cpu() for t in scores.values()])
    k = min(max(int(math.floor(q * (flat.numel() - 1))) + 1, 1), flat.numel())
    return float(torch.kthvalue(flat, k).values)


EXCHANGES = ("rank", "quantile", "gamma", "sum")


def exchange_rate(fisher: Mapping[str, torch.Tensor], exchange: str, quantile: float, gamma: float | None) -> float:
    """How much Fisher one unit of w * dF is worth in Eq. 7, for the value-based exchanges.

    ``quantile``: the ``quantile`` of F over all targeted entries (one unit of dF is worth an entry
    at that quantile of F). ``gamma``: the printed Eq. 15, gamma * (F / gamma + w * dF), i.e. the
    ELBO's gamma as the rate (variational estimator only). ``sum``: 1, Eq. 7 as printed.
    """
    if exchange == "quantile":
        return quantile_value(fisher, quantile)
    if exchange == "gamma":
        if gamma is None:
            raise ValueError(
                "exchange='gamma' is the printed Eq. 15 and needs the variational estimator's gamma; "
                "use estimator='variational' or another exchange ('rank', 'quantile', 'sum')."
            )
        return gamma
    if exchange == "sum":
        return 1.0
    raise ValueError(f"exchange {exchange!r} has no rate; use one of {EXCHANGES}.")


def dr_fim(
    fisher: Mapping[str, torch.Tensor],
    delta: Mapping[str, torch.Tensor],
    weight: float,
    exchange: str = "rank",
    quantile: float = 0.99,
    gamma: float | None = None,
) -> dict[str, torch.Tensor]:
    """Eq. 7 (and Eq. 15) over all targeted weights: DRF = F + rate * w * dF, with an explicit exchange rate.

    ``exchange="rank"``: pct(F) + w * pct(dF) with mid-rank percentiles over all entries
    (`percentile_ranks`): unit-free, so the balance does not depend on F's scale or tail.
    ``"quantile"`` / ``"gamma"`` / ``"sum"``: F + rate * w * dF with the rate of `exchange_rate`.
    ``"sum"`` (the literal Eq. 7) ranks like dF whenever F is far below 1, and ``"gamma"`` with a
    small gamma ranks like F.
    """
    if exchange == "rank":
        pf, pd = percentile_ranks(fisher), percentile_ranks(delta)
        return {n: pf[n] + weight * pd[n] for n in fisher}
    rate = exchange_rate(fisher, exchange, quantile, gamma)
    return {n: fisher[n] + (rate * weight) * delta[n] for n in fisher}
