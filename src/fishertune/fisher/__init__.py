"""DR-FIM estimation (phase 2 of Algorithm 1): one function per equation.

- perturb.py      Eq. 6   DSU feature-statistics perturbation (`dsu_transform`) and its forward hooks
- likelihood.py   Eq. 4   per-pixel predictive distribution, label sampling, per-sample NLL
- diagonal.py     Eq. 9   diagonal Fisher from per-sample squared gradients
- variational.py  Eq. 10-15 variational precision, Fisher and DR-FIM
- criteria.py     Eq. 5, 7 (with its exchange rates); the data-free scores are `fishertune.tuner.data_free`'s
- registry.py     the criteria by name (`Criterion`, `register_criterion`, `get_criterion`, `criterion_names()`)
- passes.py       the clean and DSU-perturbed estimation passes over T2 batches
- estimate.py     `estimate_scores`; config.py `EstimationConfig`; io.py; plots.py (Fig. 6)
- timing.py       `EstimationTiming`: batch arrivals, seconds of the passes and of the scoring
"""

from .config import EstimationConfig
from .criteria import (
    EXCHANGES,
    domain_sensitivity,
    dr_fim,
    percentile_ranks,
    relative_eps,
)
from .diagonal import diagonal_fisher
from .estimate import estimate_scores, estimate_statistics, scores_from_stats
from .io import load_scores, load_statistics, save_scores, save_statistics
from .likelihood import fisher_sample_weights
from .perturb import DSUHooks, dsu_transform, find_blocks
from .plots import plot_sensitivity_map, sensitivity_table
from .registry import Criterion, criterion_names, get_criterion, register_criterion, unregister_criterion
from .timing import EstimationTiming
from .variational import fisher_from_precision, kl_divergence, variational_delta

__all__ = [
    "Criterion",
    "EXCHANGES",
    "DSUHooks",
    "EstimationConfig",
    "EstimationTiming",
    "diagonal_fisher",
    "domain_sensitivity",
    "dr_fim",
    "dsu_transform",
    "criterion_names",
    "estimate_scores",
    "estimate_statistics",
    "find_blocks",
    "fisher_sample_weights",
    "fisher_from_precision",
    "get_criterion",
    "kl_divergence",
    "load_scores",
    "load_statistics",
    "percentile_ranks",
    "plot_sensitivity_map",
    "register_criterion",
    "relative_eps",
    "save_scores",
    "save_statistics",
    "scores_from_stats",
    "sensitivity_table",
    "unregister_criterion",
    "variational_delta",
]
