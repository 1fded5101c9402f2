"""A written output folder back as a model: `load_output`, `evaluate_output`.

`load_output` first checks that the folder holds one run's files (`check_output_folder`): a stray, missing or
modified file, or a damaged manifest or config.yaml, is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Optional

import torch
import yaml

from ..outputs import (
    ADAPTER_CONFIG_NAME,
    BASE_MODEL_DIR,
    BASELINE_DIR,
    CONFIG_NAME,
    METRICS_NAME,
    MODEL_CONFIG_NAME,
    RUN_MANIFEST_NAME,
)
from .arguments import ExperimentArguments
from .build import build_base_model, build_eval_datasets, build_source_val, source_id2label
from .manifest import OutputFolderError, read_manifest, verify


def resolve_device(device: Optional[str] = None) -> torch.device:
    """`"auto"`/None: CUDA when available, else CPU; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: Keys every run's config.yaml has; a file without them was cut short (or is not a run's).
_REQUIRED_KEYS = ("backbone", "head", "dataset", "targets")


def read_run_config(folder: str) -> dict:
    """The settings of a run from its `config.yaml`; a missing, unreadable or truncated file is an error naming it."""
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: it is not an output folder of recipes/train.py.")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path} is damaged, not YAML ({err}). Rerun the training to write it again.") from err
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} is damaged: a run's settings are a mapping, this file holds "
            f"{'nothing' if config is None else type(config).__name__}. Rerun the training."
        )
    missing = [k for k in _REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f"{path} is damaged (truncated?): it lacks {', '.join(missing)}. Rerun the training.")
    return config


def load_experiment_args(folder: str, **overrides) -> ExperimentArguments:
    """The `ExperimentArguments` a run was made with (from its `config.yaml`), with `overrides` applied."""
    config = read_run_config(folder)
    names = {f.name for f in dataclasses.fields(ExperimentArguments)}
    values = {k: v for k, v in config.items() if k in names}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ExperimentArguments(**values)


def check_output_folder(folder: str) -> None:
    """Raise unless every file of `folder` is one run's, as its manifest lists it (`manifest.verify`).

    A folder without a manifest was written by a version of fishertune that wrote none: it loads with a warning,
    since nothing says its files belong together. A run that records its id in config.yaml but has no manifest
    stopped while moving its outputs in, and is refused.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder: pass the --output_dir of a recipes/train.py run.")
    manifest = read_manifest(folder)
    if manifest is not None:
        verify(folder, manifest)
        return
    if "run_id" in read_run_config(folder):
        raise OutputFolderError(
            f"{folder} has no {RUN_MANIFEST_NAME} although its run wrote one last: the run "
            "stopped before it finished writing its outputs. Rerun the training."
        )
    warnings.warn(
        f"{folder} has no {RUN_MANIFEST_NAME} (written by an older fishertune): its files cannot be "
        "checked to belong to one run.",
        stacklevel=3,
    )


def load_output(folder: str, device: Optional[str] = None):
    """Load the model of an output folder (adapter on its base, or a merged / full model) in eval mode.

    Returns:
        `(model, ExperimentArguments)`.
    """
    from transformers import AutoModel

    import fishertune.models  # noqa: F401  (registers the segmenters with AutoModel)

    check_output_folder(folder)
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
        raise FileNotFoundError(
            f"{folder} holds neither an adapter ({ADAPTER_CONFIG_NAME}) nor a model ({MODEL_CONFIG_NAME})."
        )
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
