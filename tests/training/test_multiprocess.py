"""Two gloo processes (accelerate launch) give the masks and weights of one process with the same global batch."""

import json
import os

import pytest
import torch

from _toolkit import launch
from fishertune.training.state import STATE_NAME

from . import _two_proc


def _launch_two(out, *extra: str) -> None:
    launch(_two_proc.__file__, out, "2", *extra, timeout=240)


GLOO_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo CPU run; a GPU machine would use NCCL")


@GLOO_ONLY
def test_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    os.makedirs(one), os.makedirs(two)
    _launch_two(two)
    _two_proc.run(str(one), 4)

    ref = torch.load(one / "state_rank0.pt")
    ranks = [torch.load(two / f"state_rank{r}.pt") for r in (0, 1)]
    logs = [json.load(open(two / f"log_rank{r}.json")) for r in (0, 1)]
    assert logs[0]["world_size"] == 2
    masks = [k for k in ref if "fishertune_indices" in k]
    assert masks
    for k in masks:  # every rank holds the same masks, and those of the one-process run
        assert torch.equal(ranks[0][k], ranks[1][k]) and torch.equal(ranks[0][k], ref[k]), k
    for k in ref:  # DDP for the decoder, the trainer's own all-reduce for the deltas: same weights
        torch.testing.assert_close(ranks[0][k], ranks[1][k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(ranks[0][k], ref[k], rtol=1e-4, atol=1e-6, msg=k)
    # the same loss scale on 1 and 2 processes (no "x num_processes" from Trainer's loss kwargs)
    ref_losses = [h["loss"] for h in json.load(open(one / "log_rank0.json"))["history"] if "loss" in h]
    two_losses = [h["loss"] for h in logs[0]["history"] if "loss" in h]
    assert two_losses == pytest.approx(ref_losses, rel=1e-4)


@GLOO_ONLY
def test_two_processes_resume_a_phase3_checkpoint(tmp_path):
    """A checkpoint written in phase 3 by 2 processes, resumed by 2 fresh processes, ends where the run would have."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    os.makedirs(full), os.makedirs(resumed)
    _launch_two(full, "save_at=5")  # T1 = 3, so step 5 is in phase 3 with masks allocated
    ckpt = full / "checkpoint-5"
    saved = json.load(open(ckpt / STATE_NAME))
    assert saved["phase"] == 3 and saved["selected"] and saved["num_allocated"] > 0
    _launch_two(resumed, f"resume={ckpt}")
    ref = torch.load(full / "state_rank0.pt")
    for rank in (0, 1):
        state = torch.load(resumed / f"state_rank{rank}.pt")
        assert set(state) == set(ref)
        for k in ref:
            if "fishertune_indices" in k or "fishertune_ranks" in k:
                assert torch.equal(state[k], ref[k]), k
            torch.testing.assert_close(state[k], ref[k], rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {k}")
    ref_losses = {h["step"]: h["loss"] for h in json.load(open(full / "log_rank0.json"))["history"] if "loss" in h}
    resumed_log = json.load(open(resumed / "log_rank0.json"))
    assert resumed_log["steps_run"] == 3  # steps 6-8: it resumed rather than retrained (which would end the same)
    resumed_losses = {h["step"]: h["loss"] for h in resumed_log["history"] if "loss" in h}
    assert sorted(resumed_losses) == sorted(ref_losses)
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(ref_losses[step], rel=1e-5)
