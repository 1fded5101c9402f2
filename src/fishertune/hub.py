"""Publish a run on the Hugging Face Hub so that it loads back from the repo id alone.

An adapter needs its base. PEFT's `AutoPeftModel.from_pretrained(repo)` builds the base with
`AutoModelForSemanticSegmentation.from_pretrained(adapter_config["base_model_name_or_path"])`, with no
`subfolder` (PEFT 0.21 and 0.22), and transformers' Auto classes follow a repo root's `adapter_config.json`
to that base whatever `subfolder` is asked for. So the base cannot live in a folder of the adapter's repo:
:func:`push_output_folder` pushes the output folder's `base_model/` to a repo of its own, `<repo_id>-base`
(:func:`base_repo_id`), and the adapter repo's `adapter_config.json` names that repo. The local folder keeps
its own `adapter_config.json` (naming the local `base_model/`), so it still loads offline.

Only what the caller lists (or, without a list, the folder's files minus checkpoints) is uploaded, and never
a dotfile, a dot-folder or a key file (:data:`SECRET_PATTERNS`), whatever the caller passes.

The endpoint is whatever ``huggingface_hub`` resolves (``HF_ENDPOINT``, read when ``huggingface_hub`` is first
imported); the token is ``token`` or the locally stored one / ``HF_TOKEN``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Sequence
from typing import Optional

from .outputs import ADAPTER_CONFIG_NAME as ADAPTER_CONFIG
from .outputs import (
    ADAPTER_WEIGHTS,
    BACKBONE_REFERENCE,
    BASE_MODEL_DIR,
    CARD_NAME,
    IMAGE_PROCESSOR_NAME,
    LAST_CHECKPOINT_DIR,
    MODEL_WEIGHTS,
)
from .outputs import MODEL_CONFIG_NAME as MODEL_CONFIG

logger = logging.getLogger(__name__)

#: Never uploaded by :func:`push_output_folder`: training checkpoints (ours and transformers.Trainer's) at any
#: depth; `hub_strategy` pushes them on their own. fnmatch's ``*`` also crosses ``/``.
CHECKPOINT_IGNORE_PATTERNS = ["checkpoints/*", "*/checkpoints/*", "checkpoint-*/*", "*/checkpoint-*/*"]
#: Never uploaded, whatever the caller passes: a path with a component starting with "." (``.env``,
#: ``.netrc``, ``.ssh/``, ``.git/``, ...) and file names that hold keys or credentials.
SECRET_PATTERNS = (
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "_netrc",
    "credentials",
    "credentials.*",
    "*.kdbx",
    "training_args.bin",
)
#: The repo an adapter's base goes to: `<repo_id>` + this.
BASE_REPO_SUFFIX = "-base"


def base_repo_id(repo_id: str) -> str:
    """The Hub repo holding the base of the adapter pushed to `repo_id`."""
    return repo_id + BASE_REPO_SUFFIX


def is_secret(path: str) -> bool:
    """Whether a relative path must never be uploaded (a dot component or a key / credentials file name)."""
    parts = path.replace(os.sep, "/").split("/")
    return any(p.startswith(".") for p in parts) or any(fnmatch.fnmatch(parts[-1], pat) for pat in SECRET_PATTERNS)


def load_snippet(repo_or_path: str, is_adapter: bool) -> str:
    """The Python lines that load a pushed (or local) run; the model card shows exactly these."""
    lines = ["import fishertune  # registers the FisherTune method with PEFT and the segmenters with the Auto classes"]
    if is_adapter:
        lines += [
            "from peft import AutoPeftModel",
            "",
            f'model = AutoPeftModel.from_pretrained("{repo_or_path}")  # on the base its adapter_config.json names',
            "merged = model.merge_and_unload()  # a plain segmenter again",
        ]
    else:
        lines += [
            "from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline",
            "",
            f'model = AutoModelForSemanticSegmentation.from_pretrained("{repo_or_path}")',
            f'processor = AutoImageProcessor.from_pretrained("{repo_or_path}")',
            f'segment = pipeline("image-segmentation", model="{repo_or_path}")  # [{{"label", "mask"}}, ...] per image',
        ]
    return "\n".join(lines)


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


def select_files(folder: str, files: Optional[Sequence[str]] = None,
                 allow_patterns: Sequence[str] | str | None = None) -> list[str]:  # fmt: skip
    """The relative paths :func:`push_output_folder` uploads: `files` (or every file of `folder`), less
    checkpoints, dotfiles and keys, restricted to `allow_patterns`."""
    from huggingface_hub.utils import filter_repo_objects

    if files is None:
        rel = []
        for root, dirs, names in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel += [os.path.relpath(os.path.join(root, n), folder).replace(os.sep, "/") for n in sorted(names)]
    else:
        rel = []
        for f in files:
            path = os.path.normpath(str(f)).replace(os.sep, "/")
            if os.path.isabs(path) or path == ".." or path.startswith("../"):
                raise ValueError(f"files= names '{f}', which is not a path inside the output folder '{folder}'.")
            if not os.path.isfile(os.path.join(folder, path)):
                raise ValueError(f"files= names '{f}', which is not a file of the output folder '{folder}'.")
            rel.append(path)
    rel = list(filter_repo_objects(rel, allow_patterns=allow_patterns, ignore_patterns=CHECKPOINT_IGNORE_PATTERNS))
    secret = [p for p in rel if is_secret(p)]
    if secret:
        logger.warning("Not uploading %d dotfile(s) or key file(s) of '%s': %s", len(secret), folder, ", ".join(secret))
    return [p for p in rel if not is_secret(p)]


def _hub_base(config: dict) -> Optional[str]:
    """The adapter's base when it already is a Hub repo id (not a local path), else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    base = config.get("base_model_name_or_path")
    if not base or os.path.isabs(base) or os.path.exists(base):
        return None
    try:
        validate_repo_id(base)
    except HFValidationError:
        return None
    return base


