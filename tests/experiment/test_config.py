"""Config parsing: YAML sets defaults, flags override, unknown keys fail; every shipped YAML parses."""

from __future__ import annotations

import dataclasses
import glob
import os

import pytest

from fishertune.experiment import ExperimentArguments, parse_experiment_args
from fishertune.fisher import criterion_names
from fishertune.training import BASELINE_METHODS, FisherTuneTrainingArguments

from ._helpers import CONFIGS_DIR

ALL_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS_DIR, "*.yaml")))
#: name -> (method for the baselines / criterion for FisherTune's sparse runs, estimator)
ABLATIONS = {
    "full": ("full", None), "frozen": ("frozen", None), "lora": ("lora", None), "random": ("random", None),
    "random_q": ("random_q", None), "random_k": ("random_k", None), "random_v": ("random_v", None),
    "fim_diagonal": ("fim", "diagonal"), "fim_variational": ("fim", "variational"),
    "delta_fim": ("delta_fim", "variational"), "dr_fim_diagonal": ("dr_fim", "diagonal"),
    "dr_fim_variational": ("dr_fim", "variational"),
    "rein": ("rein", None), "vpt": ("vpt", None), "adaptformer": ("adaptformer", None), "vqt": ("vqt", None),
}  # fmt: skip
#: The built-in criteria, read at import (before a test registers its own).
BUILTIN_CRITERIA = tuple(criterion_names())
#: Built-in names with no ablation recipe, and why (a new method or criterion must get one or a line here).
NOT_ABLATED = {
    "sparse": "FisherTune itself: its recipes are the criterion rows",
    "magnitude": "the data-free default of injection (init_criterion), not a row of the paper's ablation",
}


def test_ablations_cover_every_method_and_builtin_criterion():
    from fishertune.training import METHODS

    covered = {what for what, _ in ABLATIONS.values()}
    names = set(METHODS) | set(BUILTIN_CRITERIA)
    assert set(NOT_ABLATED) <= names, "NOT_ABLATED names a method or criterion that no longer exists"
    assert names - set(NOT_ABLATED) == covered


def parse(argv, default_config="demo"):
    return parse_experiment_args(argv, configs_dir=CONFIGS_DIR, default_config=default_config)


def test_no_argument_is_the_demo():
    exp, targs, path = parse([])
    assert os.path.basename(path) == "demo.yaml"
    assert exp.backbone.startswith("config:") and exp.dataset == "synthetic" and len(exp.targets) >= 2
    assert targs.criterion == "dr_fim" and targs.max_steps > 0 and targs.warmup_phase_steps > 0


def test_cli_overrides_yaml():
    exp, targs, _ = parse(
        [
            "--config",
            "demo",
            "--max_steps",
            "7",
            "--targets",
            "synthetic:blur",
            "synthetic:fog",
            "--criterion",
            "random_q",
            "--merge",
            "true",
        ]
    )
    assert targs.max_steps == 7 and targs.criterion == "random_q" and exp.merge is True
    assert exp.targets == ["synthetic:blur", "synthetic:fog"]
    assert targs.learning_rate == pytest.approx(3e-4)  # still the YAML's, not the dataclass default (1e-4)


def test_unknown_yaml_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: config:vit-micro-test\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        parse(["--config", str(bad)])


@pytest.mark.parametrize("argv, match", [
    (["--targets", "fog"], "dataset:split"),
    (["--targets", "nowhere:val"], "unknown dataset"),
    (["--backbone", "config:nope"], "built-in backbone"),
    (["--dataset", "cityscapes"], "data_root"),
    (["--target_roots", "cityscapes"], "dataset=folder"),
])  # fmt: skip
def test_invalid_values_fail_with_a_message(argv, match):
    with pytest.raises(ValueError, match=match):
        parse(argv)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: os.path.basename(p)[:-5])
def test_every_config_parses(path):
    exp, targs, used = parse(["--config", path])
    assert isinstance(exp, ExperimentArguments) and isinstance(targs, FisherTuneTrainingArguments)
    assert used == path and targs.output_dir
    assert exp.targets, "every config names its target domains"
    if exp.dataset != "synthetic":
        assert exp.data_root and all(t.split(":")[0] in exp.target_root_map() for t in exp.targets)


