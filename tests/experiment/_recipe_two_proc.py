"""Run by test_recipe_resume_ddp.py under `accelerate launch` (2 gloo processes): recipes/train.py's `main`.

    python _recipe_two_proc.py <config.yaml> <output_dir> [interrupt=<step>] [-- recipe flags...]

`interrupt=<step>`: every rank stops right after checkpoint-<step> is written, as a crash there would (the
process exits without the final adapter). Each rank writes `rank<r>.json` (its global step, whether it was
interrupted, the steps it ran and the dataset's epoch at each) and `rank<r>_adapter.pt` (its FisherTune
tensors) into `<output_dir>.records/`.
"""

import json
import os
import sys

import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.experiment._helpers import recipe_main, records_dir  # noqa: E402

import fishertune.experiment.run as run_module  # noqa: E402


class Interrupted(Exception):
    pass


def main(argv: list[str]) -> None:
    config, out, rest = argv[0], argv[1], argv[2:]
    extra = rest[rest.index("--") + 1 :] if "--" in rest else []
    opts = dict(a.split("=", 1) for a in (rest[: rest.index("--")] if "--" in rest else rest))
    interrupt = int(opts["interrupt"]) if "interrupt" in opts else None
    trainers, steps, epochs = [], [], []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)
            epochs.append(trainers[0].train_dataset.epoch)  # the epoch the keyed augmentations drew with

        def on_save(self, args, state, control, **kwargs):
            if interrupt is not None and state.global_step == interrupt:
                raise Interrupted(interrupt)

    base = run_module.FisherTuneTrainer

    class Trainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Record())
            trainers.append(self)

    run_module.FisherTuneTrainer = Trainer
    interrupted = False
    try:
        recipe_main("train")(["--config", config, "--output_dir", out, *extra])
    except Interrupted:
        interrupted = True
    trainer = trainers[0]
    rank = trainer.args.process_index
    model = trainer.accelerator.unwrap_model(trainer.model)
    tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if "fishertune" in k}
    records = records_dir(out)
    os.makedirs(records, exist_ok=True)
    torch.save(tensors, os.path.join(records, f"rank{rank}_adapter.pt"))
    with open(os.path.join(records, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "global_step": trainer.state.global_step,
                "interrupted": interrupted,
                "steps": steps,
                "epochs": epochs,
                "world_size": trainer.args.world_size,
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
    if torch.distributed.is_initialized():
        # Explicit teardown: leaving gloo to interpreter exit can abort a rank ('terminate called ...').
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
