"""One run, one folder: what a recipe run may find in its `output_dir`, and whether the folder can take the run.

Everything here runs before the first byte is written into the folder (`run_experiment`):

- `inspect_output_dir` sorts what the folder holds into an earlier run's files (those its manifest lists, its
  `checkpoint-*` folders and what phase 2 writes while training; without a manifest, the names a recipe run
  writes, if `config.yaml` is a run's) and anything else, which is refused: no run may overwrite or mix with
  files it did not write, and `--overwrite_output_dir` does not delete them.
- `OutputDirPlan.require_fresh` refuses an earlier run's files unless this run resumes it in place or
  `--overwrite_output_dir` is given; `delete_earlier` then removes exactly those files, the manifest last.
- `check_writable` and `check_free_space` stop a run whose outputs could not be written, naming the path.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import tempfile
from typing import Optional

import yaml

from .. import atomic
from ..outputs import CONFIG_NAME, RUN_MANIFEST_NAME, RUN_OUTPUTS, TRAINING_OUTPUTS
from .manifest import folder_files, read_manifest, some
from .resume import checkpoints_in

logger = logging.getLogger(__name__)

#: Free space asked beyond the estimate of `required_bytes` (file formats, the card, scores, rounding).
SAFETY_FACTOR = 1.25


@dataclasses.dataclass
class OutputDirPlan:
    """An earlier run's files found in `folder` (relative paths and `checkpoint-*` folders), to keep or delete."""

    folder: str
    files: list[str]
    checkpoints: list[str]
    has_manifest: bool

    @property
    def earlier(self) -> list[str]:
        names = {f.split("/")[0] for f in self.files} | {os.path.basename(c) for c in self.checkpoints}
        return sorted(names | ({RUN_MANIFEST_NAME} if self.has_manifest else set()))

    def require_fresh(self, resume_from: Optional[str], overwrite: bool) -> bool:
        """Whether the earlier run's files go (a new run with `overwrite`); raise when they may not stay.

        They stay for a run resumed from one of the folder's own checkpoints (the same run going on).
        """
        if not self.earlier:
            return False
        if resume_from is not None and os.path.dirname(os.path.abspath(resume_from)) == os.path.abspath(self.folder):
            return False
        if overwrite:
            return True
        resume = " Resume it with --resume_from_checkpoint last," if self.checkpoints else ""
        raise FileExistsError(
            f"{self.folder} holds the files of an earlier run ({some(self.earlier)}); a new run there would mix "
            f"its files with them.{resume} Choose another --output_dir, or pass --overwrite_output_dir true to "
            "delete that run's files first."
        )

    def freed_bytes(self) -> int:
        total = sum(os.path.getsize(os.path.join(self.folder, f)) for f in self.files)
        for ckpt in self.checkpoints:
            total += sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(ckpt) for n in names)
        return total

    def delete_earlier(self) -> None:
        """Delete the earlier run's files and checkpoints, then its manifest, then the folders they leave empty."""
        logger.warning("overwrite_output_dir: deleting the earlier run in %s: %s", self.folder, ", ".join(self.earlier))
        for rel in self.files:
            path = os.path.join(self.folder, rel)
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
        for ckpt in self.checkpoints:
            shutil.rmtree(ckpt)
        atomic.remove_stale_temporaries(self.folder)
        if self.has_manifest:  # last: a deletion cut short is finished by the next --overwrite_output_dir
            os.remove(os.path.join(self.folder, RUN_MANIFEST_NAME))
        parents = {rel.rsplit("/", k)[0] for rel in self.files for k in range(1, rel.count("/") + 1)}
        for rel in sorted(parents, key=lambda p: -p.count("/")):  # deepest first
            path = os.path.join(self.folder, rel)
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
        atomic.fsync_dir(self.folder)


def _is_run_config(path: str) -> bool:
    """Whether `path` is the config.yaml of a recipe run (a folder of a version that wrote no manifest)."""
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and {"backbone", "output_dir", "criterion"} <= set(config)


def inspect_output_dir(folder: str) -> OutputDirPlan:
    """Sort `folder`'s files into an earlier run's and others; raise `FileExistsError` naming the others."""
    if not os.path.exists(folder):
        return OutputDirPlan(folder, [], [], False)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"--output_dir {folder} is a file, not a folder: choose a folder for the run.")
    manifest = read_manifest(folder)
    if manifest is not None:
        listed = set(manifest["files"])
        legacy = set()
    else:
        listed = set()
        legacy = set(RUN_OUTPUTS) if _is_run_config(os.path.join(folder, CONFIG_NAME)) else set()
    mine, others = [], []
    for rel in folder_files(folder):
        top = rel.split("/")[0]
        if rel == RUN_MANIFEST_NAME:
            continue
        (mine if rel in listed or rel in TRAINING_OUTPUTS or top in legacy else others).append(rel)
    if others:
        raise FileExistsError(
            f"{folder} holds files that no fishertune run wrote there ({some(others)}): a run would overwrite "
            "or mix with them, and --overwrite_output_dir deletes only an earlier run's own files. Choose a new or "
            "empty --output_dir, or move those files away."
        )
    return OutputDirPlan(folder, mine, checkpoints_in(folder), manifest is not None)


def check_writable(folder: str) -> None:
    """Create `folder` and write, fsync and delete a probe file in it; raise `PermissionError` naming the folder."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f"{atomic.TMP_PREFIX}probe-", dir=folder)
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as err:
        raise PermissionError(
            err.errno,
            f"--output_dir {folder} is not writable ({err.strerror}); nothing was "
            "trained. Choose a folder you can write to.",
            folder,
        ) from err


def required_bytes(model, checkpoints: bool) -> int:
    """Disk a run needs in its output folder: parameter count x dtype bytes (B) of the whole model, times

    2 for the saved model (at most the whole model, plus `base_model/` for an adapter on a random-init backbone),
    plus 3 with checkpoints (one checkpoint: the weights and AdamW's two moments, as if every weight trained),
    times `SAFETY_FACTOR`.
    """
    b = sum(p.numel() * p.element_size() for p in model.parameters())
    b += sum(t.numel() * t.element_size() for t in model.buffers())
    return int(SAFETY_FACTOR * b * (2 + (3 if checkpoints else 0)))


def check_free_space(folder: str, need: int, freed: int = 0) -> None:
    """Raise `OSError(ENOSPC)` naming `folder` when its filesystem has less than `need` bytes free (after `freed`)."""
    free = shutil.disk_usage(folder).free + freed
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"--output_dir {folder} has {free / 2**30:.2f} GiB free, the run needs about "
            f"{need / 2**30:.2f} GiB (the model and a checkpoint, x{SAFETY_FACTOR}); nothing "
            "was trained. Free some space or choose a folder on another disk.",
            folder,
        )
