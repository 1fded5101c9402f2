"""The methods registry: each method an object that prepares and saves its model."""

from __future__ import annotations

import pytest

from fishertune.training import BASELINE_METHODS, METHODS, get_method
from fishertune.training.methods import Baseline


def test_the_table():
    assert list(METHODS) == ["sparse", "full", "frozen", "lora", "rein", "vpt", "adaptformer", "vqt"]
    assert [n for n, m in METHODS.items() if m.is_sparse] == ["sparse"]
    assert {n for n, m in METHODS.items() if m.saved_as == "adapter"} == {"sparse", "lora"}
    assert {n for n, m in METHODS.items() if isinstance(m, Baseline)} == {"rein", "vpt", "adaptformer", "vqt"}
    assert set(BASELINE_METHODS) == set(METHODS) - {"sparse"}


def test_the_baselines_come_from_fishertune_baselines_own_table():
    from fishertune.baselines import api
    from fishertune.training.methods import BASELINE_METHODS, METHODS

    assert set(BASELINE_METHODS) == set(api.METHODS) | {"full", "frozen", "lora"}
    for name, baseline in api.METHODS.items():
        assert isinstance(METHODS[name], Baseline) and METHODS[name].saved_as == "whole"
        assert METHODS[name].card_line == baseline.config_cls.card_line and baseline.config_cls.card_line


def test_an_unknown_method_names_the_registered_ones():
    with pytest.raises(ValueError, match="method='adapters' is not registered; use one of sparse, full, frozen"):
        get_method("adapters")
