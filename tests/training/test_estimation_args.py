"""Every `EstimationConfig` field is settable from the command line and from a YAML recipe, and reaches the
`EstimationConfig` the trainer builds (fields generated from EstimationConfig, no hand-kept list)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from fishertune.experiment.config_io import parse_args
from fishertune.fisher import EstimationConfig
from fishertune.training import ESTIMATION_FIELDS, FisherTuneTrainingArguments

from ._tiny import make_trainer

#: EstimationConfig field -> the training argument that sets it (the rest have their own name).
MAPPED = {"num_batches": "estimation_batches"}
HINTS = typing.get_type_hints(EstimationConfig)


def _other_value(f: dataclasses.Field):
    """A valid value of `f` other than its default, derived from its type and choices."""
    default = f.default
    if f.name == "criterion":
        return "fim"
    choices = f.metadata.get("choices")
    if choices is not None:
        return next(c for c in choices if c != default)
    hint = HINTS[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if typing.get_origin(base) is list:
        return [0, 1]
    if base is int:
        return 7 if f.name == "seed" else 2 if default is None else default + 1
    if base is float:
        return 0.5 if default is None else default / 2
    raise AssertionError(f"no test value for {f.name}: {hint}")


def _cli(name: str, value) -> list[str]:
    return [f"--{name}", *map(str, value)] if isinstance(value, list) else [f"--{name}", str(value)]


def _reached(targs: FisherTuneTrainingArguments) -> EstimationConfig:
    """The EstimationConfig the trainer builds at the end of phase 1 (`training.estimation.estimate_and_select`)."""
    return targs.estimation_config(targs.phase_lengths(10)[1])


def test_generated_fields_are_estimation_config_minus_the_mapped_ones():
    names = [f.name for f in dataclasses.fields(EstimationConfig)]
    assert list(ESTIMATION_FIELDS) == [n for n in names if n not in ("num_batches", "seed")]
    by_name = {f.name: f for f in dataclasses.fields(FisherTuneTrainingArguments)}
    for f in dataclasses.fields(EstimationConfig):
        if f.name in ESTIMATION_FIELDS:  # one help text: EstimationConfig's
            assert by_name[f.name].metadata["help"].startswith(f.metadata["help"])


@pytest.mark.parametrize("field", dataclasses.fields(EstimationConfig), ids=lambda f: f.name)
def test_every_estimation_option_from_cli_and_yaml_reaches_the_config(tmp_path, field):
    value = _other_value(field)
    assert value != getattr(EstimationConfig(), field.name)
    EstimationConfig(**{field.name: value})  # a valid value on its own
    name = MAPPED.get(field.name, field.name)
    base = ["--output_dir", str(tmp_path), "--use_cpu", "True", "--max_steps", "10"]
    (cli, _) = parse_args((FisherTuneTrainingArguments,), base + _cli(name, value))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({name: value}))
    (from_yaml, path) = parse_args((FisherTuneTrainingArguments,), base + ["--config", str(recipe)])
    assert path == str(recipe)
    for targs in (cli, from_yaml):
        assert getattr(_reached(targs), field.name) == value, field.name
        # every other field keeps EstimationConfig's default
        rest = {
            f.name: getattr(_reached(targs), f.name)
            for f in dataclasses.fields(EstimationConfig)
            if f.name not in (field.name, "num_batches", "seed")
        }
        assert rest == {k: getattr(EstimationConfig(), k) for k in rest}


def test_the_trainer_estimates_with_that_config(tmp_path, monkeypatch):
    """One run with several options from a YAML recipe: the config the estimator receives is the expected one."""
    import fishertune.fisher as fisher

    options = dict(
        criterion="dr_fim",
        estimator="diagonal",
        fisher_type="true",
        fisher_unit="sample",
        dsu_p=0.25,
        dsu_blocks=[1],
        exchange="quantile",
        exchange_quantile=0.9,
        shift_weight="literal",
        seed=3,
    )
    seen = []
    real = fisher.estimate_scores

    def spy(model, loader, weights, config, **kw):
        seen.append(config)
        return real(model, loader, weights, config, **kw)

    monkeypatch.setattr(fisher, "estimate_scores", spy)
    trainer = make_trainer(tmp_path, save_sensitivity_plot=False, **options)
    trainer.train()
    expected = {k: v for k, v in options.items()}
    assert len(seen) == 1 and seen[0] == EstimationConfig(num_batches=2, **expected)
