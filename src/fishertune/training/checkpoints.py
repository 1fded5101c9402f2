"""Checkpoints that are complete or absent, and finding the newest complete one.

Saving (`FisherTuneTrainer._save_checkpoint` calls `save_staged`). transformers' own `_save_checkpoint` writes into
`<output_dir>/.fishertune-tmp-<id>-checkpoint-<step>/checkpoint-<step>` (`save(staging)`: the trainer's
`_get_output_dir` names the staging folder while it runs), the FisherTune state and
scores are added (`write_state(folder)`), and the folder is renamed to
`checkpoint-<step>` (`fishertune.atomic.staged_dir`). Only then are older checkpoints rotated (`save_total_limit`),
and `HubPushCallback.on_save` pushes the checkpoint (`hub_strategy`): a crash or an error at any point leaves the
earlier checkpoints as they
were and, at worst, a temporary folder that the next `train()` removes. `best_model_checkpoint` always names the
final folder, in the trainer's state and in the `trainer_state.json` saved with the checkpoint.

Processes. Under DDP only the main process writes the model, optimizer and states, but every process saves its
RNG state (`rng_state_<rank>.pth`): the main process creates the staging folder and broadcasts its name, every
process writes into it, a barrier waits for all of them, the main process renames, and a second barrier makes
the final folder visible to all before training goes on. One process writes: `save_on_each_node` on several
machines (a main process per machine) is refused (`check_supported`).

Complete. A checkpoint is complete when it holds the FisherTune state, transformers' `trainer_state.json` and the
model or adapter weights; `newest_complete` skips (and names) the others, e.g. a half-written folder of an
earlier version of the package.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from typing import Callable, Optional

import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, rotate_checkpoints
from transformers.training_args import ParallelMode
from transformers.utils import logging

from ..atomic import remove_stale_temporaries, staged_dir
from ..outputs import ADAPTER_WEIGHTS, MODEL_WEIGHTS, STATE_NAME, TRAINER_STATE_NAME

logger = logging.get_logger(__name__)

#: TEST-ONLY hook: with `FISHERTUNE_TEST_PAUSE_IN_CHECKPOINT=<step>` the save of checkpoint-<step> stops after
#: transformers' files are staged and before the FisherTune state is written, creates `paused` in the staging
#: folder and sleeps, so that a test can SIGKILL the process inside the checkpoint write. Unset in real runs.
PAUSE_ENV = "FISHERTUNE_TEST_PAUSE_IN_CHECKPOINT"
PAUSED_MARKER = "paused"
_CKPT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoints_in(folder: str) -> list[str]:
    """`checkpoint-<step>` folders directly under `folder`, by step."""
    if not os.path.isdir(folder):
        return []
    found = [
        (int(m.group(1)), name)
        for name in os.listdir(folder)
        if (m := _CKPT.match(name)) and os.path.isdir(os.path.join(folder, name))
    ]
    return [os.path.join(folder, name) for _, name in sorted(found)]


def missing_parts(checkpoint: str) -> list[str]:
    """What a checkpoint folder lacks to be resumed from (empty: it is complete)."""
    missing = [name for name in (STATE_NAME, TRAINER_STATE_NAME) if not os.path.isfile(os.path.join(checkpoint, name))]
    if not any(os.path.isfile(os.path.join(checkpoint, name)) for name in ADAPTER_WEIGHTS + MODEL_WEIGHTS):
        missing.append("model or adapter weights")
    return missing


def newest_complete(folder: str) -> tuple[Optional[str], list[tuple[str, list[str]]]]:
    """(the newest complete checkpoint in `folder` or None, [(newer incomplete checkpoint, what it lacks), ...])."""
    skipped = []
    for checkpoint in reversed(checkpoints_in(folder)):
        missing = missing_parts(checkpoint)
        if not missing:
            return checkpoint, skipped
        skipped.append((checkpoint, missing))
    return None, skipped


def describe(skipped: list[tuple[str, list[str]]]) -> str:
    return "; ".join(f"{os.path.basename(c)} (no {', '.join(m)})" for c, m in skipped)


def last_checkpoint(folder: str) -> str:
    """The newest complete checkpoint in `folder` (logging the incomplete ones skipped); FileNotFoundError if none."""
    checkpoint, skipped = newest_complete(folder)
    if checkpoint is None:
        found = f": its checkpoints are incomplete ({describe(skipped)})" if skipped else ""
        raise FileNotFoundError(
            f"{folder} holds no complete {PREFIX_CHECKPOINT_DIR}-<step> folder to resume from{found}. Pass a "
            "checkpoint folder written by an earlier run, or start a new run in another output_dir."
        )
    if skipped:
        logger.warning(
            f"Resuming from {checkpoint}, the newest complete checkpoint; skipped the incomplete "
            f"{describe(skipped)} (a save that did not finish)."
        )
    return checkpoint


def remove_stale(folder: str) -> None:
    """Delete the checkpoint staging folders a killed writer left in `folder`, saying so (a recipe run's own
    output staging folder, also a temporary there, is not the trainer's to remove)."""
    for path in remove_stale_temporaries(folder, of=f"{PREFIX_CHECKPOINT_DIR}-*"):
        logger.warning(f"Removed {path}, left by a save that did not finish (a killed or failed writer).")


def check_supported(args) -> None:
    """Refuse what the staged save cannot do: several writing processes (`save_on_each_node` over machines)."""
    if args.should_save and args.process_index != 0:
        raise NotImplementedError(
            f"Process {args.process_index} would write checkpoints too (save_on_each_node over several machines); "
            "FisherTuneTrainer stages each checkpoint in one folder that the main process renames: use an "
            "output_dir on storage all machines share, with save_on_each_node=False."
        )


def _distributed(args) -> bool:
    return args.parallel_mode == ParallelMode.DISTRIBUTED and dist.is_available() and dist.is_initialized()


def _pause_for_tests(staging: str, step: int) -> None:
    if os.environ.get(PAUSE_ENV) == str(step):
        open(os.path.join(staging, PAUSED_MARKER), "w").close()
        time.sleep(600)


def _best_checkpoint(args, state, run_dir: str, previous: Optional[str]) -> Optional[str]:
    """transformers' choice of `best_model_checkpoint`, made against the final folders instead of the staging one."""
    saving = args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST)
    if not saving or not state.best_global_step:
        return previous
    best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}")
    return best if state.best_global_step == state.global_step or os.path.exists(best) else previous


