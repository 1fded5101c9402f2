"""recipes/train.py resumes bitwise in two processes (gloo on CPU, as `accelerate launch --num_processes 2`):
a run stopped after a phase-1 or a phase-3 checkpoint and resumed by two fresh processes with
--resume_from_checkpoint ends with the adapter of the uninterrupted two-process run, augmentations on."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from _toolkit import launch

from . import _recipe_two_proc
from ._helpers import records_dir
from .test_recipe_resume import TINY, _adapter, _assert_bitwise

GLOO_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo CPU run; a GPU machine would use NCCL")
pytestmark = GLOO_ONLY
#: The one-process resume test's config with the same global batch (2 x 2): 3 steps an epoch, so both
#: interruptions fall mid-epoch (where a loader that prefetched would have advanced a global RNG) and
#: the phase-3 one in the second epoch (where the epoch must reach the augmentations).
TINY_DDP = {**TINY, "per_device_train_batch_size": 2}


def _launch_two(config: str, out, *opts: str, extra: tuple[str, ...] = ()) -> list[dict]:
    """recipes/train.py in 2 gloo processes (see tests/training/test_multiprocess.py); each rank's record."""
    launch(_recipe_two_proc.__file__, config, out, *opts, "--", *extra, timeout=300)
    return [json.load(open(os.path.join(records_dir(out), f"rank{r}.json"))) for r in (0, 1)]


def _rank_tensors(out, rank: int) -> dict:
    return torch.load(os.path.join(records_dir(out), f"rank{rank}_adapter.pt"))


def _global_step(checkpoint) -> int:
    return json.load(open(os.path.join(checkpoint, "trainer_state.json")))["global_step"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted_ddp")
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_DDP))
    records = _launch_two(str(config), tmp / "run")
    assert [r["world_size"] for r in records] == [2, 2]
    assert [r["global_step"] for r in records] == [TINY["max_steps"]] * 2
    # the augmentations of the second epoch are keyed by epoch 1 (a dataset left at epoch 0 would resume
    # "bitwise" too, repeating the first epoch's draws)
    assert [r["epochs"] for r in records] == [[0, 0, 0, 1, 1, 1]] * 2
    a, b = _rank_tensors(tmp / "run", 0), _rank_tensors(tmp / "run", 1)
    _assert_bitwise(a, b)  # both ranks hold the same deltas and masks
    return str(config), tmp / "run"


@pytest.mark.parametrize("step", [2, 5])  # phase 1 (T1 = 3), phase 3 (selection after step 3)
def test_two_process_resume_is_bitwise(uninterrupted, tmp_path, step):
    config, full = uninterrupted
    run = tmp_path / "run"
    stopped = _launch_two(config, run, f"interrupt={step}")
    assert all(r["interrupted"] and r["global_step"] == step for r in stopped)
    assert not os.path.exists(run / "adapter_model.safetensors")
    ckpt = run / f"checkpoint-{step}"
    # staged by rank 0 with every rank's RNG state in it, then renamed: no staging folder is left
    assert {"rng_state_0.pth", "rng_state_1.pth", "fishertune_trainer_state.json"} <= set(os.listdir(ckpt))
    assert not [n for n in os.listdir(run) if n.startswith(".fishertune-tmp-") and "-checkpoint-" in n]
    # the checkpoint the interrupted run wrote is the uninterrupted run's
    _assert_bitwise(_adapter(ckpt), _adapter(full / f"checkpoint-{step}"))

    resumed = _launch_two(config, run, extra=("--resume_from_checkpoint", str(ckpt)))
    for r in resumed:  # it went on from the checkpoint (a restart from 0 would end the same)
        assert not r["interrupted"] and r["steps"] == list(range(step + 1, TINY["max_steps"] + 1))
        assert r["epochs"] == [0, 0, 0, 1, 1, 1][step:]
        assert r["global_step"] == TINY["max_steps"]
    _assert_bitwise(_adapter(run), _adapter(full))
    for rank in (0, 1):
        _assert_bitwise(_rank_tensors(run, rank), _rank_tensors(full, rank))
    last = f"checkpoint-{TINY['max_steps']}"
    assert _global_step(run / last) == _global_step(full / last) == TINY["max_steps"]
    _assert_bitwise(_adapter(run / last), _adapter(full / last))