def push_output_folder(
    folder: str,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload FisherTune adapter",
    allow_patterns: Sequence[str] | str | None = None,
    files: Optional[Sequence[str]] = None,
    revision: Optional[str] = None,
):
    """Create ``repo_id`` on the Hub (if it does not exist) and upload a run's output folder to it in one commit.

    An adapter's `base_model/` goes to the repo `<repo_id>-base` instead (created likewise), and the uploaded
    `adapter_config.json` names that repo as `base_model_name_or_path`, so that
    `AutoPeftModel.from_pretrained(repo_id)` loads from the Hub alone. An adapter whose config already names a
    Hub repo as its base needs no `base_model/`.

    Args:
        folder: the run's output folder; it must contain a PEFT adapter (``adapter_config.json`` +
            ``adapter_model.safetensors``/``.bin``) or a full model (``config.json`` + weights).
        repo_id: ``"namespace/name"`` (or ``"name"``, created under the token's user).
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the locally saved login.
        private: create the repo(s) as private. Ignored if a repo already exists.
        commit_message: summary of the commit.
        allow_patterns: optional glob(s) restricting which files (relative to ``folder``) are uploaded.
        files: the relative paths to upload (e.g. the run manifest's files); default every file of ``folder``.
            Checkpoints, dotfiles / dot-folders and key files (:func:`is_secret`) are never uploaded.
        revision: the branch to commit to (default: the repo's default branch).

    Returns:
        `huggingface_hub.CommitInfo` (a `str`: the URL of the commit, or of the last one when nothing changed).

    Raises:
        ValueError: ``folder`` is missing, holds no adapter/model files, no file is selected, or an adapter's
            base is neither in ``base_model/`` nor a Hub repo.
    """
    _check_folder(folder)
    if allow_patterns is not None and not isinstance(allow_patterns, str):
        allow_patterns = list(allow_patterns)
    selected = select_files(folder, files, allow_patterns)
    if not selected:
        raise ValueError(
            f"No file in output folder '{folder}' is selected by files={files!r}, allow_patterns={allow_patterns!r} "
            f"(never uploaded: checkpoints {CHECKPOINT_IGNORE_PATTERNS}, dotfiles and keys); nothing to push."
        )
    base_prefix = BASE_MODEL_DIR + "/"
    base_files = [p for p in selected if p.startswith(base_prefix)]
    main_files = [p for p in selected if not p.startswith(base_prefix)]
    adapter_config = None
    if ADAPTER_CONFIG in main_files:
        with open(os.path.join(folder, ADAPTER_CONFIG), encoding="utf-8") as f:
            adapter_config = json.load(f)
        if not base_files and _hub_base(adapter_config) is None:
            raise ValueError(
                f"The adapter in '{folder}' names its base as {adapter_config.get('base_model_name_or_path')!r}, "
                f"which is not a Hub repo, and no '{base_prefix}' is selected for upload: nobody could load it from "
                f"the Hub. Save the base model into '{os.path.join(folder, BASE_MODEL_DIR)}' (save_pretrained) or "
                "set base_model_name_or_path to the Hub id of the base."
            )
        _check_base_reference(folder, base_files)
    elif base_files:  # a merged or whole model is complete by itself
        main_files += base_files
        base_files = []

    main = {p: os.path.join(folder, p) for p in main_files}
    base = {p[len(base_prefix) :]: os.path.join(folder, p) for p in base_files}
    return push_files(
        repo_id,
        main,
        base,
        adapter_config,
        token=token,
        private=private,
        commit_message=commit_message,
        revision=revision,
    )


