"""A checkpoint is complete or absent: recipes/train.py killed with SIGKILL (inside a checkpoint write included)
or failing between transformers' save and the FisherTune state resumes with `--resume_from_checkpoint last` and
ends with the uninterrupted run's adapter; an incomplete newest checkpoint is skipped, never a reason to delete."""

from __future__ import annotations

import glob
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

import fishertune.training.trainer as trainer_module
from fishertune.atomic import TMP_PREFIX
from fishertune.training.checkpoints import PAUSE_ENV, PAUSED_MARKER

from ._helpers import REPO
from .test_recipe_resume import (  # noqa: F401, F811  (uninterrupted: the module fixture of the same tiny run)
    TINY,
    Interrupted,
    _adapter,
    _assert_bitwise,
    _count_steps,
    _interrupt_after,
    _train,
    uninterrupted,
)

STATE = "fishertune_trainer_state.json"


def _temporaries(out) -> list[str]:
    return glob.glob(os.path.join(out, TMP_PREFIX + "*-checkpoint-*"))  # a checkpoint's staging folder


def _run_until(config: str, out, ready, pause_at: int | None = None) -> None:
    """recipes/train.py in a subprocess, SIGKILLed as soon as `ready()` holds."""
    env = dict(os.environ)  # the same threads as this process: the sums, and so the adapter, bitwise
    if pause_at is not None:
        env[PAUSE_ENV] = str(pause_at)  # the test-only hook: stop inside the write of checkpoint-<pause_at>
    cmd = [sys.executable, os.path.join(REPO, "recipes", "train.py"), "--config", config, "--output_dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while not ready():
            if proc.poll() is not None:
                pytest.fail(
                    f"the run ended (rc {proc.returncode}) before the kill point: "
                    + proc.stderr.read().decode()[-3000:]
                )
            assert time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def _resume_and_compare(config, out, monkeypatch, caplog, first_step: int, expected) -> None:
    steps = _count_steps(monkeypatch)
    with caplog.at_level(logging.WARNING):
        _train(config, out, "--resume_from_checkpoint", "last")
    assert steps == list(range(first_step, TINY["max_steps"] + 1))
    _assert_bitwise(_adapter(out), expected)
    assert not _temporaries(out)


@pytest.mark.parametrize("step", [2, 4])  # phase 1; phase 3 (scores and selection in the checkpoint)
def test_sigkill_inside_a_checkpoint_write(uninterrupted, tmp_path, monkeypatch, caplog, step):
    config, expected = uninterrupted
    out = tmp_path / "run"
    _run_until(config, out, lambda: glob.glob(os.path.join(out, TMP_PREFIX + "*", PAUSED_MARKER)), pause_at=step)
    # transformers' files of checkpoint-<step> were written, but only under a temporary name
    assert not (out / f"checkpoint-{step}").exists() and len(_temporaries(out)) == 1
    assert (out / f"checkpoint-{step - 1}" / STATE).is_file()
    _resume_and_compare(config, out, monkeypatch, caplog, step, expected)
    assert "left by a save that did not finish" in caplog.text


def test_sigkill_between_checkpoints(uninterrupted, tmp_path, monkeypatch, caplog):
    config, expected = uninterrupted
    out = tmp_path / "run"
    _run_until(config, out, lambda: (out / "checkpoint-3").is_dir())  # killed in step 4 or the save after it
    assert all((c / STATE).is_file() for c in out.glob("checkpoint-*"))  # a checkpoint-<step> name is complete
    newest = max(int(c.name.split("-")[1]) for c in out.glob("checkpoint-*"))
    _resume_and_compare(config, out, monkeypatch, caplog, newest + 1, expected)


def test_failure_before_the_fishertune_state_keeps_the_older_checkpoint(uninterrupted, tmp_path, monkeypatch):
    """save_total_limit 1 and a full disk at the scores copy of checkpoint-4: checkpoint-3 must survive."""
    config, expected = uninterrupted
    out = tmp_path / "run"
    real = trainer_module.write_state

    def full_disk(ckpt, payload, scores_file):
        if payload["global_step"] == 4:
            raise OSError(28, "No space left on device")
        real(ckpt, payload, scores_file)

    with monkeypatch.context() as m:
        m.setattr(trainer_module, "write_state", full_disk)
        with pytest.raises(OSError, match="No space left"):
            _train(config, out, "--save_total_limit", "1")
    assert sorted(os.listdir(out / "checkpoint-3")) and (out / "checkpoint-3" / STATE).is_file()
    assert not (out / "checkpoint-4").exists() and not _temporaries(out)
    steps = _count_steps(monkeypatch)
    _train(config, out, "--save_total_limit", "1", "--resume_from_checkpoint", "last")
    assert steps == [4, 5, 6]
    _assert_bitwise(_adapter(out), expected)


def test_incomplete_newest_checkpoint_is_skipped(uninterrupted, tmp_path, monkeypatch, caplog):
    config, expected = uninterrupted
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, 5)
        with pytest.raises(Interrupted):
            _train(config, out)
    os.remove(out / "checkpoint-5" / STATE)  # as a save of an earlier version killed before its state
    # a new run is refused, and the message points to the resumable checkpoint, not to deleting it
    with pytest.raises(FileExistsError) as refused:
        _train(config, out)
    assert "--resume_from_checkpoint last" in str(refused.value) and "checkpoint-4" in str(refused.value)
    assert "overwrite_output_dir" not in str(refused.value)
    _resume_and_compare(config, out, monkeypatch, caplog, 5, expected)
    assert f"skipped the incomplete checkpoint-5 (no {STATE})" in caplog.text