def test_the_issue_configs_exist():
    names = {os.path.basename(p)[:-5] for p in ALL_CONFIGS}
    assert {
        "demo",
        "camvid_vit_tiny",
        "gtav_dinov2_large_mask2former",
        "cityscapes_to_bdd",
        "cityscapes_to_acdc",
    } <= names
    assert {f"ablation_{a}" for a in ABLATIONS} <= names


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablations_differ_only_in_the_method(name):
    exp, targs, _ = parse(["--config", f"ablation_{name}"])
    ref_exp, ref_targs, _ = parse(["--config", "ablation_dr_fim_variational"])
    what, estimator = ABLATIONS[name]
    if what in BASELINE_METHODS:  # baselines by `method` (no warning: the YAMLs use today's spelling)
        assert targs.method == what
    else:
        assert targs.method == "sparse" and targs.criterion == what
    assert estimator is None or targs.estimator == estimator
    assert exp == ref_exp  # same model, data, evaluation
    same = ("max_steps", "learning_rate", "per_device_train_batch_size", "delta_max", "seed", "estimation_batches")
    assert all(getattr(targs, k) == getattr(ref_targs, k) for k in same)
    assert targs.delta_max == 0.05


def test_paper_settings():
    exp, targs, _ = parse(["--config", "gtav_dinov2_large_mask2former"])
    assert exp.backbone == "facebook/dinov2-large" and exp.head == "mask2former" and exp.taps == [8, 12, 16, 24]
    assert exp.dataset == "gtav" and exp.targets == ["cityscapes:val", "bdd100k:val", "mapillary:val"]
    assert targs.max_steps == 40000 and targs.per_device_train_batch_size == 4 and exp.crop_size == [512, 512]
    # data paths are arguments
    exp, _, _ = parse(["--config", "cityscapes_to_acdc", "--data_root", "/d/cs", "--target_roots", "acdc=/d/acdc"])
    assert exp.target_root_map() == {"cityscapes": "/d/cs", "acdc": "/d/acdc"}


def test_eva02_setting_is_the_dinov2_recipe_on_timm_eva02():
    """Parsing needs no timm: the `timm:` name is only checked to be an EVA02."""
    exp, targs, _ = parse(["--config", "gtav_eva02_large_mask2former"])
    ref_exp, ref_targs, _ = parse(["--config", "gtav_dinov2_large_mask2former"])
    assert exp.backbone.startswith("timm:eva02_large") and exp.taps == [8, 12, 16, 24]
    assert dataclasses.replace(exp, backbone=ref_exp.backbone) == ref_exp
    differ = {f.name for f in dataclasses.fields(targs) if getattr(targs, f.name) != getattr(ref_targs, f.name)}
    assert differ <= {"output_dir", "logging_dir", "run_name"}, differ
    with pytest.raises(ValueError, match="EVA02"):
        parse(["--backbone", "timm:vit_large_patch14_dinov2"])
    with pytest.raises(ValueError, match="eomt"):
        parse(["--backbone", "timm:eva02_tiny_patch14_224", "--head", "eomt"])


def test_every_baseline_method_has_a_model_card_line():
    from fishertune.experiment.card import BASELINE_LINES

    assert set(BASELINE_LINES) == set(BASELINE_METHODS)


@pytest.mark.parametrize(
    "backbone, expected",
    [
        ("timm:eva02_large_patch14_224.mim_m38m", "timm/eva02_large_patch14_224.mim_m38m"),
        ("facebook/dinov2-large", "facebook/dinov2-large"),
        ("config:vit-small-demo", None),  # built-in random init: no Hub repo to name
        ("../shared/models/vit-tiny", None),
        ("not a repo id!", None),
    ],
)
def test_card_metadata_names_a_hub_repo(backbone, expected):
    from fishertune.experiment.card import hub_base_model_id

    assert hub_base_model_id(backbone) == expected
