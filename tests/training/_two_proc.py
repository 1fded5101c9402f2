"""Run by test_multiprocess.py under `accelerate launch` (2 gloo processes) and in-process as the reference."""

import json
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.training._tiny import ensure_fisher, make_trainer, model_state, tiny_model  # noqa: E402


def run(out: str, per_device_batch: int) -> None:
    real = ensure_fisher()
    model = tiny_model()
    # BatchNorm normalizes each process's own batch (no SyncBN), which would differ from one process's batch
    # by design; without it the 2 x 2 and 1 x 4 runs must agree exactly.
    model.decode_head.batch_norm = nn.Identity()
    trainer = make_trainer(
        out, model=model, per_device_train_batch_size=per_device_batch, criterion="fim" if real else "random",
        estimation_batches=2,  # per process: 2 x 4 samples on one process, 2 x 2 on each of two
    )
    trainer.train()
    rank = trainer.args.process_index
    torch.save(model_state(trainer.model), os.path.join(out, f"state_rank{rank}.pt"))
    with open(os.path.join(out, f"log_rank{rank}.json"), "w") as f:
        json.dump({"history": trainer.state.log_history, "world_size": trainer.args.world_size, "real": real}, f)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]))
    if torch.distributed.is_initialized():
        # Explicit teardown: leaving gloo to interpreter exit can abort a rank ('terminate called ...').
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
