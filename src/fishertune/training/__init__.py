"""Training: FisherTune's Algorithm 1 (warm-up, estimation, tuning) and its baselines on `transformers.Trainer`."""

from .arguments import BASELINE_CRITERIA, SPARSE_CRITERIA, FisherTuneTrainingArguments
from .callbacks import EstimationCallback, TuningScheduleCallback, WarmupPhaseCallback
from .optimizer import FisherTuneAdamW, build_param_groups, no_weight_decay
from .setup import prepare_model
from .trainer import FisherTuneTrainer

__all__ = [
    "BASELINE_CRITERIA",
    "SPARSE_CRITERIA",
    "EstimationCallback",
    "FisherTuneAdamW",
    "FisherTuneTrainer",
    "FisherTuneTrainingArguments",
    "TuningScheduleCallback",
    "WarmupPhaseCallback",
    "build_param_groups",
    "no_weight_decay",
    "prepare_model",
]
