"""What users read: the README is a short guide, and no document links outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/METHOD.md", "docs/ARCHITECTURE.md", "benchmarks/README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("name", DOCS)
def test_every_link_resolves_inside_the_repository(name):
    path = REPO / name
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # URLs and anchors
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{name} links outside the repository: {target}"
        assert resolved.exists(), f"{name} links a missing file: {target}"


def test_readme_is_a_short_guide_that_starts_with_the_two_commands():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    top = "\n".join(lines[:15])
    assert "    make demo " in top and "    make test " in top
    for section in (
        "## Install",
        "## Use it as a PEFT method",
        "## Train with Algorithm 1",
        "## Recipes",
        "## Multi-GPU with accelerate",
        "## Load and predict",
        "## Results",
    ):
        assert section in lines, section
    assert "benchmarks/README.md" in "\n".join(lines)


def test_method_doc_has_the_units_section():
    text = (REPO / "docs/METHOD.md").read_text(encoding="utf-8")
    assert "## Units and the exchange rate between F and dF" in text and "EstimationConfig" in text


def test_readme_names_real_options_with_their_real_choices_and_defaults():
    """The options the README explains exist where it says, with the values and defaults it gives."""
    import dataclasses

    from fishertune import FisherTuneConfig
    from fishertune.fisher import EstimationConfig
    from fishertune.fisher.criteria import EXCHANGES
    from fishertune.training import FisherTuneTrainingArguments

    text = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())

    def default(cls, name):
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)

    for choice in ("targeted", "backbone"):
        FisherTuneConfig(budget_base=choice)
        assert f'`"{choice}"`' in text
    assert default(FisherTuneConfig, "budget_base") == "targeted" and '`"targeted"` (default' in text
    assert default(FisherTuneConfig, "init_criterion") == "magnitude" and '(`"magnitude"`, the default' in text
    assert default(EstimationConfig, "fisher_unit") == "pixel" and '`"pixel"` (default' in text
    EstimationConfig(fisher_unit="sample")
    assert default(EstimationConfig, "exchange") == "rank" and '`"rank"` (default' in text
    for choice in EXCHANGES:
        assert f'`"{choice}"`' in text, choice
    assert f"`exchange_quantile` of F, {default(EstimationConfig, 'exchange_quantile')}" in text
    for name in ("fisher_unit", "exchange", "exchange_quantile", "nonfinite_policy", "nonfinite_max_skips"):
        assert any(f.name == name for f in dataclasses.fields(FisherTuneTrainingArguments)), name
    assert default(FisherTuneTrainingArguments, "nonfinite_policy") == "error"
    assert '`nonfinite_policy="error"` (default)' in text
    FisherTuneTrainingArguments(output_dir="/tmp/unused", nonfinite_policy="skip", report_to="none")
    assert f"`nonfinite_max_skips`, default {default(FisherTuneTrainingArguments, 'nonfinite_max_skips')}" in text


def test_architecture_names_only_what_exists():
    """Every package, module file, dotted path and class docs/ARCHITECTURE.md names is in the package as built."""
    import importlib

    text = (REPO / "docs/ARCHITECTURE.md").read_text(encoding="utf-8")
    package = REPO / "src" / "fishertune"
    names = re.findall(r"`([^`]+)`", text)
    sources = "\n".join(p.read_text(encoding="utf-8") for p in package.rglob("*.py"))
    checked = 0
    for name in names:
        if re.fullmatch(r"[a-z_]+/", name) and name not in ("recipes/", "benchmarks/", "base_model/"):
            assert (package / name).is_dir(), name
        elif re.fullmatch(r"[a-z_]+\.py", name):
            assert any(package.rglob(name)), name
        elif re.fullmatch(r"(experiment|training|fisher|models|evaluation|tuner|hub|data|baselines)(\.\w+)+", name):
            parts = name.split(".")
            for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
                try:
                    obj = importlib.import_module("fishertune." + ".".join(parts[:i]))
                except ModuleNotFoundError:
                    continue
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
                break
            else:
                raise AssertionError(name)
        elif re.fullmatch(r"(FisherTune|Estimation|NonFinite|TuningSchedule|Light|Pyramid|Eomt|Experiment)\w+", name):
            assert re.search(rf"^class {name}\b", sources, re.M), name
        else:
            continue
        checked += 1
    assert checked > 30


def test_readme_names_every_method_and_builtin_criterion():
    """README's list of `method` values and of `criterion` values is complete (a new one must be documented)."""
    from fishertune.fisher import criterion_names
    from fishertune.training import METHODS

    text = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    methods = re.search(r"`method` is (.*?)\(e\.g\.", text).group(1)
    criteria = re.search(r"`criterion` is the sparse selection: `([^`]*)`", text).group(1)
    assert set(METHODS) == set(re.findall(r"`(\w+)`", methods))
    assert set(criterion_names()) == {c.strip() for c in criteria.split(",")}
