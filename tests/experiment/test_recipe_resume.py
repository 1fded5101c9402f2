"""recipes/train.py --resume_from_checkpoint: it resumes (bitwise, augmentations on, in one process and in a
fresh one), 'last' finds the newest checkpoint, a missing path and another run's checkpoints are refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

import fishertune.experiment.run as run_module

from ._helpers import REPO, recipe_main

#: All three phases on a micro ViT: T1 = 3 warm-up steps, 2 estimation batches, 3 tuning steps; a
#: checkpoint every step. Augmentations on (random scale, crop, flip, photometric) on 40x48 images.
TINY = dict(
    backbone="config:vit-micro-test", head="light", dataset="synthetic", train_split="source",
    targets=["synthetic:fog"], num_synthetic_samples=12, num_synthetic_eval_samples=2, synthetic_size=[40, 48],
    crop_size=[32, 32], scale_range=[32, 56], photometric=True, eval_mode="whole",
    criterion="dr_fim", estimator="diagonal", max_steps=6, warmup_phase_steps=3, estimation_batches=2,
    per_device_train_batch_size=4, learning_rate=0.001, seed=3, save_strategy="steps", save_steps=1,
    logging_steps=1, report_to="none", disable_tqdm=True, dataloader_num_workers=0, use_cpu=True,
    save_sensitivity_plot=False,
)  # fmt: skip


class Interrupted(Exception):
    pass


def _config(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


def _train(config: str, out, *extra: str) -> None:
    recipe_main("train")(["--config", config, "--output_dir", str(out), *extra])


def _patch_trainer(monkeypatch, callback: TrainerCallback) -> None:
    base = run_module.FisherTuneTrainer

    class Trainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(callback)

    monkeypatch.setattr(run_module, "FisherTuneTrainer", Trainer)


def _interrupt_after(monkeypatch, step: int) -> None:
    """The recipe's trainer raises right after checkpoint-`step` is written, as a crash there would."""

    class StopAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Interrupted(step)

    _patch_trainer(monkeypatch, StopAfterSave())


def _count_steps(monkeypatch) -> list[int]:
    """The global steps the recipe's trainer takes (a restart from 0 would reproduce the run too)."""
    steps = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    _patch_trainer(monkeypatch, Count())
    return steps


def _adapter(out) -> dict:
    return load_file(os.path.join(out, "adapter_model.safetensors"))


def _assert_bitwise(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    different = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].equal(b[k]))]
    assert not different, f"{len(different)} of {len(a)} adapter tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    config = _config(tmp)
    _train(config, tmp / "run")
    return config, _adapter(tmp / "run")


@pytest.mark.parametrize("step", [2, 3, 5])  # phase 1, right after phase 2 (T1 = 3), phase 3
def test_resume_in_one_process_is_bitwise(uninterrupted, tmp_path, monkeypatch, step):
    config, expected = uninterrupted
    with monkeypatch.context() as m:
        _interrupt_after(m, step)
        with pytest.raises(Interrupted):
            _train(config, tmp_path / "run")
    assert os.path.isdir(tmp_path / "run" / f"checkpoint-{step}")
    steps = _count_steps(monkeypatch)
    _train(config, tmp_path / "run", "--resume_from_checkpoint", "last")
    assert steps == list(range(step + 1, TINY["max_steps"] + 1))
    _assert_bitwise(_adapter(tmp_path / "run"), expected)
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["resume_from_checkpoint"] == str((tmp_path / "run" / f"checkpoint-{step}").resolve())


def test_resume_in_a_fresh_process_is_bitwise(uninterrupted, tmp_path, monkeypatch):
    config, expected = uninterrupted
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)  # phase 3, one step after the selection
        with pytest.raises(Interrupted):
            _train(config, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint-4"
    cmd = [
        sys.executable,
        os.path.join(REPO, "recipes", "train.py"),
        "--config",
        config,
        "--output_dir",
        str(tmp_path / "run"),
        "--resume_from_checkpoint",
        str(ckpt),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the logs of steps 5 and 6 only: the run went on from step 4, not from 0
    assert "'epoch': '2'" in proc.stdout and "'epoch': '1.333'" not in proc.stdout
    _assert_bitwise(_adapter(tmp_path / "run"), expected)


def test_missing_checkpoint_is_refused_before_any_work(uninterrupted, tmp_path, monkeypatch):
    config, _ = uninterrupted
    monkeypatch.setattr(run_module, "build_train_dataset", lambda *a, **k: pytest.fail("built data before checking"))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        _train(config, tmp_path / "run", "--resume_from_checkpoint", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        _train(config, tmp_path / "run", "--resume_from_checkpoint", "True")
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        _train(config, tmp_path / "run", "--resume_from_checkpoint", str(tmp_path / "run"))


def test_another_runs_checkpoints_are_not_overwritten(uninterrupted, tmp_path, monkeypatch):
    config, _ = uninterrupted
    old = tmp_path / "run" / "checkpoint-7"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text("{}")
    monkeypatch.setattr(run_module, "build_train_dataset", lambda *a, **k: pytest.fail("built data before checking"))
    # an incomplete checkpoint only: nothing to resume, so starting over (deleting it) is the suggestion
    with pytest.raises(
        FileExistsError, match=r"checkpoint-7 \(no fishertune_trainer_state.json.*--overwrite_output_dir"
    ):
        _train(config, tmp_path / "run")
    other = tmp_path / "other" / "checkpoint-2"
    other.mkdir(parents=True)
    (other / "trainer_state.json").write_text("{}")
    with pytest.raises(FileExistsError, match="another run"):
        _train(config, tmp_path / "run", "--resume_from_checkpoint", str(other))
    assert old.is_dir()


def test_overwrite_output_dir_starts_over(uninterrupted, tmp_path):
    config, expected = uninterrupted
    stale = tmp_path / "run" / "checkpoint-99"
    stale.mkdir(parents=True)
    _train(config, tmp_path / "run", "--overwrite_output_dir", "true")
    assert not stale.exists() and (tmp_path / "run" / "checkpoint-6").is_dir()
    _assert_bitwise(_adapter(tmp_path / "run"), expected)  # and two uninterrupted runs agree bitwise
