"""Run by test_bad_files_ddp.py under `accelerate launch` (2 gloo processes): recipes/train.py's `main`, with
one training image truncated by rank 0 at the end of a given step (both ranks wait for it: a barrier).

    python _bad_file_two_proc.py <config.yaml> <output_dir> <image> <step> [-- recipe flags...]

Step 0 truncates nothing. Each rank writes `rank<r>.json` into `<output_dir>.records/`: the BadSampleError it stopped
with (or null), its global step, and the warnings that say 'Skipped'.
"""

import json
import os
import sys
import warnings

import torch
import torch.distributed as dist
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.experiment._helpers import recipe_main, records_dir  # noqa: E402

import fishertune.experiment.run as run_module  # noqa: E402
from fishertune.data import BadSampleError  # noqa: E402


def main(argv: list[str]) -> None:
    config, out, image, step, rest = argv[0], argv[1], argv[2], int(argv[3]), argv[4:]
    extra = rest[rest.index("--") + 1 :] if "--" in rest else []
    trainers = []

    class Corrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                if args.process_index == 0:
                    with open(image, "rb") as f:
                        data = f.read()
                    with open(image, "wb") as f:
                        f.write(data[: len(data) // 2])  # the header survives, the pixels do not
                dist.barrier()  # the other rank reads it truncated from now on

    base = run_module.FisherTuneTrainer

    class Trainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.callback_handler.callbacks.insert(0, Corrupt())  # before phase 2 starts at the end of step T1
            trainers.append(self)

    run_module.FisherTuneTrainer = Trainer
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            recipe_main("train")(["--config", config, "--output_dir", out, *extra])
        except BadSampleError as err:
            error = str(err)
    trainer = trainers[0]
    os.makedirs(records_dir(out), exist_ok=True)
    with open(os.path.join(records_dir(out), f"rank{trainer.args.process_index}.json"), "w") as f:
        json.dump(
            {
                "error": error,
                "global_step": trainer.state.global_step,
                "skipped": [str(w.message) for w in caught if "Skipped" in str(w.message)],
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
