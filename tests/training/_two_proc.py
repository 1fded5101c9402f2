"""Run by test_multiprocess.py under `accelerate launch` (2 gloo processes) and in-process as the reference."""

import json
import os
import sys

import torch
from torch import nn
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.training._tiny import ensure_fisher, make_trainer, model_state, tiny_model  # noqa: E402


class SaveAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True


class CountSteps(TrainerCallback):
    steps_run = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_run += 1


def run(out: str, per_device_batch: int, save_at: int | None = None, resume: str | None = None) -> None:
    """Train the tiny model; `save_at` writes checkpoint-<step> on the way, `resume` starts from a checkpoint."""
    real = ensure_fisher()
    model = tiny_model()
    # BatchNorm normalizes each process's own batch (no SyncBN), which would differ from one process's batch
    # by design; without it the 2 x 2 and 1 x 4 runs must agree exactly.
    model.decode_head.batch_norm = nn.Identity()
    trainer = make_trainer(
        out,
        model=model,
        per_device_train_batch_size=per_device_batch,
        criterion="fim" if real else "random",
        estimation_batches=2,  # per process: 2 x 4 samples on one process, 2 x 2 on each of two
        callbacks=[counter := CountSteps(), *([SaveAt(save_at)] if save_at else [])],
    )
    trainer.train(resume_from_checkpoint=resume)
    rank = trainer.args.process_index
    torch.save(model_state(trainer.model), os.path.join(out, f"state_rank{rank}.pt"))
    with open(os.path.join(out, f"log_rank{rank}.json"), "w") as f:
        json.dump(
            {
                "history": trainer.state.log_history,
                "world_size": trainer.args.world_size,
                "real": real,
                "steps_run": counter.steps_run,
            },
            f,
        )


if __name__ == "__main__":
    extra = dict(a.split("=", 1) for a in sys.argv[3:])  # save_at=<step>, resume=<checkpoint dir>
    run(sys.argv[1], int(sys.argv[2]), int(extra["save_at"]) if "save_at" in extra else None, extra.get("resume"))
    if torch.distributed.is_initialized():
        # Explicit teardown: leaving gloo to interpreter exit can abort a rank ('terminate called ...').
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
