"""The run manifest (`fishertune_run.json`): which files of an output folder one run wrote, and their hashes.

`run_experiment` writes every output into a temporary folder, moves the finished files in (metadata first, the
model files after, the configs loaders look for last: see `publish`) and writes the manifest last of all:

    {"format_version": 1, "run_id": uuid4 hex, "method": "sparse", "settings_sha256": sha256 of the resolved
     settings (config.yaml's content, as sorted JSON), "fishertune_version": "0.1.0",
     "files": {"adapter_model.safetensors": {"sha256": ..., "size": ...}, "base_model/config.json": ..., ...}}

`verify` is what `load_output` (evaluate, predict) checks: every listed file is there with its hash, and no other
file is, except the run's `checkpoint-*` folders, TensorBoard's `runs/` and a killed writer's temporaries
(`fishertune.atomic`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from .. import atomic
from ..outputs import (
    ADAPTER_CONFIG_NAME,
    CARD_NAME,
    CONFIG_NAME,
    IMAGE_PROCESSOR_NAME,
    METRICS_NAME,
    MODEL_CONFIG_NAME,
    RUN_MANIFEST_NAME,
    TRACKER_LOGS_DIR,
    TRAINING_OUTPUTS,
)
from .resume import checkpoints_in

FORMAT_VERSION = 1

#: Moved in first: what describes the run. Last (after the weights): the configs a loader starts from.
_FIRST = (CONFIG_NAME, METRICS_NAME, CARD_NAME, IMAGE_PROCESSOR_NAME)
_LAST = (ADAPTER_CONFIG_NAME, MODEL_CONFIG_NAME)


class OutputFolderError(ValueError):
    """An output folder whose files do not all belong to one run, or whose manifest is damaged."""


def settings_digest(settings: dict) -> str:
    """SHA-256 of the resolved settings as sorted JSON (equal settings, equal digest)."""
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def some(names: list[str], limit: int = 12) -> str:
    """`names` for a message: the first `limit`, and how many more."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def folder_files(folder: str) -> list[str]:
    """Every file under `folder` as a relative `/` path, without `checkpoint-*` folders, the trainer's TensorBoard
    logs and temporaries."""
    skip = {os.path.basename(c) for c in checkpoints_in(folder)} | {TRACKER_LOGS_DIR}
    found = []
    for root, dirs, files in os.walk(folder):
        rel_root = os.path.relpath(root, folder)
        dirs[:] = sorted(d for d in dirs if not atomic.is_temporary(d) and not (rel_root == "." and d in skip))
        for name in sorted(files):
            if not atomic.is_temporary(name):
                found.append(os.path.normpath(os.path.join(rel_root, name)).replace(os.sep, "/"))
    return found


def read_manifest(folder: str) -> Optional[dict[str, Any]]:
    """The manifest of `folder`, or None when it has none; a damaged one is an error naming it."""
    path = os.path.join(folder, RUN_MANIFEST_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OutputFolderError(
            f"{path} is damaged ({err}): the run manifest cannot be read. Rerun the training "
            "into a new --output_dir (or with --overwrite_output_dir true)."
        ) from err
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and {"sha256", "size"} <= set(v) for v in files.values()
    ):
        raise OutputFolderError(
            f"{path} is damaged: not a run manifest (a mapping whose 'files' maps each path to "
            "its sha256 and size). Rerun the training into a new --output_dir."
        )
    return manifest


def verify(folder: str, manifest: dict[str, Any]) -> None:
    """Raise `OutputFolderError` naming every stray, missing or modified file of `folder` against `manifest`."""
    listed = manifest["files"]
    present = set(folder_files(folder)) - {RUN_MANIFEST_NAME}
    stray = sorted(present - set(listed))
    missing = sorted(set(listed) - present)
    modified = []
    for rel in sorted(present & set(listed)):
        path = os.path.join(folder, rel)
        if os.path.getsize(path) != listed[rel]["size"] or atomic.sha256_file(path) != listed[rel]["sha256"]:
            modified.append(rel)
    if stray or missing or modified:
        problems = [
            f"{what}: {some(names)}"
            for what, names in (
                ("stray (not written by that run)", stray),
                ("missing", missing),
                ("modified since the run wrote it", modified),
            )
            if names
        ]
        raise OutputFolderError(
            f"{folder} does not hold the files of one run: its {RUN_MANIFEST_NAME} lists what run "
            f"{manifest.get('run_id')} wrote, and {'; '.join(problems)}. Move stray files away, or rerun the "
            "training (a new --output_dir, or --overwrite_output_dir true)."
        )


def publish(stage: str, out: str, *, run_id: str, method: str, settings: dict) -> list[str]:
    """Move the finished outputs in `stage` into `out` and write the manifest last; return its file list.

    An earlier manifest of this run (a resumed run) is removed before the first move, and its files this run
    did not write again after the last, so that the folder never pairs a manifest with files it does not list.
    """
    from .. import __version__

    previous = read_manifest(out)
    if previous is not None:
        os.remove(os.path.join(out, RUN_MANIFEST_NAME))
        atomic.fsync_dir(out)
    names = os.listdir(stage)
    order = sorted(names, key=lambda n: (0 if n in _FIRST else 2 if n in _LAST else 1, n))
    for name in order:
        atomic.move_into_place(os.path.join(stage, name), os.path.join(out, name))
    os.rmdir(stage)
    written = [f for f in folder_files(out) if f.split("/")[0] in names or f in TRAINING_OUTPUTS]
    for rel in sorted(set(previous["files"]) - written) if previous else []:
        if os.path.isfile(os.path.join(out, rel)):
            os.remove(os.path.join(out, rel))
    files = {
        rel: {"sha256": atomic.sha256_file(os.path.join(out, rel)), "size": os.path.getsize(os.path.join(out, rel))}
        for rel in sorted(written)
    }
    atomic.write_json(
        os.path.join(out, RUN_MANIFEST_NAME),
        {
            "format_version": FORMAT_VERSION,
            "run_id": run_id,
            "method": method,
            "settings_sha256": settings_digest(settings),
            "fishertune_version": __version__,
            "files": files,
        },
        sort_keys=True,
    )
    return sorted(files)
