"""A written output folder back as a model: `load_output`, `evaluate_output`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import torch
import yaml

from ..outputs import ADAPTER_CONFIG_NAME, BASE_MODEL_DIR, BASELINE_DIR, CONFIG_NAME, METRICS_NAME, MODEL_CONFIG_NAME
from .arguments import ExperimentArguments
from .build import build_base_model, build_eval_datasets, build_source_val, source_id2label


def resolve_device(device: Optional[str] = None) -> torch.device:
    """`"auto"`/None: CUDA when available, else CPU; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_experiment_args(folder: str, **overrides) -> ExperimentArguments:
    """The `ExperimentArguments` a run was made with (from its `config.yaml`), with `overrides` applied."""
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} has no config.yaml: it is not an output folder of recipes/train.py.")
    with open(path) as f:
        config = yaml.safe_load(f)
    names = {f.name for f in dataclasses.fields(ExperimentArguments)}
    values = {k: v for k, v in config.items() if k in names}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ExperimentArguments(**values)


def load_output(folder: str, device: Optional[str] = None):
    """Load the model of an output folder (adapter on its base, or a merged / full model) in eval mode.

    Returns:
        `(model, ExperimentArguments)`.
    """
    from transformers import AutoModel

    import fishertune.models  # noqa: F401  (registers the segmenters with AutoModel)

    exp = load_experiment_args(folder)
    if os.path.isfile(os.path.join(folder, ADAPTER_CONFIG_NAME)):
        from peft import PeftModel

        base_dir = os.path.join(folder, BASE_MODEL_DIR)
        if os.path.isdir(base_dir):  # random-init built-in backbone: its exact weights were saved with the run
            base = AutoModel.from_pretrained(base_dir)
        else:
            base = build_base_model(exp, source_id2label(exp))
        model = PeftModel.from_pretrained(base, folder)
    elif os.path.isfile(os.path.join(folder, MODEL_CONFIG_NAME)):
        model = AutoModel.from_pretrained(folder)

        baseline_dir = os.path.join(folder, BASELINE_DIR)
        if os.path.isdir(baseline_dir):
            from ..baselines import load_method_state

            # The full checkpoint gave the backbone and decoder; the method (Rein / VPT / AdaptFormer / VQT)
            # must be installed again before its parameters, which `from_pretrained` dropped, can go back in.
            load_method_state(model, baseline_dir)
    else:
        raise FileNotFoundError(f"{folder} holds neither an adapter ({ADAPTER_CONFIG_NAME}) nor a model ({MODEL_CONFIG_NAME}).")
    return model.to(resolve_device(device)).eval(), exp


def evaluate_output(folder: str, targets: Optional[list[str]] = None, device: Optional[str] = None,
                    include_source_val: Optional[bool] = None, **overrides) -> dict:  # fmt: skip
    """Evaluate a trained output folder per target domain, with the run's own evaluation settings.

    Args:
        folder (`str`): an output folder of `recipes/train.py`.
        targets (`list[str]`, *optional*): `dataset:split` domains; default the run's targets.
        device (`str`, *optional*): `"auto"` (default), `"cpu"`, `"cuda"`, ...
        include_source_val (`bool`, *optional*): also evaluate the source val split; default: only when
            `targets` is not given (then the result matches the run's metrics.json).
        overrides: `ExperimentArguments` fields to change (`target_roots`, `eval_mode`, `max_eval_samples`, ...).

    Returns:
        `dict`: `{target: metrics in %, "mean": ..., [source key: ...]}` as in the run's metrics.json.
    """
    from .run import evaluate_all

    model, _ = load_output(folder, device)
    exp = load_experiment_args(folder, **overrides)
    if include_source_val is None:
        include_source_val = targets is None
    id2label = model.config.id2label  # the classes the model predicts, each target checked against them
    sets = build_eval_datasets(exp, targets, id2label)
    return evaluate_all(model, exp, sets, build_source_val(exp, id2label) if include_source_val else {})


def read_metrics(folder: str) -> dict:
    with open(os.path.join(folder, METRICS_NAME)) as f:
        return json.load(f)
