"""The FisherTune part of a checkpoint: phase, schedule, scores and a fingerprint of model and config.

The selection itself (indices, ranks, values) lives in the adapter weights the Trainer saves
anyway; this adds what the adapter does not say: whether tuning has started, the active fraction,
the raw scores, and enough to refuse a checkpoint of another model or another configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any, Optional

from torch import nn

from ..outputs import SCORES_NAME, SELECTION_NAME, STATE_NAME, STATISTICS_NAME  # noqa: F401  (re-exported)
FORMAT_VERSION = 1

# PEFT wrapping changes names but not the model: strip its infixes, drop adapter-only tensors.
_WRAPPER_INFIXES = re.compile(r"(\.base_layer|\.original_module|\.modules_to_save\.[^.]+)(?=\.)")
_ADAPTER_KEYS = ("fishertune_", "lora_")


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the base model's parameter names and shapes (independent of PEFT wrapping)."""
    entries = set()
    for name, p in model.named_parameters():
        if any(k in name for k in _ADAPTER_KEYS):
            continue
        name = _WRAPPER_INFIXES.sub("", name.removeprefix("base_model.model."))
        entries.add(f"{name}:{tuple(p.shape)}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_state(checkpoint_dir: str, payload: dict, scores_file: Optional[str]) -> None:
    """Write the JSON state and place the scores next to it (a hard link when the filesystem allows)."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    with open(os.path.join(checkpoint_dir, STATE_NAME), "w") as f:
        json.dump({"format_version": FORMAT_VERSION, **_jsonable(payload)}, f, indent=2, sort_keys=True)
    if scores_file is not None and os.path.isfile(scores_file):
        target = os.path.join(checkpoint_dir, SCORES_NAME)
        if os.path.exists(target):
            os.remove(target)
        try:
            os.link(scores_file, target)  # scores can be as large as the backbone: do not copy them per checkpoint
        except OSError:
            shutil.copyfile(scores_file, target)


def read_state(checkpoint_dir: str) -> Optional[dict]:
    path = os.path.join(checkpoint_dir, STATE_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_compatible(saved: Optional[dict], expected: dict, checkpoint_dir: str) -> None:
    """Raise a ValueError naming every difference between a checkpoint's state and this run."""
    if saved is None:
        raise ValueError(
            f"{checkpoint_dir} has no {STATE_NAME}: it was not written by FisherTuneTrainer. Resume from one of its "
            "checkpoints, or start a new run (resume_from_checkpoint=None)."
        )
    if saved.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{checkpoint_dir} has FisherTune state format {saved.get('format_version')}, "
                         f"this version reads {FORMAT_VERSION}.")
    problems = []
    if saved.get("model_fingerprint") != expected["model_fingerprint"]:
        problems.append("the model differs (parameter names or shapes)")
    from .methods import upgrade_options

    # A checkpoint from before `method` existed says criterion="full" etc.: read it as method="full".
    saved_opts, opts = upgrade_options(saved.get("options", {})), _jsonable(expected["options"])
    for key in sorted(set(saved_opts) | set(opts)):
        if saved_opts.get(key) != opts.get(key):
            problems.append(f"{key}: checkpoint {saved_opts.get(key)!r}, now {opts.get(key)!r}")
    if problems:
        raise ValueError(
            f"Cannot resume from {checkpoint_dir}: it belongs to another model or configuration: "
            + "; ".join(problems)
            + ". Resume with the same model and FisherTune arguments, or start a new run."
        )
