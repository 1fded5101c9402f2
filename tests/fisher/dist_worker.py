"""Run by test_distributed.py under `accelerate launch`: each rank takes its half of every global batch."""

import sys

import torch
from accelerate import PartialState
from fisher_helpers import image_batches, tiny_dinov2

from fishertune.fisher import EstimationConfig, estimate_scores, save_scores

CONFIGS = {
    "diag": EstimationConfig(criterion="dr_fim", estimator="diagonal", dsu_p=0.7),
    "var": EstimationConfig(criterion="dr_fim", estimator="variational"),
    "reparam": EstimationConfig(
        criterion="dr_fim", estimator="variational", variational_gradient="reparam", gamma=1e-8, tau=1e-2, num_batches=3
    ),
}


def run(rank: int = 0, world: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    model = tiny_dinov2()
    weights = {n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj", "fc1"))}
    data = image_batches(4, b=8)
    step = 8 // world
    shard = [{k: v[rank * step : (rank + 1) * step] for k, v in b.items()} for b in data]
    return {k: estimate_scores(model, shard, weights, cfg) for k, cfg in CONFIGS.items()}


if __name__ == "__main__":
    state = PartialState()  # initializes the gloo process group on CPU
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    out = run(rank, world)
    if rank == 0:
        for k, scores in out.items():
            save_scores(scores, f"{sys.argv[1]}/{k}.safetensors")
    state.wait_for_everyone()
    # Tear gloo down explicitly: leaving it to interpreter exit can abort a rank (SIGABRT, 'terminate called').
    torch.distributed.destroy_process_group()
