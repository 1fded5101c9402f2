"""Two gloo processes (accelerate launch) give the masks and weights of one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from . import _two_proc

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo CPU run; on a GPU machine --multi_gpu would use NCCL")
def test_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    os.makedirs(one), os.makedirs(two)
    # `--multi_gpu` on a machine without GPUs: torchrun starts 2 processes and accelerate picks gloo on the CPU
    # (`--cpu` / a MULTI_CPU config would start one process and expect mpirun).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), _two_proc.__file__, str(two), "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
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
