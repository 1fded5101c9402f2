"""Bad files in training: a `BadSampleError` agreed over ranks, then one checkpoint and a plain error.

A `BadSampleError` from the training data (phase 1 or 3, at the batch fetch, or phase 2, in the estimator's loader)
is agreed over ranks, so every rank stops at the same batch; all save one checkpoint of the last completed step (at
phase 2: step T1, marked `estimation_pending`, so that a resumed run estimates again) and raise naming the file.
`FisherTuneTrainer` delegates here: `fetch_batches` (its `get_batch_samples`), `AgreedLoader` (phase 2's loader) and
`stop_in_estimation` (a bad file in phase 2).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.keyed import BadSampleError

if TYPE_CHECKING:
    from .trainer import FisherTuneTrainer


class AgreedLoader:
    """Phase 2's loader: each batch fetch is agreed over ranks (`agree`), so a bad file on one rank stops every
    rank at the same batch instead of leaving the others in the estimator's all_reduce."""

    def __init__(self, loader, agree):
        self.loader, self.agree = loader, agree

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            batch, done, err = None, False, None
            try:
                batch = next(iterator)
            except StopIteration:
                done = True
            except BadSampleError as e:
                err = e
            err = self.agree(err)
            if err is not None:
                raise err
            if done:
                return
            yield batch


def _distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def agree(err, world_size: int):
    """All ranks learn whether any rank met a bad file (one all_reduce of a flag at each batch fetch, and a
    gather of the messages when one did): each returns an error naming the file (its own, else the lowest
    such rank's), or None. A rank stopping alone would leave the others waiting in the next collective."""
    if not _distributed(world_size):
        return err
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([0 if err is None else 1], device=device)
    dist.all_reduce(flag)
    if not int(flag.item()):
        return None
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if err is None else str(err))
    if err is not None:
        return err
    rank, first = next((r, m) for r, m in enumerate(messages) if m is not None)
    return BadSampleError(f"Process {rank} stopped the run: {first}")


def stop(trainer: "FisherTuneTrainer", err, during: str):
    """Save a checkpoint of the last completed step (even with save_strategy='no': the run ends here, and its
    steps are work a rerun would repeat), wait for every rank's files, then raise naming the file."""
    step = trainer.state.global_step
    if not step:
        raise BadSampleError(f"{err} The run stopped{during} before its first step; nothing to save.") from err
    trainer._save_checkpoint(trainer.model_wrapped, trial=None)
    if _distributed(trainer.args.world_size):
        dist.barrier()  # a launcher kills the other processes as soon as one exits with the error
    ckpt = os.path.join(trainer.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
    raise BadSampleError(f"{err} The run stopped{during} after step {step}, saved as {ckpt}.") from err


def fetch_batches(trainer: "FisherTuneTrainer", fetch, *args):
    """`Trainer.get_batch_samples` (`fetch(*args)`) with a bad file agreed over ranks: every rank stops at the same
    step, or none does."""
    err = None
    try:
        batches = fetch(*args)
    except BadSampleError as e:
        err = e
    err = agree(err, trainer.args.world_size)
    if err is None:
        return batches
    # The batches are fetched before the step: the model is at the end of the last step, a consistent point.
    stop(trainer, err, "")


def stop_in_estimation(trainer: "FisherTuneTrainer", err) -> None:
    """A bad file in phase 2 (raised on every rank at the same batch by `AgreedLoader`): the checkpoint of step T1
    says phase 2 must run on resume."""
    trainer.model.zero_grad(set_to_none=True)
    trainer._estimation_pending = True
    try:
        stop(trainer, err, " in phase 2 (estimation; it runs again when resumed)")
    finally:
        trainer._estimation_pending = False
