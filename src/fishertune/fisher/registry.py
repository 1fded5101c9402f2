"""The selection criteria by name: what each needs (data, DSU) and how it scores the targeted entries.

Everything that names the criteria (`EstimationConfig`'s validation and help, `estimate_scores`,
`estimate_statistics`, `scores_from_stats`, the training arguments' choices) reads this registry, so a
criterion registered here works end to end through `FisherTuneTrainer` with no other edit:

    >>> from fishertune.fisher import Criterion, register_criterion, percentile_ranks
    >>> register_criterion(
    ...     Criterion(
    ...         "fim_rank",
    ...         help="pct(F): Fisher percentile ranks.",
    ...         needs_data=True,
    ...         from_stats=lambda stats, config: percentile_ranks(stats.fisher),
    ...     )
    ... )
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch

from ..registry import Registry
from ..tuner.data_free import magnitude_scores, random_scores
from .criteria import domain_sensitivity, dr_fim, relative_eps
from .variational import variational_delta

if TYPE_CHECKING:
    from .passes import EstimationStats

Scores = dict[str, torch.Tensor]
#: An `EstimationConfig` (`config.py` imports this registry to validate `criterion`: annotated by this name, not
#: imported, so that the two modules do not import each other).
Config = Any


@dataclass(frozen=True)
class Criterion:
    """One selection criterion: higher score = more important entry (the tuner ranks all entries globally).

    Args:
        name (`str`): what `EstimationConfig.criterion` / `FisherTuneTrainingArguments.criterion` say.
        help (`str`): one line for `--help` and the docs.
        needs_data (`bool`): True: phase 2 runs the estimator's passes over T2 training batches (Eq. 9 / 14)
            and `from_stats` turns the measured `EstimationStats` into scores. False: `scores` ranks the weights
            alone (no batch is read).
        needs_dsu (`bool`, defaults to `False`): the passes also measure the DSU-perturbed Fisher F' (Eq. 6)
            and Eq. 7's weight w, i.e. `stats.fisher_shift`/`stats.weight` are set. Only with `needs_data`.
        scores (`Callable[[weights, config], scores]`, *optional*): the data-free score (`needs_data=False`).
        from_stats (`Callable[[stats, config], scores]`, *optional*): the data criterion's score (`needs_data`).
    """

    name: str
    help: str
    needs_data: bool
    needs_dsu: bool = False
    scores: Optional[Callable[[Mapping[str, torch.Tensor], Config], Scores]] = None
    from_stats: Optional[Callable[["EstimationStats", Config], Scores]] = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name or ""):
            raise ValueError(f"Criterion name {self.name!r} must be an identifier (it is a YAML value and a flag).")
        if self.needs_data and self.from_stats is None:
            raise ValueError(f"Criterion {self.name!r} needs data: give `from_stats(stats, config) -> scores`.")
        if not self.needs_data and self.scores is None:
            raise ValueError(f"Criterion {self.name!r} is data-free: give `scores(weights, config) -> scores`.")
        if self.needs_dsu and not self.needs_data:
            raise ValueError(f"Criterion {self.name!r}: needs_dsu=True needs needs_data=True (F' is measured).")


#: The registered criteria by name; iterating gives the names, read when called (so it is also the arguments' live
#: `choices`, criteria registered after import included).
CRITERIA: Registry[Criterion] = Registry("criterion", "fishertune.fisher.register_criterion(Criterion(...))")


def register_criterion(criterion: Criterion, *, replace: bool = False) -> Criterion:
    """Add `criterion` under its name (an existing name only with `replace=True`); returns it."""
    return CRITERIA.register(criterion, replace=replace)


def unregister_criterion(name: str) -> Criterion:
    """Remove and return the criterion `name` (e.g. a test's own)."""
    return CRITERIA.unregister(name)


def get_criterion(name: str) -> Criterion:
    """The criterion `name`; an unknown name is an error listing the registered ones."""
    return CRITERIA.get(name)


def criterion_names() -> tuple[str, ...]:
    """The registered criterion names, in registration order."""
    return CRITERIA.names()


def shift_statistics(stats: "EstimationStats", config: Config) -> tuple[Scores, float]:
    """(dF, w) from the statistics: Eq. 5 (diagonal) or the ratio of Eq. 15 (variational), eps relative to F's
    scale (`EstimationConfig.delta_eps`), and Eq. 7's weight w in the configured reading."""
    fisher = stats.fisher
    eps = relative_eps(fisher, config.delta_eps)
    weight = stats.weight
    if config.shift_weight_reading == "per_batch":  # dF* = sum_t w_t dF_t / sum_t w_t, weight = mean w_t
        if stats.weighted_delta is None:
            raise ValueError("shift_weight_reading='per_batch' needs statistics estimated with that reading.")
        norm = weight * max(stats.num_weighted, 1)
        return {n: (d / norm).float() for n, d in stats.weighted_delta.items()}, weight
    if (
        stats.extra.get("precision_shift") is not None
    ):  # Eq. 15's ratio: |L - L'| / (min(L, L') + eps/gamma), prior floor included
        p, ps = stats.extra["precision"], stats.extra["precision_shift"]
        return {n: variational_delta(p[n], ps[n], stats.gamma, eps) for n in p}, weight
    if stats.fisher_shift is None:
        raise ValueError(
            f"criterion {config.criterion!r} needs the DSU-perturbed Fisher; these statistics have "
            "none (estimated for a criterion without needs_dsu)."
        )
    return {n: domain_sensitivity(fisher[n], stats.fisher_shift[n], eps + stats.floor) for n in fisher}, weight


def _dr_fim(stats: "EstimationStats", config: Config) -> Scores:
    delta, weight = shift_statistics(stats, config)
    return dr_fim(stats.fisher, delta, weight, config.exchange, config.exchange_quantile, stats.gamma)


def _random(group: Optional[str]) -> Callable[[Mapping[str, torch.Tensor], Any], Scores]:
    return lambda weights, config: random_scores(weights, config.seed, group)


_BUILTINS = (
    Criterion("random", "U(0, 1) per entry (the random ablation).", needs_data=False, scores=_random(None)),
    *(
        Criterion(
            f"random_{g}",
            f"random inside the {g} projections (fused qkv: their third).",
            needs_data=False,
            scores=_random(g),
        )
        for g in "qkv"
    ),
    Criterion(
        "magnitude", "|W| per entry.", needs_data=False, scores=lambda weights, config: magnitude_scores(weights)
    ),
    Criterion(
        "fim",
        "Fisher F only (Eq. 9 / 14; Child-Tuning-D style).",
        needs_data=True,
        from_stats=lambda stats, config: stats.fisher,
    ),
    Criterion(
        "delta_fim",
        "domain sensitivity dF only (Eq. 5 / the ratio of Eq. 15).",
        needs_data=True,
        needs_dsu=True,
        from_stats=lambda stats, config: shift_statistics(stats, config)[0],
    ),
    Criterion(
        "dr_fim",
        "DR-FIM, F and w * dF at the configured exchange rate (Eq. 7 / 15; FisherTune).",
        needs_data=True,
        needs_dsu=True,
        from_stats=_dr_fim,
    ),
)
for _c in _BUILTINS:
    register_criterion(_c)
