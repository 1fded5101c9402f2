"""The tuner's, the estimator's and LoRA's settings as training arguments, generated from their config dataclasses.

Each setting is declared, defaulted, documented and validated once, in its config (`FisherTuneConfig`,
`EstimationConfig`, PEFT's `LoraConfig`); `ConfigArguments` has one field per exposed config field, so that it is
a YAML key and a flag (HfArgumentParser) with no hand-kept copy: help text and choices are the config's metadata.
A field is `Optional` with default None (None keeps the config's default, so that only what was set is passed on)
unless its `ConfigFields` keeps the config's default; the training arguments validate a run's settings by building
its configs (`FisherTuneTrainingArguments.__post_init__`). Mapped, not generated: the estimator's `num_batches`
(T2: `estimation_batches` / `estimation_ratio`) and `seed` (`TrainingArguments.seed`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal, Optional

from peft import LoraConfig

from ..fisher import EstimationConfig
from ..tuner import FisherTuneConfig


@dataclasses.dataclass(frozen=True)
class ConfigFields:
    """Which fields of a config dataclass are training arguments, and under which names.

    Args:
        config (`type`): the config dataclass.
        names (`tuple[str, ...]`, *optional*): its fields that are arguments; None: all but `exclude`.
        exclude (`tuple[str, ...]`): fields left out of `names=None` (set by the trainer from its own arguments).
        rename (`Mapping[str, str]`): config field -> argument name (LoRA's `r` is `lora_r`).
        keep_default (`tuple[str, ...]`): arguments generated with the config's default instead of None (recorded
            in a run's `config.yaml` as the value they have).
        note (`str`): appended to every help text (e.g. which method reads the setting).
    """

    config: type
    names: Optional[tuple[str, ...]] = None
    exclude: tuple[str, ...] = ()
    rename: Mapping[str, str] = dataclasses.field(default_factory=dict)
    keep_default: tuple[str, ...] = ()
    note: str = ""

    def config_fields(self) -> list[dataclasses.Field]:
        by_name = {f.name: f for f in dataclasses.fields(self.config)}
        names = self.names if self.names is not None else tuple(n for n in by_name if n not in self.exclude)
        return [by_name[n] for n in names]

    def argument_names(self) -> tuple[str, ...]:
        return tuple(self.rename.get(f.name, f.name) for f in self.config_fields())

    def generate(self) -> list[tuple[str, Any, dataclasses.Field]]:
        """`(argument name, type, field)` for `dataclasses.make_dataclass`."""
        hints = typing.get_type_hints(self.config)  # real types: HfArgumentParser cannot read strings
        out = []
        for f in self.config_fields():
            metadata = dict(f.metadata)
            # argparse formats help texts with `%`: a literal percent sign is doubled
            metadata["help"] = metadata.get("help", "").replace("%", "%%")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if typing.get_origin(hint) is Literal or (args and typing.get_origin(args[0]) is Literal):
                hint = str  # the config's metadata `choices` are what a user may set (a Literal may list more)
            if f.name in self.keep_default:
                metadata["help"] = f"{metadata.get('help', '')}{self.note}"
                field = dataclasses.field(default=default, metadata=metadata)
            else:
                metadata["help"] = (
                    f"{metadata.get('help', '')}{self.note} (None: {self.config.__name__}'s "
                    f"default, {default!r})".lstrip()
                )
                hint = hint if type(None) in typing.get_args(hint) else Optional[hint]
                field = dataclasses.field(default=None, metadata=metadata)
            out.append((self.rename.get(f.name, f.name), hint, field))
        return out

    def values(self, args: Any) -> dict[str, Any]:
        """`{config field: value}` of the arguments that are set (not None), read from `args`."""
        pairs = ((f.name, getattr(args, self.rename.get(f.name, f.name))) for f in self.config_fields())
        return {name: value for name, value in pairs if value is not None}


#: Every EstimationConfig field but `num_batches` and `seed` (see the module docstring).
ESTIMATION = ConfigFields(
    EstimationConfig, exclude=("num_batches", "seed"), keep_default=("criterion", "estimator", "fisher_type")
)
#: FisherTune's budget (the rest of FisherTuneConfig is set by `training.methods` from the model).
TUNER = ConfigFields(
    FisherTuneConfig, names=("delta_min", "delta_max", "budget_base", "delta_max_count", "delta_min_count")
)
#: LoRA's rank, scale and dropout for `method="lora"` (PEFT's own defaults and help).
LORA = ConfigFields(
    LoraConfig,
    names=("r", "lora_alpha", "lora_dropout"),
    rename={"r": "lora_r"},
    keep_default=("r", "lora_alpha", "lora_dropout"),
    note=" (method='lora')",
)
SOURCES = (ESTIMATION, TUNER, LORA)


class _ConfigArgumentsMixin:
    def estimation_config(self, num_batches: int) -> EstimationConfig:
        """The `EstimationConfig` of this run: `num_batches` = T2, `seed`, and every generated field that is set."""
        return EstimationConfig(num_batches=num_batches, seed=self.seed, **ESTIMATION.values(self))

    def tuner_config(self, **kwargs: Any) -> FisherTuneConfig:
        """A `FisherTuneConfig` with this run's budget (the set fields) and `kwargs`."""
        return FisherTuneConfig(**TUNER.values(self), **kwargs)

    def tuner_settings(self) -> dict[str, Any]:
        """The budget fields that are set (`{FisherTuneConfig field: value}`)."""
        return TUNER.values(self)

    def lora_config(self, **kwargs: Any) -> LoraConfig:
        """A `LoraConfig` with this run's rank, alpha and dropout and `kwargs`."""
        return LoraConfig(**LORA.values(self), **kwargs)


ConfigArguments = dataclasses.make_dataclass(
    "ConfigArguments",
    [f for source in SOURCES for f in source.generate()],
    bases=(_ConfigArgumentsMixin,),
    namespace={
        "__module__": __name__,
        "__doc__": (
            "The settings of `fishertune.fisher.EstimationConfig` (but num_batches and seed), `FisherTuneConfig`'s "
            "budget and `peft.LoraConfig`'s r (`lora_r`), lora_alpha and lora_dropout as training arguments (see the "
            "module docstring); each field's help and choices are its config's, documented in its `Args:`."
        ),
    },
)
#: The generated argument names, per config.
ESTIMATION_FIELDS, TUNER_FIELDS, LORA_FIELDS = (source.argument_names() for source in SOURCES)
