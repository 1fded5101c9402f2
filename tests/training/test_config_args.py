"""FisherTune's budget and LoRA's options are training arguments generated from `FisherTuneConfig` and
`peft.LoraConfig` (one declaration, default and check each); flat YAML keys and flags reach the configs."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from peft import LoraConfig

from fishertune.experiment.config_io import parse_args
from fishertune.training import LORA_FIELDS, TUNER_FIELDS, FisherTuneTrainingArguments
from fishertune.tuner import FisherTuneConfig

BASE = ["--use_cpu", "True", "--max_steps", "10"]
#: argument -> a valid value other than the config's default
VALUES = {
    "delta_min": 0.02,
    "delta_max": 0.1,
    "budget_base": "backbone",
    "lora_r": 4,
    "lora_alpha": 16,
    "lora_dropout": 0.1,
}


def test_the_generated_arguments_are_the_configs_fields():
    assert TUNER_FIELDS == ("delta_min", "delta_max", "budget_base", "delta_max_count", "delta_min_count")
    assert LORA_FIELDS == ("lora_r", "lora_alpha", "lora_dropout")
    args = {f.name: f for f in dataclasses.fields(FisherTuneTrainingArguments)}
    tuner = {f.name: f for f in dataclasses.fields(FisherTuneConfig)}
    for name in TUNER_FIELDS:  # the config's help (argparse's % doubled), default None = the config's default
        assert args[name].metadata["help"].startswith(tuner[name].metadata["help"].replace("%", "%%"))
        assert args[name].default is None
    lora = {f.name: f for f in dataclasses.fields(LoraConfig)}
    for name, config_name in zip(LORA_FIELDS, ("r", "lora_alpha", "lora_dropout")):
        assert args[name].default == lora[config_name].default  # PEFT's defaults, recorded as values


@pytest.mark.parametrize("name", sorted(VALUES))
def test_a_flag_and_a_yaml_key_reach_the_config(tmp_path, name):
    value = VALUES[name]
    (cli, _) = parse_args(
        (FisherTuneTrainingArguments,), BASE + ["--output_dir", str(tmp_path), f"--{name}", str(value)]
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({name: value}))
    (from_yaml, _) = parse_args(
        (FisherTuneTrainingArguments,), BASE + ["--output_dir", str(tmp_path), "--config", str(recipe)]
    )
    for targs in (cli, from_yaml):
        if name in TUNER_FIELDS:
            assert getattr(targs.tuner_config(), name) == value
        else:
            assert getattr(targs.lora_config(), "r" if name == "lora_r" else name) == value


def test_the_configs_validate_the_arguments_once(tmp_path, monkeypatch):
    """The arguments' check is the config's own: a bound changed in the config changes what the arguments accept."""
    args = dict(output_dir=str(tmp_path), use_cpu=True)
    with pytest.raises(ValueError, match=r"delta_max must be in \(0, 1\]"):
        FisherTuneTrainingArguments(delta_max=1.5, **args)
    with pytest.raises(ValueError, match="dsu_p is a probability"):
        FisherTuneTrainingArguments(dsu_p=2.0, **args)
    calls = []
    real = FisherTuneConfig.__post_init__
    monkeypatch.setattr(FisherTuneConfig, "__post_init__", lambda self: (calls.append(self.delta_max), real(self)))
    FisherTuneTrainingArguments(delta_max=0.2, **args)
    assert calls == [0.2]


def test_the_card_reads_the_budget_defaults_from_the_config(tmp_path, monkeypatch):
    from fishertune.experiment.card import _budget_lines
    from fishertune.tuner import config as tuner_config

    targs = FisherTuneTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert _budget_lines(targs) == {"delta_min": 0.01, "delta_max": 0.05}
    monkeypatch.setattr(tuner_config, "_DEFAULT_SHARES", (0.02, 0.07))
    assert _budget_lines(targs) == {"delta_min": 0.02, "delta_max": 0.07}
