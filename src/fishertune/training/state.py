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


def differences(saved: dict, expected: dict) -> dict[str, tuple[Any, Any]]:
    """`{setting: (checkpoint's value, this run's)}` over FisherTune's options and the run settings (the latter only
    where the checkpoint records them: older checkpoints did not)."""
    pairs = [(saved.get("options", {}), _jsonable(expected.get("options", {})))]
    if "settings" in saved:
        pairs.append((saved["settings"], _jsonable(expected.get("settings", {}))))
    changed = {}
    for before, now in pairs:
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                changed[key] = (before.get(key), now.get(key))
    return changed


def describe_changes(changed: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key}: checkpoint {before!r}, now {now!r}" for key, (before, now) in changed.items())


def check_allowed_names(allowed, expected: dict) -> None:
    """A name in `allow_changed_settings` that no resume compares is a typo: refuse it, listing the names."""
    known = set(expected.get("options", {})) | set(expected.get("settings", {}))
    unknown = sorted(set(allowed) - known)
    if unknown:
        raise ValueError(f"allow_changed_settings names {', '.join(unknown)}, which a resume does not compare; "
                         f"the settings it compares are: {', '.join(sorted(known))}.")


def check_compatible(saved: Optional[dict], expected: dict, checkpoint_dir: str,
                     allowed=()) -> dict[str, tuple[Any, Any]]:  # fmt: skip
    """Raise a ValueError naming every difference between a checkpoint's state and this run that `allowed` (the
    training argument `allow_changed_settings`) does not name; return the allowed differences.

    `expected` holds `options` and `settings` (compared setting by setting) and, once the model exists, its
    `model_fingerprint` (never allowed to differ: the checkpoint's tensors would not fit).
    """
    if saved is None:
        raise ValueError(
            f"{checkpoint_dir} has no {STATE_NAME}: it was not written by FisherTuneTrainer, or its save did not "
            "finish. Resume from a complete checkpoint (resume_from_checkpoint=True takes the newest one), or start "
            "a new run."
        )
    if saved.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{checkpoint_dir} has FisherTune state format {saved.get('format_version')}, "
                         f"this version reads {FORMAT_VERSION}.")
    if "model_fingerprint" in expected and saved.get("model_fingerprint") != expected["model_fingerprint"]:
        raise ValueError(f"Cannot resume from {checkpoint_dir}: it belongs to another model: the model differs "
                         "(parameter names or shapes). Resume with the same model, or start a new run.")
    check_allowed_names(allowed, expected)
    changed = differences(saved, expected)
    refused = {k: v for k, v in changed.items() if k not in set(allowed)}
    if refused:
        raise ValueError(
            f"Cannot resume from {checkpoint_dir}: it was saved with other settings: {describe_changes(refused)}. "
            "Resume with the checkpoint's values, start a new run, or pass --allow_changed_settings "
            f"{','.join(refused)} to go on with the new ones."
        )
    return changed
