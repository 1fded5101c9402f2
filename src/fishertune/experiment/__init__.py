"""Experiments: what the recipes (`recipes/train.py`, `evaluate.py`, `predict.py`) run, as library functions.

- `arguments.py`  `ExperimentArguments` (model, data, evaluation, output) beside `FisherTuneTrainingArguments`
- `config_io.py`  YAML defaults + command-line overrides (`parse_args`), the resolved config
- `build.py`      datasets with transforms, the model
- `run.py`        `run_experiment`: train, evaluate per target, write the output folder, push
- `output_dir.py` one run, one folder: what `output_dir` may hold before a run, whether it can take the run
- `manifest.py`   the run manifest: written last, checked by `load_output`
- `saved.py`      `load_output` / `evaluate_output`: a written output folder back as a model
- `predict.py`    colour-coded masks, overlays and the class legend for a folder of images
- `card.py`       the model card (template: `model_card_template.md`, package data)
"""

from __future__ import annotations

from .arguments import (
    BUILTIN_BACKBONES,
    BUILTIN_PREFIX,
    EvaluateArguments,
    ExperimentArguments,
    PredictArguments,
    parse_target,
)
from .card import render_model_card, write_model_card
from .config_io import parse_args, resolved_config
from .predict import predict_folder, predict_output
from .run import format_table, run_experiment
from .saved import evaluate_output, load_output


def parse_experiment_args(argv=None, configs_dir=None, default_config=None, description=None):
    """`(ExperimentArguments, FisherTuneTrainingArguments, config path)` from `--config` YAML + flags."""
    from ..training import FisherTuneTrainingArguments

    return parse_args(
        (ExperimentArguments, FisherTuneTrainingArguments), argv, configs_dir, default_config, description=description
    )


__all__ = [
    "BUILTIN_BACKBONES", "BUILTIN_PREFIX", "EvaluateArguments", "ExperimentArguments", "PredictArguments",
    "evaluate_output", "format_table", "load_output", "parse_args", "parse_experiment_args", "parse_target",
    "predict_folder", "predict_output", "render_model_card", "resolved_config", "run_experiment", "write_model_card",
]  # fmt: skip
