"""Training: FisherTune's Algorithm 1 (warm-up, estimation, tuning) and its baselines on `transformers.Trainer`."""

from .arguments import FisherTuneTrainingArguments
from .estimation_args import ESTIMATION_FIELDS, EstimationArguments
from .methods import BASELINE_METHODS, METHODS, Method, get_method
from .callbacks import EstimationCallback, TuningScheduleCallback, WarmupPhaseCallback
from .optimizer import FisherTuneAdamW, build_param_groups, no_weight_decay
from .setup import prepare_model
from .trainer import FisherTuneTrainer

__all__ = [
    "BASELINE_METHODS",
    "ESTIMATION_FIELDS",
    "EstimationArguments",
    "EstimationCallback",
    "FisherTuneAdamW",
    "FisherTuneTrainer",
    "FisherTuneTrainingArguments",
    "METHODS",
    "Method",
    "TuningScheduleCallback",
    "WarmupPhaseCallback",
    "build_param_groups",
    "get_method",
    "no_weight_decay",
    "prepare_model",
]
