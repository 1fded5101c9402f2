"""What `--resume_from_checkpoint` and an output folder holding checkpoints mean for a recipe run.

Resolved before any data or model is built, so that a wrong path or a changed setting costs nothing, and
written back into the training arguments so that config.yaml records the checkpoint actually used. `last` takes
the newest complete checkpoint (`fishertune.training.checkpoints.missing_parts`), naming the incomplete ones it
skips.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Optional

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..outputs import TRAINER_STATE_NAME as TRAINER_STATE
from ..training.checkpoints import checkpoints_in, describe, last_checkpoint, missing_parts, newest_complete
from ..training.state import check_compatible, read_state

logger = logging.getLogger(__name__)

#: `--resume_from_checkpoint` values that mean "the newest checkpoint in output_dir" (transformers takes `True`).
LAST = ("true", "last", "latest")
#: Values that mean "do not resume" (what a YAML `false` or an empty flag becomes).
NONE = ("", "false", "none", "no")


def _inside(path: str, folder: str) -> bool:
    return os.path.dirname(os.path.abspath(path)) == os.path.abspath(folder)


def resolve_resume(resume, output_dir: str, overwrite: bool = False, is_main: bool = True) -> Optional[str]:
    """The checkpoint folder to resume from, or None for a fresh run; raises before any work if that is unsafe.

    Args:
        resume: `--resume_from_checkpoint`: a checkpoint folder, `True`/`"last"` for the newest
            `checkpoint-<step>` in `output_dir`, or None/`False` for a fresh run.
        output_dir (`str`): where this run writes its checkpoints.
        overwrite (`bool`): a fresh run in a folder holding another run's checkpoints deletes them
            (otherwise that is an error saying how to resume or start over).
        is_main (`bool`): only the main process deletes (every process resolves the same path).
    """
    value = str(resume).strip() if resume is not None and resume is not False else ""
    existing = checkpoints_in(output_dir)
    if value.lower() in NONE:
        if existing and not overwrite:
            names = ", ".join(os.path.basename(c) for c in existing)
            raise FileExistsError(
                f"{output_dir} already holds checkpoints of an earlier run ({names}); a new run would overwrite "
                f"them. {_how_to_go_on(output_dir)}"
            )
        _delete(existing if is_main else [], "an earlier run")  # said explicitly: the old run's steps go
        return None
    if value.lower() in LAST:
        if not existing:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {value}: {output_dir} holds no {PREFIX_CHECKPOINT_DIR}-<step> folder to "
                "resume from. Pass the checkpoint folder itself, the --output_dir of the run that saved it, or drop "
                "the flag to start a new run."
            )
        try:
            ckpt = last_checkpoint(output_dir)  # logs the incomplete ones it skips
        except FileNotFoundError as err:
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: {err}") from None
    else:
        ckpt = value
        if not os.path.isdir(ckpt):
            raise FileNotFoundError(
                f"--resume_from_checkpoint {ckpt}: no such folder. Pass a {PREFIX_CHECKPOINT_DIR}-<step> folder "
                "written by an earlier run, or 'last' for the newest one in --output_dir."
            )
        if not os.path.isfile(os.path.join(ckpt, TRAINER_STATE)):
            inner = checkpoints_in(ckpt)
            hint = (
                f" (it holds {os.path.basename(inner[-1])}: pass that folder, or 'last' with --output_dir {ckpt})"
                if inner
                else ""
            )
            raise FileNotFoundError(
                f"--resume_from_checkpoint {ckpt}: not a checkpoint, it has no {TRAINER_STATE}{hint}."
            )
    # Resuming from elsewhere into a folder of another run would mix two runs' checkpoints.
    foreign = [c for c in existing if not _inside(ckpt, output_dir)]
    if foreign and not overwrite:
        raise FileExistsError(
            f"{output_dir} holds checkpoints of another run ({', '.join(os.path.basename(c) for c in foreign)}) "
            f"than {ckpt}. {_how_to_go_on(output_dir)}"
        )
    missing = missing_parts(ckpt)
    if missing:
        newest, _ = newest_complete(os.path.dirname(os.path.abspath(ckpt)))
        hint = f" Resume from {newest} (the newest complete one) instead." if newest else ""
        raise FileNotFoundError(
            f"--resume_from_checkpoint {ckpt}: incomplete checkpoint (no {', '.join(missing)}: "
            f"a save that did not finish).{hint}"
        )
    _delete(foreign if is_main else [], "another run")
    return os.path.abspath(ckpt)


def _how_to_go_on(output_dir: str) -> str:
    """What to do about the checkpoints in `output_dir`; deleting them is suggested only when none can be resumed."""
    complete, skipped = newest_complete(output_dir)
    if complete is not None:
        return (
            f"Resume that run with --resume_from_checkpoint last (it continues from {os.path.basename(complete)}, "
            "the newest complete checkpoint), or choose another --output_dir."
        )
    return (
        f"None of them can be resumed ({describe(skipped)}): choose another --output_dir, or pass "
        "--overwrite_output_dir true to delete them and start over."
    )


def _delete(checkpoints: list[str], whose: str) -> None:
    for ckpt in checkpoints:
        logger.warning("overwrite_output_dir: deleting %s of %s.", ckpt, whose)
        shutil.rmtree(ckpt)


def check_resume_settings(checkpoint: Optional[str], targs, run_settings: dict) -> None:
    """Refuse, before any work, a resume whose settings differ from its checkpoint's where `allow_changed_settings`
    does not name them (the trainer checks again, with the model's fingerprint, and logs the allowed changes)."""
    if checkpoint is None:
        return
    expected = {"options": targs.fishertune_options(), "settings": {**targs.resume_settings(), **run_settings}}
    check_compatible(read_state(checkpoint), expected, checkpoint, targs.allow_changed_settings)
