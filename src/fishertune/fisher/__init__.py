"""DR-FIM estimation (phase 2 of Algorithm 1): one function per equation.

- perturb.py      Eq. 6   DSU feature-statistics perturbation as forward hooks
- likelihood.py   Eq. 4   per-pixel predictive distribution, label sampling, per-sample NLL
- diagonal.py     Eq. 9   diagonal Fisher from per-sample squared gradients
- variational.py  Eq. 10-15 variational precision, Fisher and DR-FIM
- criteria.py     Eq. 5, 7 and every selection criterion
- estimate.py     `estimate_scores`; config.py `EstimationConfig`; io.py; plots.py (Fig. 6)
"""

from .config import EstimationConfig
from .criteria import CRITERIA, domain_sensitivity, dr_fim, magnitude_scores, random_scores
from .diagonal import diagonal_fisher
from .estimate import estimate_scores
from .io import load_scores, save_scores
from .perturb import DSUHooks, dsu_perturb, find_blocks
from .plots import plot_sensitivity_map, sensitivity_table
from .variational import fisher_from_precision, kl_divergence, variational_dr_fim

__all__ = [
    "CRITERIA",
    "DSUHooks",
    "EstimationConfig",
    "diagonal_fisher",
    "domain_sensitivity",
    "dr_fim",
    "dsu_perturb",
    "estimate_scores",
    "find_blocks",
    "fisher_from_precision",
    "kl_divergence",
    "load_scores",
    "magnitude_scores",
    "plot_sensitivity_map",
    "random_scores",
    "save_scores",
    "sensitivity_table",
    "variational_dr_fim",
]
