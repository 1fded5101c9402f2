"""Honest resume: recipes/train.py refuses, before any work, a resume whose seed, learning rate or data differ from
the checkpoint's, naming the setting and both values; `--allow_changed_settings` lets the run go on with the new
values, which it uses (the logged learning rate) and records in config.yaml."""

from __future__ import annotations

import shutil

import pytest
import yaml
from transformers import TrainerCallback

import fishertune.experiment.run as run_module

from .test_recipe_resume import TINY, Interrupted, _config, _interrupt_after, _patch_trainer, _train


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped after checkpoint-4 (phase 3), and its config."""
    tmp = tmp_path_factory.mktemp("stopped")
    config = _config(tmp)
    with pytest.MonkeyPatch.context() as m:
        _interrupt_after(m, 4)
        with pytest.raises(Interrupted):
            _train(config, tmp / "run")
    return config, tmp / "run"


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    config, out = stopped_run
    shutil.copytree(out, tmp_path / "run")
    return config, tmp_path / "run"


@pytest.mark.parametrize("flags, message", [
    (("--seed", "7"), "seed: checkpoint 3, now 7"),
    (("--learning_rate", "0.01"), "learning_rate: checkpoint 0.001, now 0.01"),
    (("--decoder_learning_rate", "0.01"), "decoder_learning_rate: checkpoint None, now 0.01"),
    (("--train_split", "fog"), "train_split: checkpoint 'source', now 'fog'"),
    (("--head", "eomt"), "head: checkpoint 'light', now 'eomt'"),
    (("--per_device_train_batch_size", "2"), "per_device_train_batch_size: checkpoint 4, now 2"),
])  # fmt: skip
def test_changed_setting_is_refused_before_any_work(run_copy, monkeypatch, flags, message):
    config, out = run_copy
    monkeypatch.setattr(run_module, "build_train_dataset", lambda *a, **k: pytest.fail("built data before checking"))
    with pytest.raises(ValueError, match=message + r".*--allow_changed_settings"):
        _train(config, out, "--resume_from_checkpoint", "last", *flags)


def test_unknown_allowed_setting_is_refused(run_copy):
    config, out = run_copy
    with pytest.raises(ValueError, match="allow_changed_settings names learning_rat,.*learning_rate"):
        _train(config, out, "--resume_from_checkpoint", "last", "--allow_changed_settings", "learning_rat")


def test_allowed_change_is_used_and_recorded(run_copy, monkeypatch, caplog):
    config, out = run_copy
    rates = {}

    class Rates(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "learning_rate" in logs:
                rates[state.global_step] = logs["learning_rate"]

    _patch_trainer(monkeypatch, Rates())
    _train(
        config,
        out,
        "--resume_from_checkpoint",
        "last",
        "--learning_rate",
        "0.01",
        "--seed",
        "7",
        "--allow_changed_settings",
        "learning_rate,seed",
    )
    assert "learning_rate: checkpoint 0.001, now 0.01; seed: checkpoint 3, now 7" in caplog.text
    # the polynomial schedule from 0.01 (the checkpoint's 0.001 would give at most 0.001)
    assert sorted(rates) == [5, 6] and all(rate > TINY["learning_rate"] for rate in rates.values()), rates
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["learning_rate"] == 0.01 and recorded["seed"] == 7
    assert recorded["allow_changed_settings"] == ["learning_rate", "seed"]