def _check_base_reference(folder: str, base_files: list[str]) -> None:
    """A base that names its backbone instead of holding its weights loads from the Hub only if that name does."""
    path = os.path.join(folder, BASE_MODEL_DIR, BACKBONE_REFERENCE)
    if f"{BASE_MODEL_DIR}/{BACKBONE_REFERENCE}" not in base_files or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        check_pushable_backbone(str(json.load(f).get("backbone", "")), where=f"'{path}' builds the adapter's base")


def check_pushable_backbone(backbone: str, where: str = "The adapter's base is built") -> None:
    """Refuse an adapter base that names a local backbone folder: nobody could load it from the Hub."""
    if os.path.isabs(backbone) or os.path.exists(backbone):
        raise ValueError(
            f"{where} on the local backbone folder '{backbone}', which nobody can load from the Hub: push that "
            "backbone to the Hub and train with its repo id as `backbone`, or merge the adapter (--merge true) to "
            "publish a whole model."
        )


def push_files(repo_id: str, files: dict, base_files: Optional[dict] = None, adapter_config: Optional[dict] = None,
               token: str | None = None, private: bool = False, commit_message: str = "Upload FisherTune adapter",
               revision: Optional[str] = None):  # fmt: skip
    """Create the repo(s) and commit `files` (`{path in repo: local path or bytes}`) to `repo_id`; with `base_files`
    (an adapter's base), commit those to `<repo_id>-base` first and upload `adapter_config` (dict) naming it."""
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name="fishertune", library_version=_version())
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    files = dict(files)
    if adapter_config is not None and base_files:
        base_repo = api.create_repo(base_repo_id(repo), private=private, exist_ok=True, repo_type="model").repo_id
        base = dict(base_files)
        base.setdefault(CARD_NAME, _base_card(repo).encode())
        logger.info("Uploading the adapter's base (%s) to %s", ", ".join(base), base_repo)
        api.create_commit(
            base_repo,
            [_add(p, src) for p, src in base.items()],
            commit_message=f"{commit_message} (base model)",
            revision=revision,
        )
        adapter_config = {**adapter_config, "base_model_name_or_path": base_repo}
    if adapter_config is not None:
        files[ADAPTER_CONFIG] = (json.dumps(adapter_config, indent=2, sort_keys=True) + "\n").encode()
    ops = [_add(p, src) for p, src in files.items()] + _stale_model_files(api, repo, files, revision)
    logger.info("Uploading %d file(s) to %s: %s", len(files), repo, ", ".join(files))
    return api.create_commit(repo, ops, commit_message=commit_message, revision=revision)


