"""The methods table, and checkpoints written before `method` existed (criterion="full" etc.)."""

from __future__ import annotations

import pytest

from fishertune.training import BASELINE_METHODS, METHODS, FisherTuneTrainingArguments
from fishertune.training.state import FORMAT_VERSION, check_compatible


def _args(tmp_path, **kw):
    return FisherTuneTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **kw)


def test_the_table():
    assert list(METHODS) == ["sparse", "full", "frozen", "lora", "rein", "vpt", "adaptformer", "vqt"]
    assert [n for n, m in METHODS.items() if m.is_sparse] == ["sparse"]
    assert {n for n, m in METHODS.items() if m.saved_as == "adapter"} == {"sparse", "lora"}
    assert {n for n, m in METHODS.items() if m.baseline} == {"rein", "vpt", "adaptformer", "vqt"}
    assert set(BASELINE_METHODS) == set(METHODS) - {"sparse"}


def _old_checkpoint(args: FisherTuneTrainingArguments, criterion: str) -> dict:
    """The state a checkpoint of the same run held before `method`: no method key, the method in criterion."""
    options = {k: v for k, v in args.fishertune_options().items() if k != "method"}
    options["criterion"] = criterion
    return {"format_version": FORMAT_VERSION, "model_fingerprint": "m", "options": options}


@pytest.mark.parametrize("method, criterion", [("full", "full"), ("vqt", "vqt"), ("sparse", "fim")])
def test_old_checkpoints_resume(tmp_path, method, criterion):
    args = _args(tmp_path, method=method, criterion=criterion if method == "sparse" else "dr_fim")
    expected = {"model_fingerprint": "m", "options": args.fishertune_options()}
    check_compatible(_old_checkpoint(args, criterion), expected, "ckpt")  # no error


def test_old_checkpoint_of_another_method_is_refused_by_name(tmp_path):
    saved = _old_checkpoint(_args(tmp_path, method="full"), "full")
    now = _args(tmp_path, method="lora")
    with pytest.raises(ValueError, match="method: checkpoint 'full', now 'lora'"):
        check_compatible(saved, {"model_fingerprint": "m", "options": now.fishertune_options()}, "ckpt")
    sparse = _args(tmp_path, criterion="dr_fim")
    with pytest.raises(ValueError, match="method: checkpoint 'full', now 'sparse'"):
        check_compatible(saved, {"model_fingerprint": "m", "options": sparse.fishertune_options()}, "ckpt")


def test_the_baselines_come_from_fishertune_baselines_own_table():
    from fishertune.baselines import api
    from fishertune.training.methods import BASELINE_METHODS, METHODS

    assert set(BASELINE_METHODS) == set(api.METHODS) | {"full", "frozen", "lora"}
    for name, (config_cls, *_) in api.METHODS.items():
        assert METHODS[name].baseline == name and METHODS[name].saved_as == "whole"
        assert METHODS[name].card_line == config_cls.card_line and config_cls.card_line
