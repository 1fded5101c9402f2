"""FisherTuneTrainingArguments: documented fields, the Rein defaults, validation and phase lengths."""

from dataclasses import fields

import pytest
from transformers import TrainingArguments

from fishertune.training import FisherTuneTrainingArguments


def _args(tmp_path, **kw):
    kw.setdefault("use_cpu", True)
    return FisherTuneTrainingArguments(output_dir=str(tmp_path), **kw)


def test_every_added_field_is_documented(tmp_path):
    from fishertune.fisher import EstimationConfig
    from fishertune.training import ESTIMATION_FIELDS, TUNER_FIELDS
    from fishertune.tuner import FisherTuneConfig

    base = {f.name for f in fields(TrainingArguments)}
    doc = FisherTuneTrainingArguments.__doc__
    for f in fields(FisherTuneTrainingArguments):
        if f.name in base:
            continue
        assert f.metadata.get("help"), f"{f.name} has no help"
        # the configs' options are generated from the configs and documented once, in their Args
        where = {
            **dict.fromkeys(ESTIMATION_FIELDS, EstimationConfig.__doc__),
            **dict.fromkeys(TUNER_FIELDS, FisherTuneConfig.__doc__),
        }.get(f.name, doc)
        assert f"        {f.name} (" in where or f.name in doc, f"{f.name} is not in the Args docstring"


def test_note_lists_every_changed_default(tmp_path):
    ours, theirs = _args(tmp_path), TrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    note = FisherTuneTrainingArguments.__doc__.split("NOTE:")[1].split("Args:")[0]
    changed = [f.name for f in fields(TrainingArguments) if getattr(ours, f.name) != getattr(theirs, f.name)]
    changed = [n for n in changed if n not in ("output_dir", "logging_dir")]
    assert sorted(changed) == sorted(
        ["learning_rate", "weight_decay", "lr_scheduler_type", "lr_scheduler_kwargs", "remove_unused_columns"]
    )
    for name in changed:
        assert name in note
    assert ours.learning_rate == 1e-4 and ours.weight_decay == 0.05
    assert ours.lr_scheduler_kwargs == {"power": 0.9, "lr_end": 0.0}


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"criterion": "fisher"}, "criterion='fisher' is not registered; use one of random"),
        ({"method": "adapters"}, "method=.adapters. is not registered"),
        ({"method": "lora", "criterion": "full"}, "criterion='full' is not registered"),
        ({"variational_gradient": "sampled"}, "variational_gradient='sampled' is not supported; use one of"),
        ({"estimator": "laplace"}, "estimator"),
        ({"max_steps": 10, "warmup_phase_steps": 2, "tuning_phase_steps": 5}, "set two of the three"),
        ({"optim": "sgd"}, "optim='adamw_torch'"),
        ({"delta_min": 0.1, "delta_max": 0.05}, r"delta_min must be in \[0, delta_max=0.05\]"),
        ({"warmup_phase_ratio": 1.5}, r"\[0, 1\]"),
    ],
)
def test_invalid_arguments_say_how_to_fix(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **kw)


def test_phase_lengths(tmp_path):
    assert _args(tmp_path, warmup_phase_ratio=0.25, estimation_batches=7).phase_lengths(40) == (10, 7, 30)
    assert _args(tmp_path, warmup_phase_steps=3, estimation_ratio=0.5).phase_lengths(40) == (3, 20, 37)
    # T2 defaults to the estimator's own default number of batches
    from fishertune.fisher import EstimationConfig

    assert _args(tmp_path).phase_lengths(100)[1] == EstimationConfig().num_batches
    # max_steps from T1 + T3
    args = _args(tmp_path, warmup_phase_steps=4, tuning_phase_steps=6)
    assert args.max_steps == 10 and args.phase_lengths(10) == (4, args.phase_lengths(10)[1], 6)
    # baselines: no estimation, no warm-up unless asked for
    assert _args(tmp_path, method="full").phase_lengths(40) == (0, 0, 40)
    assert _args(tmp_path, method="lora", warmup_phase_steps=5).phase_lengths(40) == (5, 0, 35)
    with pytest.raises(ValueError, match="exceeds max_steps"):
        _args(tmp_path, warmup_phase_steps=50).phase_lengths(40)


def test_estimation_config_forwards_set_fields_only(tmp_path):
    cfg = _args(tmp_path, criterion="dr_fim", tau=2e-3, dsu_blocks=[0], seed=7).estimation_config(5)
    assert (cfg.criterion, cfg.num_batches, cfg.tau, cfg.dsu_blocks, cfg.seed) == ("dr_fim", 5, 2e-3, [0], 7)
    default = type(cfg)()
    assert cfg.gamma == default.gamma


def test_method_is_separate_from_the_criterion(tmp_path):
    args = _args(tmp_path, method="lora")
    assert (args.method, args.criterion) == ("lora", "dr_fim")
    assert "criterion" not in args.fishertune_options() and args.fishertune_options()["method"] == "lora"
    sparse = _args(tmp_path, criterion="fim")
    assert (sparse.method, sparse.fishertune_options()["criterion"]) == ("sparse", "fim")