def _stale_model_files(api, repo: str, files: dict, revision: Optional[str]) -> list:
    """Deletions of the other kind of model at the repo root (an adapter pushed where a whole model was, or the
    reverse): transformers' Auto classes would follow a stale `adapter_config.json` instead of the model."""
    from huggingface_hub import CommitOperationDelete

    adapter = (ADAPTER_CONFIG, *ADAPTER_WEIGHTS)
    whole = (MODEL_CONFIG, *MODEL_WEIGHTS)
    if ADAPTER_CONFIG in files:
        other = whole
    elif MODEL_CONFIG in files:
        other = adapter
    else:
        return []
    present = {s.rfilename for s in api.model_info(repo, revision=revision).siblings or []}
    return [CommitOperationDelete(path_in_repo=p) for p in other if p in present]


#: transformers' `TrainingArguments.hub_strategy` values, all honoured by :func:`push_checkpoint`.
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
#: What a checkpoint push puts at the repo root: the model (adapter or whole) and its image processor.
MODEL_FILES = (ADAPTER_CONFIG, *ADAPTER_WEIGHTS, MODEL_CONFIG, *MODEL_WEIGHTS, IMAGE_PROCESSOR_NAME)


def push_checkpoint(checkpoint: str, repo_id: str, strategy: str, base_folder: Optional[str] = None,
                    token: str | None = None, private: bool = False, revision: Optional[str] = None,
                    commit_message: Optional[str] = None, base_repo: Optional[str] = None):  # fmt: skip
    """Push a complete checkpoint as transformers' `hub_strategy` does, in one commit (or none for `"end"`).

    `every_save`: the checkpoint's model files (:data:`MODEL_FILES`) at the repo root, so that the repo loads as
    the latest checkpoint; `checkpoint`: also the whole checkpoint (less dotfiles and keys) in `last-checkpoint/`,
    from which `resume_from_checkpoint` can start; `all_checkpoints`: in `checkpoint-<step>/` instead. An adapter's
    base comes from `base_folder` (pushed to `<repo_id>-base`, as by :func:`push_output_folder`), or is the
    repo `base_repo` an earlier push made.

    Returns:
        The `CommitInfo`, or None for `"end"`.
    """
    strategy = str(getattr(strategy, "value", strategy))
    if strategy not in HUB_STRATEGIES:
        raise ValueError(f"hub_strategy={strategy!r} is not one of {HUB_STRATEGIES}; pick one of them.")
    if strategy == "end":
        return None
    names = [n for n in sorted(os.listdir(checkpoint)) if os.path.isfile(os.path.join(checkpoint, n))]
    files = {n: os.path.join(checkpoint, n) for n in names if n in MODEL_FILES}
    if strategy != "every_save":
        into = LAST_CHECKPOINT_DIR if strategy == "checkpoint" else os.path.basename(os.path.normpath(checkpoint))
        files.update({f"{into}/{p}": os.path.join(checkpoint, p) for p in select_files(checkpoint)})
    adapter_config = base = None
    if ADAPTER_CONFIG in files:
        with open(files[ADAPTER_CONFIG], encoding="utf-8") as f:
            adapter_config = json.load(f)
        if base_folder is not None and _hub_base(adapter_config) is None:
            base = {p: os.path.join(base_folder, p) for p in select_files(base_folder)}
        elif base_repo is not None:
            adapter_config["base_model_name_or_path"] = base_repo
    step = os.path.basename(os.path.normpath(checkpoint)).rsplit("-", 1)[-1]
    return push_files(
        repo_id,
        files,
        base,
        adapter_config,
        token=token,
        private=private,
        revision=revision,
        commit_message=commit_message or f"Training in progress, step {step}",
    )


def _add(path_in_repo: str, data):
    from huggingface_hub import CommitOperationAdd

    return CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=data)


def _base_card(repo_id: str) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(library_name="transformers", pipeline_tag="image-segmentation", tags=["fishertune"])
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# Base model of [{repo_id}](../{repo_id})\n\nThe segmenter the FisherTune "
        f'adapter `{repo_id}` was trained on; `AutoPeftModel.from_pretrained("{repo_id}")` loads it from here.\n'
    )
    return str(ModelCard(text))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fishertune")
    except PackageNotFoundError:  # pragma: no cover  (run from a source tree)
        return "unknown"
