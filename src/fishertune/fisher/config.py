"""EstimationConfig: every option of phase 2 (Algorithm 1) in one validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .criteria import CRITERIA


@dataclass
class EstimationConfig:
    """How `estimate_scores` ranks the targeted weight entries.

    Args:
        criterion (`str`, defaults to `"dr_fim"`):
            `random`, `random_q`, `random_k`, `random_v` (random inside one attention group), `magnitude` (|W|),
            `fim` (Fisher, Eq. 9/14), `delta_fim` (domain sensitivity, Eq. 5), `dr_fim` (Eq. 7/15).
        estimator (`str`, defaults to `"variational"`):
            `diagonal` (Eq. 9, per-sample squared gradients) or `variational` (Eq. 10-15). The paper's method is
            the variational one; the diagonal one is the Table 5 ablation.
        fisher_type (`str`, defaults to `"true"`):
            `true`: labels sampled from the model's own per-pixel prediction (Eq. 4, the Fisher as defined).
            `empirical`: ground-truth labels (Child-Tuning-D/FISH). Default `true`: it is the paper's definition
            and, unlike the empirical Fisher, is not biased toward the gradients of labels the model misfits.
        num_batches (`int`, defaults to 100):
            T2, estimation batches per process. 100 batches of 4-8 crops give 400-800 per-sample squares per
            entry and cost ~1% of a 36k-step tuning phase (see benchmarks/fisher_estimation.py).
        gamma (`float`, defaults to 1e-15):
            KL weight of Eq. 11. With `tau` it sets the Fisher floor gamma/tau^2 = 1e-9 (Lambda = F/gamma + tau^-2):
            entries whose Fisher is far below it stay at the prior and the Eq. 15 ratio's denominator never drops
            below it. 1e-9 is under the ~1e-8 95th-percentile Fisher of a ViT-S with the per-pixel-mean loss, and
            under Eq. 5's eps (1e-8, which Eq. 15 carries as eps/gamma), so Eq. 15's floor matches Eq. 5's. Raise
            it to smooth more; lower it if a warning says most entries sit at the prior.
        tau (`float`, defaults to 1e-3):
            Prior std (Eq. 10) around the pretrained weights, and the largest posterior std: weights sampled by
            the "reparam" gradient move by at most ~tau, 5% of the ~0.02 std of ViT weights, so the second-order
            expansion behind Eq. 14 holds.
        variational_lr (`float`, defaults to 0.1):
            Step of the preconditioned SGD on log Lambda^-1: the fraction of the remaining log-distance to
            the optimum moved per step. 0.1: ~10-step memory, so the second half of 100
            steps averages ~5 independent windows; far from the optimum a step lands on the batch optimum.
        variational_gradient (`str`, defaults to `"expected"`):
            Data term of the ELBO gradient: `"expected"` (closed-form expectation over the posterior under the
            second-order expansion of Eq. 14, with the batch's per-sample Fisher) or `"reparam"` (one antithetic
            reparameterization sample per step, as worded in the paper; noise-dominated at ViT scale, see
            fishertune/fisher/variational.py).
        variational_steps_per_batch (`int`, defaults to 1):
            ELBO steps per batch (one antithetic draw each): the paper's one sample per batch.
        drf_form (`str`, defaults to `"balanced"`):
            Eq. 15 as `"literal"` (outer gamma on both terms: dF is scaled by gamma, so it ranks like F) or
            `"balanced"` (gamma on the Fisher term only: Eq. 7's exchange rate between F and dF).
        dsu_p (`float`, defaults to 1.0):
            Probability that a hooked block perturbs a given step (DSU uses 0.5 in training; here every
            perturbed pass should see a shift, so 1.0).
        dsu_eps (`float`, defaults to 1e-6):
            The eps of Eq. 6 inside sqrt(var + eps), as in DSU.
        dsu_blocks (`list[int]`, *optional*):
            Indices of the backbone blocks whose output is perturbed; `None` = all blocks.
        shift_weight (`str`, defaults to `"abs_mean"`):
            The exp(-(eps_mu + eps_sigma)) factor of Eq. 7/15: `abs_mean` = exp(-(mean|eps_mu| + mean|eps_sigma|))
            per step, averaged (METHOD.md's reading); `literal` uses the signed means.
        seed (`int`, defaults to 0):
            Seeds the random criteria, label sampling, DSU draws and the variational noise. Same seed and data
            give identical scores on every rank and run.
    """

    criterion: str = field(default="dr_fim", metadata={"help": f"One of {', '.join(CRITERIA)}."})
    estimator: str = field(default="variational", metadata={"help": "'diagonal' (Eq. 9) or 'variational' (Eq. 15)."})
    fisher_type: str = field(
        default="true", metadata={"help": "'true' (labels sampled from the prediction, Eq. 4) or 'empirical'."}
    )
    num_batches: int = field(default=100, metadata={"help": "T2: estimation batches per process."})
    gamma: float = field(default=1e-15, metadata={"help": "KL weight of Eq. 11; gamma/tau^2 is the Fisher floor."})
    tau: float = field(default=1e-3, metadata={"help": "Prior std around the pretrained weights (Eq. 10)."})
    variational_lr: float = field(default=0.1, metadata={"help": "Preconditioned SGD step on log-variance."})
    variational_gradient: str = field(
        default="expected", metadata={"help": "'expected' (closed form, default) or 'reparam' (sampled)."}
    )
    variational_steps_per_batch: int = field(default=1, metadata={"help": "ELBO steps (antithetic draws) per batch."})
    drf_form: str = field(default="balanced", metadata={"help": "Eq. 15 as 'balanced' or 'literal'."})
    dsu_p: float = field(default=1.0, metadata={"help": "Probability of perturbing a hooked block per step."})
    dsu_eps: float = field(default=1e-6, metadata={"help": "eps inside sqrt(var + eps) of Eq. 6."})
    dsu_blocks: Optional[list[int]] = field(default=None, metadata={"help": "Blocks to perturb; None = all."})
    shift_weight: str = field(default="abs_mean", metadata={"help": "'abs_mean' or 'literal' weight of Eq. 7."})
    seed: int = field(default=0, metadata={"help": "Seed of every random draw of the estimation."})

    def __post_init__(self) -> None:
        def choice(field_name: str, options) -> None:
            value = getattr(self, field_name)
            if value not in options:
                raise ValueError(f"{field_name}={value!r} is not supported; use one of {', '.join(map(repr, options))}.")

        choice("criterion", CRITERIA)
        choice("estimator", ("diagonal", "variational"))
        choice("fisher_type", ("true", "empirical"))
        choice("variational_gradient", ("expected", "reparam"))
        choice("drf_form", ("balanced", "literal"))
        choice("shift_weight", ("abs_mean", "literal"))
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1 (T2 estimation batches), got {self.num_batches}.")
        if self.variational_steps_per_batch < 1:
            raise ValueError(f"variational_steps_per_batch must be >= 1, got {self.variational_steps_per_batch}.")
        for name in ("gamma", "tau", "variational_lr", "dsu_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}; see the EstimationConfig docstring.")
        if self.variational_lr > 1.0:
            raise ValueError(f"variational_lr must be in (0, 1] (a fraction of the distance per step), got {self.variational_lr}.")
        if not 0.0 <= self.dsu_p <= 1.0:
            raise ValueError(f"dsu_p is a probability in [0, 1], got {self.dsu_p}.")
        if self.dsu_blocks is not None:
            self.dsu_blocks = list(self.dsu_blocks)
            if not self.dsu_blocks or any(not isinstance(i, int) or i < 0 for i in self.dsu_blocks):
                raise ValueError(f"dsu_blocks must be None (all blocks) or non-empty block indices >= 0, got {self.dsu_blocks}.")
