"""`fishertune.registry.Registry`: the one shape of the backbone, criterion, baseline and method tables."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fishertune.registry import Registry


@dataclass(frozen=True)
class _Entry:
    name: str


def test_register_get_names_and_live_choices():
    reg = Registry("thing", "register_thing(...)")
    choices = reg  # what argparse holds as `choices`
    reg.register(_Entry("a"))
    assert reg.get("a") == _Entry("a") and reg.names() == ("a",) and "a" in choices and "b" not in choices
    reg.register(_Entry("b"))  # registered after the choices were taken: they include it
    assert list(choices) == ["a", "b"] and len(reg) == 2 and "b" in choices
    with pytest.raises(
        ValueError,
        match=r"thing='c' is not registered; use one of a, b, or register it with "
        r"register_thing\(\.\.\.\)",
    ):
        reg.get("c")
    with pytest.raises(ValueError, match="registered already; pass replace=True"):
        reg.register(_Entry("a"))
    assert reg.unregister("a") == _Entry("a") and reg.names() == ("b",)


def test_every_table_is_a_registry():
    from fishertune.backbones.registry import FAMILIES
    from fishertune.baselines import METHODS as BASELINES
    from fishertune.fisher.registry import CRITERIA
    from fishertune.training import METHODS

    for table in (FAMILIES, CRITERIA, BASELINES, METHODS):
        assert isinstance(table, Registry) and len(table) > 0
    assert set(BASELINES) < set(METHODS) and "dr_fim" in CRITERIA and "dinov2" in FAMILIES
