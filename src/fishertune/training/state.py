"""The FisherTune phase state of a run (`FisherTuneState`) and the FisherTune part of a checkpoint.

`FisherTuneState` is to Algorithm 1 what transformers' `TrainerState` is to the training loop: one object the
trainer owns, that the callbacks read, and whose `to_dict()` is the checkpoint's `fishertune_trainer_state.json`
(`from_dict` reads it back; the JSON keys are fixed, so that every checkpoint the package wrote resumes).

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
from dataclasses import dataclass, field, fields
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


@dataclass
class FisherTuneState:
    """The phase state of a `FisherTuneTrainer` run: what a checkpoint must hold beyond transformers' own state.

    The trainer is its only writer: the phase fields when a phase changes, the counters and the model's counts
    (`global_step` ... `bad_file_skips`) just before each checkpoint is written.

    Args:
        model_fingerprint (`str`): `model_fingerprint` of the model (a resume refuses another model).
        options (`dict`): FisherTune's options of the run (`FisherTuneTrainingArguments.fishertune_options`).
        settings (`dict`): the other settings a resume compares (`RESUME_SETTINGS` and the trainer's `run_settings`).
        global_step (`int`): the step of the last save.
        phase_lengths (`list[int]`, *optional*): (T1, T2, T3) of the run at the last save.
        in_tuning (`bool`): phase 3 has started (the selection is made, for method "sparse").
        active_fraction (`float`, *optional*): the active share p(t) of Eq. 16 of the current tuning step.
        num_allocated (`int`, *optional*): the selected entries (method "sparse") at the last save.
        num_active (`int`, *optional*): the active entries (method "sparse") at the last save.
        estimation_pending (`bool`): the save ends step T1 before phase 2 finished (a bad file stopped it): a resumed
            run estimates again.
        nonfinite_skipped_steps (`int`): optimizer steps dropped for non-finite values, over the resumed runs.
        bad_file_skips (`int`): unreadable training samples replaced, over the resumed runs, at the last save.
        scores (`dict[str, torch.Tensor]`, *optional*): phase 2's scores once it ran (saved as their own file; the
            JSON says `selected`).
        estimation_timing (`fishertune.fisher.EstimationTiming`, *optional*): phase 2's timing once it ran in this
            process (not saved).
        bad_file_skips_resumed (`int`): `bad_file_skips` of the checkpoint resumed (not saved).
    """

    model_fingerprint: Optional[str] = None
    options: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    global_step: int = 0
    phase_lengths: Optional[list] = None
    in_tuning: bool = False
    active_fraction: Optional[float] = None
    num_allocated: Optional[int] = None
    num_active: Optional[int] = None
    estimation_pending: bool = False
    nonfinite_skipped_steps: int = 0
    bad_file_skips: int = 0
    scores: Optional[dict] = field(default=None, repr=False, metadata={"saved": False})
    estimation_timing: Any = field(default=None, repr=False, metadata={"saved": False})
    bad_file_skips_resumed: int = field(default=0, metadata={"saved": False})

    @property
    def phase(self) -> int:
        """1 (warm-up) or 3 (tuning): the phase of the step being taken."""
        return 3 if self.in_tuning else 1

    @property
    def selected(self) -> bool:
        return self.scores is not None

    def to_dict(self) -> dict:
        """The checkpoint's JSON payload (without `format_version`, which `write_state` adds)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("saved", True)}
        out.update(phase=self.phase, selected=self.selected)
        return _jsonable(out)

    @classmethod
    def from_dict(cls, saved: dict) -> "FisherTuneState":
        """The state of a checkpoint's payload; `scores` stay None (the trainer loads them when `selected`)."""
        known = {f.name for f in fields(cls) if f.metadata.get("saved", True)}
        state = cls(**{k: saved[k] for k in known if k in saved})  # older checkpoints lack the newer keys
        state.in_tuning, state.estimation_pending = bool(state.in_tuning), bool(state.estimation_pending)
        state.nonfinite_skipped_steps = int(state.nonfinite_skipped_steps)
        state.bad_file_skips = int(state.bad_file_skips)
        state.bad_file_skips_resumed = state.bad_file_skips
        return state

    def restore(self, saved: dict) -> None:
        """Take a checkpoint's payload in place (`from_dict`): the callbacks hold this object."""
        loaded = self.from_dict(saved)
        for f in fields(self):
            setattr(self, f.name, getattr(loaded, f.name))


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
        raise ValueError(
            f"allow_changed_settings names {', '.join(unknown)}, which a resume does not compare; "
            f"the settings it compares are: {', '.join(sorted(known))}."
        )


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
        raise ValueError(
            f"{checkpoint_dir} has FisherTune state format {saved.get('format_version')}, "
            f"this version reads {FORMAT_VERSION}."
        )
    if "model_fingerprint" in expected and saved.get("model_fingerprint") != expected["model_fingerprint"]:
        raise ValueError(
            f"Cannot resume from {checkpoint_dir}: it belongs to another model: the model differs "
            "(parameter names or shapes). Resume with the same model, or start a new run."
        )
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
