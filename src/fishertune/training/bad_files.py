"""Bad files in training: a `BadSampleError` agreed over ranks, then one checkpoint and a plain error.

A `BadSampleError` from the training data (phase 1 or 3, at the batch fetch, or phase 2, in the estimator's loader)
is agreed over ranks, so every rank stops at the same batch; all save one checkpoint of the last completed step (at
phase 2: step T1, marked `estimation_pending`, so that a resumed run estimates again) and raise naming the file.
Nothing here knows the trainer: `fetch_agreed` (in its `get_batch_samples`) and `AgreedLoader` (phase 2's loader)
return or raise the agreed error, `FisherTuneTrainer` saves the checkpoint, `wait_for_all` holds every rank until
its files are in, and `stopped` is the error the trainer raises.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch
import torch.distributed as dist
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.keyed import BadSampleError


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


def fetch_agreed(fetch: Callable[[], object], world_size: int) -> tuple[object, Optional[BadSampleError]]:
    """`(fetch(), None)`, or `(None, error)` when a rank met a bad file in its fetch (agreed over ranks by `agree`):
    every rank stops at the same step, or none does."""
    try:
        return fetch(), agree(None, world_size)
    except BadSampleError as err:
        return None, agree(err, world_size)


def wait_for_all(world_size: int) -> None:
    """Every rank's checkpoint files are in before any raises (a launcher kills the others as soon as one exits)."""
    if _distributed(world_size):
        dist.barrier()


def stopped(err: BadSampleError, step: int, output_dir: str, during: str = "") -> BadSampleError:
    """The error that ends the run: the file, when (`during`, e.g. " in phase 2 ...") and the checkpoint of the last
    completed step `step` (none before the first step)."""
    if not step:
        return BadSampleError(f"{err} The run stopped{during} before its first step; nothing to save.")
    ckpt = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
    return BadSampleError(f"{err} The run stopped{during} after step {step}, saved as {ckpt}.")
