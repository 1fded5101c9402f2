"""FisherTuneTrainingArguments: TrainingArguments plus the phases and options of Algorithm 1."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from transformers import TrainingArguments

from .config_args import ESTIMATION_FIELDS, LORA_FIELDS, TUNER_FIELDS, ConfigArguments
from .methods import BASELINE_METHODS, METHODS, get_method
from .nonfinite import POLICIES as NONFINITE_POLICIES
from .optimizer import SPARSE_DECAY

#: TrainingArguments fields that change the optimisation or the data a run trains on: a resumed run must agree on
#: them with its checkpoint unless `allow_changed_settings` names them (with FisherTune's own options, see
#: `resume_settings` and `fishertune.training.state.check_compatible`).
RESUME_SETTINGS = (
    "seed", "data_seed", "learning_rate", "backbone_learning_rate", "decoder_learning_rate", "weight_decay",
    "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "lr_scheduler_type", "lr_scheduler_kwargs",
    "warmup_steps", "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
)  # fmt: skip


CONFIG_FIELDS = frozenset(ESTIMATION_FIELDS + TUNER_FIELDS + LORA_FIELDS)


def _default_num_batches() -> int:
    from fishertune.fisher import EstimationConfig

    return next(f.default for f in fields(EstimationConfig) if f.name == "num_batches")


@dataclass
class FisherTuneTrainingArguments(ConfigArguments, TrainingArguments):
    """[`~transformers.TrainingArguments`] for [`FisherTuneTrainer`]: Algorithm 1 of FisherTune.

    Training runs `max_steps = T1 + T3` optimizer steps: T1 warm-up steps (backbone frozen, decoder
    trained), then T2 estimation batches that take no optimizer step (scores, then selection), then
    T3 tuning steps (the selected entries and the decoder, active share growing by Eq. 16).

    NOTE: defaults that differ from `TrainingArguments` (Rein's recipe, which the paper follows):
    `learning_rate=1e-4` (was 5e-5), `weight_decay=0.05` (was 0.0), `lr_scheduler_type="polynomial"`
    (was "linear") with `lr_scheduler_kwargs={"power": 0.9, "lr_end": 0.0}` (was None), and
    `remove_unused_columns=False` (was True; image datasets transformed on the fly have no
    `pixel_values` column to keep). The optimizer is always AdamW with Rein's no-decay rules
    (see `fishertune.training.optimizer`), so `optim` must name a torch AdamW.

    Args:
        method (`str`, *optional*, defaults to `"sparse"`):
            How the backbone trains (`fishertune.training.methods.METHODS`): `"sparse"` is FisherTune (the
            `delta_max` share of the targeted entries picked by `criterion`, warm-up T1 and estimation T2 first).
            Baselines: `"full"` (whole model), `"frozen"` (decoder only), `"lora"` (PEFT LoRA on the Eq. 3
            targets, or the PeftModel passed to the trainer), `"rein"`, `"vpt"` (VPT-deep), `"adaptformer"`,
            `"vqt"` (`fishertune.baselines` with default configs: backbone frozen, the method's parameters and
            the decoder trained; VQT's queries feed the head through its link). Baselines: no estimation, no
            warm-up unless `warmup_phase_steps`.
        criterion, estimator, fisher_type, fisher_unit, delta_eps, exchange, ..., shift_weight_reading (*optional*):
            Every field of `fishertune.fisher.EstimationConfig` but num_batches and seed, generated from it
            (`training.config_args`, `ESTIMATION_FIELDS`) and documented in its `Args:`. `criterion` (`"dr_fim"`,
            the selection of `method="sparse"`, a name of `fishertune.fisher.criterion_names()`), `estimator`
            (`"variational"`) and `fisher_type` (`"true"`) keep its default; the others default to None, which keeps
            its default (e.g. `variational_gradient="expected"`, `dsu_p=0.5`).
        delta_min, delta_max, budget_base, delta_max_count, delta_min_count (*optional*):
            FisherTune's budget, the fields of `fishertune.tuner.FisherTuneConfig` of that name (`TUNER_FIELDS`,
            documented in its `Args:`): the shares active at the start and at the end of tuning (Eq. 16; 0.01 and
            0.05), what they are shares of (`"targeted"` or `"backbone"`), or a fixed number of entries instead.
            None keeps the config's default.
        lora_r, lora_alpha, lora_dropout (*optional*, defaults to 8, 8 and 0.0):
            `peft.LoraConfig`'s `r`, `lora_alpha` and `lora_dropout` for `method="lora"` when the trainer builds
            the adapter (`LORA_FIELDS`).
        warmup_phase_steps (`int`, *optional*):
            T1, decoder-only warm-up steps. Overrides `warmup_phase_ratio` when set.
        warmup_phase_ratio (`float`, *optional*, defaults to 0.1):
            T1 as a fraction of `max_steps` for `method="sparse"` (baselines default to no warm-up).
        estimation_batches (`int`, *optional*):
            T2, training batches (per process) the estimator reads; None: `EstimationConfig`'s default (100).
            More than the training data holds: a warning, and the phase-2 log and the selection file record the
            number read (`estimation_batches`) beside the one asked for (`estimation_batches_requested`).
        estimation_ratio (`float`, *optional*):
            T2 as a fraction of `max_steps`; overrides `estimation_batches` when set.
        tuning_phase_steps (`int`, *optional*):
            T3. Defaults to `max_steps - T1` (so its fraction form is `1 - warmup_phase_ratio`); with
            `max_steps` unset and both T1 and T3 given, `max_steps = T1 + T3`.
        sparse_weight_decay (`str`, *optional*, defaults to `"delta"`):
            What `weight_decay` acts on for the sparse deltas: `"delta"` (decays delta, pulling W0 + delta towards
            the pretrained W0, as the decay of LoRA's or an adapter's parameters does) or `"weight"` (decays
            W0 + delta, exactly as AdamW moves that entry in full fine-tuning). See docs/METHOD.md.
        backbone_learning_rate (`float`, *optional*):
            Learning rate of the backbone's tuned parameters (sparse deltas, LoRA, full). None: `learning_rate`;
            0 means 0 (they keep their values). Negative rates are refused.
        decoder_learning_rate (`float`, *optional*):
            Learning rate of the decoder. None: `learning_rate`; 0 means 0. Negative rates are refused.
        save_sensitivity_plot (`bool`, *optional*, defaults to `True`):
            Write the Fig. 6-style sensitivity map next to the scores after estimation.
        save_estimation_statistics (`bool`, *optional*, defaults to `False`):
            Also write the estimation's statistics (F, F', both dF readings; `fishertune.fisher.load_statistics`)
            so that `scores_from_stats` can score any Fisher criterion or exchange rate without another pass.
        nonfinite_policy (`str`, *optional*, defaults to `"error"`):
            A NaN/inf loss or gradient in phase 1 or 3: `"error"` stops with an error naming the step and the
            first non-finite tensor, before anything of that step is applied or saved; `"skip"` drops that
            optimizer step (no parameter changes), warns and counts it (logged as `nonfinite_skipped_steps`).
            A parameter made non-finite by an update always stops the run. See `fishertune.training.nonfinite`.
        nonfinite_max_skips (`int`, *optional*, defaults to 10):
            With `nonfinite_policy="skip"`, the most steps a run may drop before it stops with an error.
        allow_changed_settings (`list[str]`, *optional*, defaults to `[]`):
            Settings that may differ from the checkpoint's when resuming (`"learning_rate,seed"` or a list). A
            resumed run is refused when a setting that changes the model, the data or the optimisation differs
            from its checkpoint's (`RESUME_SETTINGS`, FisherTune's options, and the run settings the trainer is
            given), naming the setting and both values; a setting named here is taken with its new value and the
            change is logged.
    """

    method: str = field(
        default="sparse",
        metadata={
            "help": "Training method: sparse (FisherTune: `criterion` selects the entries) or a baseline: "
            + ", ".join(BASELINE_METHODS)
            + ".",
            "choices": list(METHODS),
        },
    )
    warmup_phase_steps: Optional[int] = field(
        default=None, metadata={"help": "T1: decoder-only warm-up steps; overrides warmup_phase_ratio."}
    )
    warmup_phase_ratio: float = field(
        default=0.1, metadata={"help": "T1 as a fraction of max_steps (method=sparse only)."}
    )
    estimation_batches: Optional[int] = field(
        default=None, metadata={"help": "T2: batches per process read by the estimator (None: EstimationConfig's 100)."}
    )
    estimation_ratio: Optional[float] = field(
        default=None, metadata={"help": "T2 as a fraction of max_steps; overrides estimation_batches."}
    )
    tuning_phase_steps: Optional[int] = field(
        default=None, metadata={"help": "T3: tuning steps; default max_steps - T1."}
    )
    backbone_learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": "Backbone lr (None: learning_rate; 0: the backbone's tuned parameters stay put)."},
    )
    decoder_learning_rate: Optional[float] = field(
        default=None, metadata={"help": "Decoder lr (None: learning_rate; 0: the decoder stays put)."}
    )
    save_sensitivity_plot: bool = field(default=True, metadata={"help": "Plot the sensitivity map after estimation."})
    nonfinite_policy: str = field(
        default="error",
        metadata={
            "help": "NaN/inf loss or gradient in phases 1/3: 'error' stops naming the step and tensor; 'skip' "
            "drops the step (at most nonfinite_max_skips times).",
            "choices": list(NONFINITE_POLICIES),
        },
    )
    nonfinite_max_skips: int = field(
        default=10, metadata={"help": "With nonfinite_policy='skip': steps a run may drop before it stops."}
    )
    allow_changed_settings: list[str] = field(
        default_factory=list,
        metadata={
            "help": "On resume, settings that may differ from the checkpoint's, comma-separated (e.g. "
            "learning_rate,seed); others that change the model, data or optimisation are refused. "
            "The run uses and logs the new values."
        },
    )
    save_estimation_statistics: bool = field(
        default=False,
        metadata={
            "help": "Also write F, F' and both dF readings (fishertune_statistics.safetensors, ~5x the scores) "
            "so other criteria and exchange rates can be scored without another estimation."
        },
    )

    # Rein's recipe (see the NOTE in the docstring).
    learning_rate: float = field(default=1e-4, metadata={"help": "Initial AdamW learning rate (Rein: 1e-4)."})
    weight_decay: float = field(
        default=0.05, metadata={"help": "AdamW weight decay (Rein: 0.05; never on norms etc.)."}
    )
    sparse_weight_decay: str = field(
        default="delta",
        metadata={
            "help": "What weight decay acts on for FisherTune's sparse entries: 'delta' (a pull "
            "to the pretrained W0, as on LoRA/adapter parameters) or 'weight' (W0 + "
            "delta, as AdamW in full fine-tuning).",
            "choices": list(SPARSE_DECAY),
        },
    )
    lr_scheduler_type: str = field(default="polynomial", metadata={"help": "LR schedule (Rein: poly, power 0.9)."})
    lr_scheduler_kwargs: dict | str | None = field(
        default_factory=lambda: {"power": 0.9, "lr_end": 0.0},
        metadata={"help": "Extra scheduler arguments (Rein: power 0.9 down to 0)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep columns the collator turns into inputs."}
    )

    def __post_init__(self) -> None:
        get_method(self.method)
        for name in ("backbone_learning_rate", "decoder_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # NaN too: it would train by nothing or by gradient ascent
                raise ValueError(
                    f"{name} must be >= 0 (0 keeps those parameters fixed; leave it unset to use "
                    f"learning_rate), got {value}."
                )
        names = (
            [self.allow_changed_settings]
            if isinstance(self.allow_changed_settings, str)
            else list(self.allow_changed_settings or [])
        )
        self.allow_changed_settings = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
        if self.nonfinite_max_skips < 0:
            raise ValueError(f"nonfinite_max_skips must be >= 0, got {self.nonfinite_max_skips}.")
        # The settings' own validation, before any training work: each config checks its fields (and their choices).
        self.estimation_config(num_batches=1)
        self.tuner_config()
        self.lora_config()
        for f in fields(self):  # this class's own fields with choices (the configs' are checked by the configs)
            options, value = f.metadata.get("choices"), getattr(self, f.name)
            if f.name not in CONFIG_FIELDS and options is not None and value is not None and value not in options:
                raise ValueError(
                    f"{f.name} must be one of {', '.join(map(repr, options))}, got {value!r} "
                    f"({f.metadata.get('help', '')})"
                )
        for name in ("warmup_phase_steps", "estimation_batches", "tuning_phase_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}; leave it unset to use the ratio default.")
        for name in ("warmup_phase_ratio", "estimation_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (a fraction of max_steps), got {value}.")
        if self.tuning_phase_steps is not None and self.warmup_phase_steps is not None:
            total = self.warmup_phase_steps + self.tuning_phase_steps
            if self.max_steps is None or self.max_steps <= 0:
                self.max_steps = total
            elif self.max_steps != total:
                raise ValueError(
                    f"warmup_phase_steps + tuning_phase_steps = {total} but max_steps = {self.max_steps}: "
                    "set two of the three, or make them agree (estimation takes no optimizer step)."
                )
        if not str(getattr(self.optim, "value", self.optim)).startswith("adamw_torch"):
            raise ValueError(
                "FisherTuneTrainer builds its own AdamW (Rein's param groups, sparse-aware decay); "
                f"got optim={self.optim!r}. "
                "Use optim='adamw_torch'."
            )
        super().__post_init__()

    def reentrant_checkpointing(self) -> bool:
        """Whether activation checkpointing is on with ``use_reentrant=True`` (then `training.methods.prepare_model`
        makes the backbone's input require grad, as transformers does for its PEFT models: a reentrant checkpoint
        only back-propagates into blocks whose input requires grad, and the frozen patch embedding's does not)."""
        ckpt_kwargs = getattr(self, "activation_checkpointing_kwargs", None) or self.gradient_checkpointing_kwargs or {}
        on = getattr(self, "activation_checkpointing", False) or self.gradient_checkpointing
        return bool(on and ckpt_kwargs.get("use_reentrant"))

    def phase_lengths(self, max_steps: int) -> tuple[int, int, int]:
        """(T1, T2, T3) for a run of `max_steps` optimizer steps; T1 + T3 == max_steps."""
        if self.warmup_phase_steps is not None:
            t1 = self.warmup_phase_steps
        elif get_method(self.method).is_sparse:
            t1 = int(round(self.warmup_phase_ratio * max_steps))
        else:
            t1 = 0  # baselines train their backbone from step 0 unless a warm-up is asked for explicitly
        if t1 > max_steps:
            raise ValueError(f"warm-up T1={t1} exceeds max_steps={max_steps}; lower warmup_phase_steps.")
        if self.estimation_ratio is not None:
            t2 = max(1, int(round(self.estimation_ratio * max_steps)))
        else:
            t2 = self.estimation_batches if self.estimation_batches is not None else _default_num_batches()
        if not get_method(self.method).is_sparse:
            t2 = 0
        t3 = max_steps - t1
        if self.tuning_phase_steps is not None and self.tuning_phase_steps != t3:
            raise ValueError(
                f"tuning_phase_steps={self.tuning_phase_steps} but max_steps - T1 = {t3}; set two of max_steps, "
                "warmup_phase_steps and tuning_phase_steps."
            )
        return t1, t2, t3

    def fishertune_options(self) -> dict[str, Any]:
        """The fields this class adds to TrainingArguments (what a resumed run must agree on)."""
        own = {f.name for f in fields(TrainingArguments)}
        # How to react to a NaN may change on resume (e.g. resume a run that stopped at a NaN with policy 'skip').
        # The learning rates are compared with the other optimisation settings (`resume_settings`).
        skip = {
            "save_sensitivity_plot",
            "backbone_learning_rate",
            "decoder_learning_rate",
            "nonfinite_policy",
            "nonfinite_max_skips",
            "allow_changed_settings",
        }
        if not get_method(self.method).is_sparse:
            skip.add("criterion")  # a baseline selects nothing: its criterion is not part of the run
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in own and f.name not in skip}

    def resume_settings(self) -> dict[str, Any]:
        """The optimisation and data-order settings of `RESUME_SETTINGS` (what a resumed run must agree on besides
        `fishertune_options`)."""
        return {name: getattr(self, name) for name in RESUME_SETTINGS}
