"""A training file that goes bad mid-run in a two-process run (gloo on CPU, `accelerate launch --num_processes 2`),
read by one rank only: with bad_file_policy='error' both ranks stop at the same step, naming the file, after one
checkpoint of the last completed step (in phase 3; in phase 2, the checkpoint of step T1 with the estimation
pending); resumed from it with 'skip', the run finishes. A hang fails the test (the launch has a timeout)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

import psutil
import pytest
import torch
import yaml

from _toolkit import launch_command, launch_env

from . import _bad_file_two_proc
from ._helpers import REPO, records_dir
from .test_bad_files import _camvid, _config

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo CPU run; a GPU machine would use NCCL")
N = 8  # 2 ranks x 2 images a step: 2 steps an epoch, every image read by exactly one rank per epoch
BAD = 3
TIMEOUT_S = int(os.environ.get("FISHERTUNE_DDP_TEST_TIMEOUT_S", 240))  # a launch that hangs fails


def _launch_two(config: str, out, image: str, step: int, *extra: str) -> list[dict]:
    cmd = launch_command(_bad_file_two_proc.__file__, config, out, image, step, "--", *extra)
    env = launch_env()
    log = open(os.path.join(out.parent, f"launch_{out.name}_{step}.log"), "w+")  # not a pipe: orphans keep pipes open
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # the launcher's workers run in their own process group: kill the tree as it is now
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait()
        log.seek(0)
        pytest.fail(f"the two processes did not stop within {TIMEOUT_S} s (a rank hung): {log.read()[-3000:]}")
    log.seek(0)
    assert proc.returncode == 0, log.read()[-6000:]
    return [json.load(open(os.path.join(records_dir(out), f"rank{r}.json"))) for r in (0, 1)]


@pytest.mark.parametrize("corrupt_at,stopped_at,phase", [(3, 4, 3), (2, 2, 2)])  # T1 = 2
def test_bad_file_on_one_rank_stops_both_after_one_checkpoint_and_resumes_skipping(
    tmp_path, corrupt_at, stopped_at, phase
):
    paths = _camvid(tmp_path / "camvid", N)
    config = _config(tmp_path, tmp_path / "camvid")
    conf = yaml.safe_load(open(config))
    conf["estimation_batches"] = 2  # phase 2 reads every image once: the bad one on one rank
    with open(config, "w") as f:
        yaml.safe_dump(conf, f)
    out = tmp_path / "run"
    # phase 3: truncated at the end of step 3 (epoch 1, its last batch already fetched), read in epoch 2
    # (step 5's fetch): both ranks stop after step 4; phase 2: truncated at the end of step T1, read by phase 2
    stopped = _launch_two(config, out, paths[BAD], corrupt_at)
    ckpt = out / f"checkpoint-{stopped_at}"
    for record in stopped:
        assert record["error"] is not None and paths[BAD] in record["error"], record
        assert f"after step {stopped_at}, saved as {ckpt}" in record["error"], record
        assert record["global_step"] == stopped_at
    # one rank read the file, the other learnt it at the same batch fetch
    assert sorted(r["error"].split(" ")[0] for r in stopped) == ["Cannot", "Process"]
    assert ("phase 2" in stopped[0]["error"]) == (phase == 2)
    assert [p for p in os.listdir(out) if p.startswith("checkpoint-")] == [ckpt.name]  # one, written once
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "fishertune_trainer_state.json"} <= set(
        os.listdir(ckpt)
    )
    state = json.loads((ckpt / "fishertune_trainer_state.json").read_text())
    assert state["estimation_pending"] == (phase == 2) and state["in_tuning"] == (phase == 3)
    assert not (out / "adapter_model.safetensors").exists()

    resumed = _launch_two(config, out, paths[BAD], 0, "--resume_from_checkpoint", "last", "--bad_file_policy", "skip")
    assert [r["error"] for r in resumed] == [None, None]
    assert [r["global_step"] for r in resumed] == [6, 6]
    assert any(paths[BAD] in m for r in resumed for m in r["skipped"])
    assert (out / "adapter_model.safetensors").is_file()