def save_staged(args, state, run_dir: str, save: Callable[[str], None], write_state: Callable[[str], None]) -> str:
    """Run transformers' checkpoint save (`save(staging folder)`) and `write_state(folder)` in a staging folder of
    `run_dir`, rename it to `checkpoint-<step>`, then rotate; return the final folder
    (`training.hub_push.HubPushCallback.on_save` pushes it afterwards, complete). `args`, `state`: the trainer's
    arguments and `TrainerState`."""
    name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
    final = os.path.join(run_dir, name)
    distributed = _distributed(args)
    previous_best = state.best_model_checkpoint
    with staged_dir(final) if args.should_save else contextlib.nullcontext() as staging:
        if distributed:
            box = [staging]
            dist.broadcast_object_list(box, src=0)  # every rank writes its RNG state into the main process's folder
            staging = box[0]
        inner = os.path.join(staging, name)
        save(staging)
        state.best_model_checkpoint = _best_checkpoint(args, state, run_dir, previous_best)
        if args.should_save:
            state.save_to_json(os.path.join(inner, TRAINER_STATE_NAME))  # with the final best_model_checkpoint
            _pause_for_tests(staging, state.global_step)
            write_state(inner)
        if distributed:
            dist.barrier()  # every rank's files are in
        if args.should_save:
            for entry in os.listdir(inner):  # staging/checkpoint-<step>/* -> staging/*, renamed to final below
                os.replace(os.path.join(inner, entry), os.path.join(staging, entry))
            os.rmdir(inner)
    if distributed:
        dist.barrier()  # the final folder exists for every rank
    if args.should_save:
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=args.save_total_limit,
            best_model_checkpoint=state.best_model_checkpoint,
            use_mtime=True,
        )
    return final


def optimizer_settings(optimizer) -> list[dict]:
    """The learning rates and AdamW settings of each group of `optimizer` (empty for None)."""
    keys = ("initial_lr", "weight_decay", "betas", "eps")
    return [{k: g[k] for k in keys if k in g} for g in optimizer.param_groups] if optimizer is not None else []


def reapply_settings(optimizer, scheduler, settings: list[dict]) -> None:
    """After an allowed change of settings: this run's learning rates and AdamW settings (`optimizer_settings` taken
    before the checkpoint's optimizer and scheduler were loaded) over the loaded ones (which are the checkpoint's)."""
    if not settings:
        return
    for group, values in zip(optimizer.param_groups, settings):
        group.update(values)
    if isinstance(scheduler, LambdaLR) and all("initial_lr" in v for v in settings):
        scheduler.base_lrs = [v["initial_lr"] for v in settings]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler.last_epoch -= 1
            scheduler.step()  # this step's learning rates from the new base rates
