"""Push a FisherTune run's output folder to the Hugging Face Hub (``--push_to_hub``).

The output folder of a run holds the adapter (``adapter_model.safetensors`` + ``adapter_config.json``
from ``PeftModel.save_pretrained``), the model card ``README.md``, metrics JSON, the Fisher scores
safetensors, the sensitivity-map PNG and the resolved config YAML. :func:`push_output_folder` creates
the repo (if needed) and uploads all of it in one commit, leaving out training checkpoints.

The endpoint is whatever ``huggingface_hub`` resolves (``HF_ENDPOINT``, read when
``huggingface_hub`` is first imported); the token is ``token`` or the locally stored one / ``HF_TOKEN``.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence

from .outputs import ADAPTER_CONFIG_NAME as ADAPTER_CONFIG
from .outputs import ADAPTER_WEIGHTS, CARD_NAME, MODEL_WEIGHTS
from .outputs import MODEL_CONFIG_NAME as MODEL_CONFIG

logger = logging.getLogger(__name__)

#: Never uploaded: training checkpoints (ours and transformers.Trainer's) at any depth.
#: huggingface_hub matches with fnmatch, where ``*`` also crosses ``/``.
CHECKPOINT_IGNORE_PATTERNS = ["checkpoints/*", "*/checkpoints/*", "checkpoint-*/*", "*/checkpoint-*/*"]


def _check_folder(folder: str) -> list[str]:
    """Validate ``folder`` and return its top-level file names."""
    if not os.path.isdir(folder):
        raise ValueError(f"Output folder '{folder}' does not exist or is not a directory; nothing to push.")
    names = set(os.listdir(folder))
    # Pushable: a PEFT adapter, or (e.g. after ``merge_and_unload``) a full model.
    has_adapter = ADAPTER_CONFIG in names and any(w in names for w in ADAPTER_WEIGHTS)
    has_model = MODEL_CONFIG in names and any(w in names for w in MODEL_WEIGHTS)
    if not (has_adapter or has_model):
        raise ValueError(
            f"Output folder '{folder}' holds no adapter or model to push: expected '{ADAPTER_CONFIG}' with one of "
            f"{list(ADAPTER_WEIGHTS)} (PeftModel.save_pretrained), or '{MODEL_CONFIG}' with one of "
            f"{list(MODEL_WEIGHTS)}; found {sorted(names) or 'nothing'}."
        )
    if CARD_NAME not in names:
        logger.warning("Output folder '%s' has no %s: the Hub repo will have no model card.", folder, CARD_NAME)
    return sorted(names)


def _selected_files(folder: str, allow_patterns: Sequence[str] | str | None, ignore_patterns: list[str]) -> list[str]:
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects  # upload_folder adds those

    ignore_patterns = [*ignore_patterns, *DEFAULT_IGNORE_PATTERNS]
    rel = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            rel.append(os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/"))
    return list(filter_repo_objects(rel, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))


def push_output_folder(
    folder: str,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload FisherTune adapter",
    allow_patterns: Sequence[str] | str | None = None,
    files: Sequence[str] | None = None,
) -> str:
    """Create ``repo_id`` on the Hub (if it does not exist) and upload a run's output folder to it.

    Everything in ``folder`` is uploaded (adapter weights + config, README.md model card, metrics JSON,
    Fisher scores, sensitivity-map PNG, resolved config YAML, ...) in a single commit, except training
    checkpoint subfolders (``checkpoints/``, ``checkpoint-*/``) and the ``.git`` / ``.cache`` folders
    that ``huggingface_hub`` always skips.

    Args:
        folder: the run's output folder; it must contain a PEFT adapter (``adapter_config.json`` +
            ``adapter_model.safetensors``/``.bin``) or a full model (``config.json`` + weights).
        repo_id: ``"namespace/name"`` (or ``"name"``, created under the token's user).
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the locally saved login.
        private: create the repo as private. Ignored if the repo already exists.
        commit_message: summary of the commit.
        allow_patterns: optional glob(s) restricting which files (relative to ``folder``) are uploaded.
        files: exactly these files (``/`` paths relative to ``folder``, e.g. a run manifest's), nothing else;
            not with ``allow_patterns``.

    Returns:
        The URL of the commit (or of the repo when the Hub reports no commit, e.g. nothing changed).

    Raises:
        ValueError: ``folder`` is missing, holds no adapter/model files, or no file is selected.
    """
    _check_folder(folder)
    if files is not None:
        if allow_patterns is not None:
            raise ValueError("Pass either files (exact paths) or allow_patterns (globs) to push_output_folder.")
        allow_patterns = [glob.escape(f) for f in files]  # exact paths: no character of a name acts as a glob
    if allow_patterns is not None and not isinstance(allow_patterns, str):
        allow_patterns = list(allow_patterns)
    ignore = list(CHECKPOINT_IGNORE_PATTERNS)
    selected = _selected_files(folder, allow_patterns, ignore)
    if not selected:
        raise ValueError(
            f"No file in output folder '{folder}' matches allow_patterns={allow_patterns!r} "
            f"(checkpoints excluded by {ignore}); nothing to push."
        )

    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name="fishertune", library_version=_version())
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    logger.info("Uploading %d file(s) from '%s' to %s: %s", len(selected), folder, repo_url, ", ".join(selected))
    commit = api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=folder,
        repo_type="model",
        commit_message=commit_message,
        allow_patterns=allow_patterns,
        ignore_patterns=list(ignore),  # upload_folder extends the list in place
    )
    return str(getattr(commit, "commit_url", None) or repo_url)


def _version() -> str:
    try:
        from . import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"
