"""EstimationConfig: every option of phase 2 (Algorithm 1) in one validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from .criteria import EXCHANGES
from .perturb import DRAWS
from .registry import CRITERIA

_DEFAULT_PRIOR_FLOOR = 1e-3


@dataclass
class EstimationConfig:
    """How `estimate_scores` ranks the targeted weight entries.

    Args:
        criterion (`str`, defaults to `"dr_fim"`):
            A name of the criteria registry (`fishertune.fisher.criterion_names()`): `random`, `random_q`, `random_k`,
            `random_v` (random inside one attention group), `magnitude` (|W|), `fim` (Fisher, Eq. 9/14),
            `delta_fim` (domain sensitivity, Eq. 5), `dr_fim` (Eq. 7/15), or one added with `register_criterion`.
        estimator (`str`, defaults to `"variational"`):
            `diagonal` (Eq. 9, per-sample squared gradients) or `variational` (Eq. 10-15). The paper's method is
            the variational one; the diagonal one is the Table 5 ablation.
        fisher_type (`str`, defaults to `"true"`):
            `true`: labels sampled from the model's own per-pixel prediction (Eq. 4, the Fisher as defined).
            `empirical`: ground-truth labels (Child-Tuning-D/FISH). Default `true`: it is the paper's definition
            and, unlike the empirical Fisher, is not biased toward the gradients of labels the model misfits.
        fisher_unit (`str`, defaults to `"pixel"`):
            The unit of F. `pixel`: each sample's squared gradient is scaled by its number of valid pixels, which
            makes F (true Fisher) the mean over pixels of the one-pixel Fisher: the same value and ranking for any
            crop size or share of ignored pixels. `sample`: the Fisher of the per-pixel-mean loss (scales as
            1/pixels).
        num_batches (`int`, defaults to 100):
            T2, estimation batches per process. 100 batches of 4-8 crops give 400-800 per-sample squares per
            entry and cost ~1% of a 36k-step tuning phase (see benchmarks/fisher_estimation.py).
        delta_eps (`float`, defaults to 1e-3):
            Eq. 5's eps as a fraction of the mean of F over all targeted entries. The paper's eps "prevents
            division by zero", so it must sit below F: at 1e-3 of the mean, min(F, F') is the denominator
            for the large majority of entries.
        exchange (`str`, defaults to `"rank"`):
            The exchange rate between F and dF in Eq. 7/15 (DRF = F + rate * w * dF). `rank`: percentile of F plus
            w times percentile of dF over all targeted entries (unit-free; default, see docs/METHOD.md for the
            measurement that chose it). `quantile`: rate = the `exchange_quantile` of F. `gamma`: the printed
            Eq. 15, rate = the ELBO's gamma (variational only). `sum`: the literal Eq. 7 (rate 1), which ranks like
            dF alone whenever F is far below 1.
        exchange_quantile (`float`, defaults to 0.99):
            The quantile of F that one unit of w * dF is worth under `exchange="quantile"`.
        gamma (`float`, *optional*):
            KL weight of Eq. 11, in F's unit times tau^2. With `tau` it sets the Fisher floor gamma/tau^2
            (Lambda = F/gamma + tau^-2): entries whose Fisher is far below it stay at the prior, and Eq. 15's
            denominator never drops below it. `None` (default): derived from `prior_floor`; setting both is refused.
        prior_floor (`float`, defaults to 1e-3):
            The variational estimator's one hyper-parameter of substance: the prior floor gamma/tau^2 as a
            fraction of the mean Fisher of the first clean batch (gamma = prior_floor * tau^2 * mean F), so it has
            the same meaning on any model, crop or loss scale. It never changes F's ranking (Lambda is monotone in
            F); it enters dF's denominator (Eq. 15), where it mutes the domain sensitivity of entries whose F is
            below it. Scale (benchmarks/variational_floor.py, heavy-tailed synthetic F): at 1e-4-1e-3 under 1% of
            the entries sit below it and DR-FIM's top 5% overlaps the diagonal estimator's by Jaccard 0.88; at
            1e-2, 10% (0.87); at 0.1, 44% (0.78); at 1, 84% (0.60). Must be > 0; unused when `gamma` is given.
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
        dsu_p (`float`, defaults to 0.5):
            Probability that a hooked block perturbs a given step: DSU's own default (Li et al., ICLR 2022).
        dsu_eps (`float`, defaults to 1e-6):
            The eps of Eq. 6 inside sqrt(var + eps), as in DSU.
        dsu_blocks (`list[int]`, *optional*):
            Indices of the backbone blocks whose output is perturbed; `None` = all blocks.
        dsu_draw (`str`, defaults to `"channel"`):
            The shape of Eq. 6's eps_mu, eps_sigma. `channel`: DSU's own, one N(0, 1) draw per sample and channel
            in every block; Eq. 7's weight is then exp(-(mean|eps_mu| + mean|eps_sigma|)) over some B x C x blocks
            draws, ~0.2 whatever the data. `scalar`: as Eq. 6-7 write them, one eps_mu and one eps_sigma per batch,
            shared by every sample, channel and perturbed block, so each batch's shift has one size and its own
            weight exp(-(|eps_mu| + |eps_sigma|)) in (0, 1]; with `shift_weight_reading="per_batch"` each batch's
            dF is weighted by it (the paper's Eq. 7). See docs/METHOD.md for why `channel` stays the default.
        shift_weight (`str`, defaults to `"abs_mean"`):
            The exp(-(eps_mu + eps_sigma)) factor of Eq. 7/15: `abs_mean` = exp(-(mean|eps_mu| + mean|eps_sigma|))
            per step (docs/METHOD.md's reading; with `dsu_draw="scalar"`, exp(-(|eps_mu| + |eps_sigma|))); `literal`
            uses the signed values, as printed (can exceed 1).
        shift_weight_reading (`str`, defaults to `"mean"`):
            Where the weight enters. `mean`: dF from the Fisher of all batches, times the mean weight of all
            steps. `per_batch`: each batch's dF (from that batch's F and F') times that batch's weight, averaged
            over batches (needs the diagonal estimator or `variational_gradient="expected"`). Default `mean`:
            a one-batch dF is the ratio of two one-batch Fisher estimates, much noisier than the ratio of
            T2-batch ones.
        micro_batch_size (`int`, *optional*):
            Samples per forward/backward of the passes: each batch is processed in micro-batches of this size, so
            the activations held scale with it, not with the batch. Per-sample squares are summed, label draws and
            DSU draws are made for the whole batch and sliced, and with DSU a no-grad forward of the whole batch
            first records the batch statistics of Eq. 6 (Sigma_mu, Sigma_sigma) that every micro-batch then uses:
            the statistics equal the whole batch's up to float rounding (tests/fisher/test_micro_batch.py).
            `None` (default): the whole batch at once. Needs `variational_gradient="expected"` with the
            variational estimator. Lower it when phase 2 is refused for memory.
        accumulator_dtype (`str`, defaults to `"float64"`):
            Dtype of the running sums of per-sample squares (Eq. 9): `float64` (8 B per targeted entry; scores
            independent of how samples are split over ranks and micro-batches) or `float32` (4 B; measured against
            float64 in benchmarks/fisher_precision.py: see benchmarks/README.md).
        memory_check (`str`, defaults to `"refuse"`):
            Before the passes, phase 2's memory is estimated (`fishertune.fisher.memory`) and logged. `refuse`
            raises a `MemoryError` naming `micro_batch_size` when the device has less available; `warn` logs it
            and runs; `off` runs without comparing.
        seed (`int`, defaults to 0):
            Seeds the random criteria, label sampling, DSU draws and the variational noise. Same seed and data
            give identical scores on every rank and run.
    """

    # `choices` (argparse's, via HfArgumentParser) is also what __post_init__ accepts: one list per option.
    criterion: str = field(
        default="dr_fim",
        metadata={
            "help": "Selection criterion, a name of fishertune.fisher.criterion_names() (dr_fim: Eq. 7/15).",
            "choices": CRITERIA,
        },
    )
    estimator: str = field(
        default="variational",
        metadata={"help": "'variational' (Eq. 10-15) or 'diagonal' (Eq. 9).", "choices": ["variational", "diagonal"]},
    )
    fisher_type: str = field(
        default="true",
        metadata={
            "help": "'true' (labels sampled from the prediction, Eq. 4) or 'empirical' (ground truth).",
            "choices": ["true", "empirical"],
        },
    )
    fisher_unit: str = field(
        default="pixel",
        metadata={"help": "F's unit: 'pixel' (crop-size invariant F) or 'sample'.", "choices": ["pixel", "sample"]},
    )
    num_batches: int = field(default=100, metadata={"help": "T2: estimation batches per process."})
    delta_eps: float = field(default=1e-3, metadata={"help": "Eq. 5's eps as a fraction of mean(F)."})
    exchange: str = field(
        default="rank", metadata={"help": "F-vs-dF exchange rate of Eq. 7/15.", "choices": list(EXCHANGES)}
    )
    exchange_quantile: float = field(
        default=0.99, metadata={"help": "Quantile of F worth one unit of w*dF ('quantile')."}
    )
    gamma: Optional[float] = field(
        default=None, metadata={"help": "KL weight of Eq. 11; None: prior_floor * tau^2 * mean(F)."}
    )
    prior_floor: float = field(
        default=_DEFAULT_PRIOR_FLOOR,
        metadata={
            "help": "Prior floor gamma/tau^2 as a fraction of the first batch's mean F (default "
            "1e-3; 1e-1 and above mute dF below the floor; unused with gamma)."
        },
    )
    tau: float = field(default=1e-3, metadata={"help": "Prior std around the pretrained weights (Eq. 10)."})
    variational_lr: float = field(default=0.1, metadata={"help": "Preconditioned SGD step on log-variance."})
    variational_gradient: str = field(
        default="expected",
        metadata={
            "help": "'expected' (closed form, default) or 'reparam' (sampled).",
            "choices": ["expected", "reparam"],
        },
    )
    variational_steps_per_batch: int = field(default=1, metadata={"help": "ELBO steps (antithetic draws) per batch."})
    dsu_p: float = field(
        default=0.5, metadata={"help": "Probability of perturbing a hooked block per step (DSU: 0.5)."}
    )
    dsu_eps: float = field(default=1e-6, metadata={"help": "eps inside sqrt(var + eps) of Eq. 6."})
    dsu_blocks: Optional[list[int]] = field(default=None, metadata={"help": "Blocks to perturb; None = all."})
    dsu_draw: str = field(
        default="channel",
        metadata={
            "help": "Shape of Eq. 6's eps: 'channel' (DSU's, per sample and channel) or "
            "'scalar' (the paper's: one pair per batch, its own Eq. 7 weight).",
            "choices": list(DRAWS),
        },
    )
    shift_weight: str = field(
        default="abs_mean",
        metadata={"help": "Weight w of dF in Eq. 7: 'abs_mean' or 'literal'.", "choices": ["abs_mean", "literal"]},
    )
    shift_weight_reading: str = field(
        default="mean",
        metadata={"help": "'mean' (dF of all batches x mean weight) or 'per_batch'.", "choices": ["mean", "per_batch"]},
    )
    micro_batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "Samples per forward/backward of phase 2 (None: the whole batch); lower it "
            "when phase 2 is refused for memory."
        },
    )
    accumulator_dtype: str = field(
        default="float64",
        metadata={
            "help": "Dtype of the sums of per-sample squares: 'float64' or 'float32'.",
            "choices": ["float64", "float32"],
        },
    )
    memory_check: str = field(
        default="refuse",
        metadata={
            "help": "When phase 2's estimated memory exceeds what is available: 'refuse', 'warn' or 'off'.",
            "choices": ["refuse", "warn", "off"],
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of every random draw of the estimation."})

    def __post_init__(self) -> None:
        CRITERIA.get(self.criterion)  # raises naming the registered criteria and how to add one
        for f in fields(self):
            options = f.metadata.get("choices")
            if options is not None and getattr(self, f.name) not in options:
                raise ValueError(
                    f"{f.name}={getattr(self, f.name)!r} is not supported; use one of {', '.join(map(repr, options))}."
                )
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1 (T2 estimation batches), got {self.num_batches}.")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None (the whole batch), got {self.micro_batch_size}.")
        if (
            self.micro_batch_size is not None
            and self.estimator == "variational"
            and self.variational_gradient == "reparam"
        ):
            raise ValueError(
                "micro_batch_size needs per-sample passes: use variational_gradient='expected' (default) "
                "or the diagonal estimator, or micro_batch_size=None."
            )
        if self.variational_steps_per_batch < 1:
            raise ValueError(f"variational_steps_per_batch must be >= 1, got {self.variational_steps_per_batch}.")
        if self.gamma is not None and self.prior_floor != _DEFAULT_PRIOR_FLOOR:
            raise ValueError(
                f"gamma={self.gamma} and prior_floor={self.prior_floor} both set the prior floor "
                "gamma/tau^2: give one (prior_floor, relative to F's scale, is the portable one)."
            )
        for name in ("tau", "variational_lr", "dsu_eps", "delta_eps", "prior_floor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}; see the EstimationConfig docstring.")
        if self.gamma is not None and not self.gamma > 0:
            raise ValueError(f"gamma must be > 0 or None (derived from the data), got {self.gamma}.")
        if not 0.0 <= self.exchange_quantile <= 1.0:
            raise ValueError(f"exchange_quantile is a quantile in [0, 1], got {self.exchange_quantile}.")
        if self.exchange == "gamma" and self.estimator != "variational":
            raise ValueError(
                "exchange='gamma' is the printed Eq. 15 (the ELBO's gamma as the rate): it needs "
                "estimator='variational'; with the diagonal estimator use 'rank' or 'quantile'."
            )
        if (
            self.shift_weight_reading == "per_batch"
            and self.estimator == "variational"
            and self.variational_gradient == "reparam"
        ):
            raise ValueError(
                "shift_weight_reading='per_batch' needs each batch's Fisher: use the diagonal estimator "
                "or variational_gradient='expected'."
            )
        if self.variational_lr > 1.0:
            raise ValueError(
                f"variational_lr must be in (0, 1] (a fraction of the distance per step), got {self.variational_lr}."
            )
        if not 0.0 <= self.dsu_p <= 1.0:
            raise ValueError(f"dsu_p is a probability in [0, 1], got {self.dsu_p}.")
        if self.dsu_blocks is not None:
            self.dsu_blocks = list(self.dsu_blocks)
            if not self.dsu_blocks or any(not isinstance(i, int) or i < 0 for i in self.dsu_blocks):
                raise ValueError(
                    f"dsu_blocks must be None (all blocks) or non-empty block indices >= 0, got {self.dsu_blocks}."
                )
