"""Training: FisherTune's Algorithm 1 (warm-up, estimation, tuning) and its baselines on `transformers.Trainer`."""

from .arguments import FisherTuneTrainingArguments
from .callbacks import EstimationCallback, TuningScheduleCallback, WarmupPhaseCallback
from .config_args import ESTIMATION_FIELDS, LORA_FIELDS, TUNER_FIELDS, ConfigArguments
from .methods import BASELINE_METHODS, METHODS, Method, get_method, prepare_model
from .optimizer import FisherTuneAdamW, build_param_groups, no_weight_decay
from .trainer import FisherTuneTrainer

__all__ = [
    "BASELINE_METHODS",
    "ESTIMATION_FIELDS",
    "ConfigArguments",
    "EstimationCallback",
    "FisherTuneAdamW",
    "FisherTuneTrainer",
    "FisherTuneTrainingArguments",
    "LORA_FIELDS",
    "METHODS",
    "TUNER_FIELDS",
    "Method",
    "TuningScheduleCallback",
    "WarmupPhaseCallback",
    "build_param_groups",
    "get_method",
    "no_weight_decay",
    "prepare_model",
]
