"""The estimator's settings as training arguments, generated from `fishertune.fisher.EstimationConfig`.

`EstimationArguments` has one field per `EstimationConfig` field, so that every estimator option is a YAML key
and a flag (HfArgumentParser) with no hand-kept copy: help text and choices are `EstimationConfig`'s metadata.
Mapped, not copied: `criterion` (the trainer's own field: also accepts the deprecated method names),
`num_batches` (T2: `estimation_batches` / `estimation_ratio`) and `seed` (`TrainingArguments.seed`).
`estimator` and `fisher_type` keep `EstimationConfig`'s default; every other field is `Optional`, None
keeping `EstimationConfig`'s default, so that `estimation_config()` passes only what was set.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Optional

from ..fisher import EstimationConfig

#: EstimationConfig fields the trainer sets from its own arguments (not generated here).
MAPPED_FIELDS = ("criterion", "num_batches", "seed")
#: Generated with EstimationConfig's default (not None): the trainer has always had them set.
WITH_DEFAULT = ("estimator", "fisher_type")


def _generated_fields() -> list[tuple[str, type, dataclasses.Field]]:
    hints = typing.get_type_hints(EstimationConfig)  # real types: HfArgumentParser cannot read strings
    out = []
    for f in dataclasses.fields(EstimationConfig):
        if f.name in MAPPED_FIELDS:
            continue
        metadata = dict(f.metadata)
        if f.name in WITH_DEFAULT:
            out.append((f.name, hints[f.name], dataclasses.field(default=f.default, metadata=metadata)))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        metadata["help"] = f"{metadata.get('help', '')} (None: EstimationConfig's default, {default!r})".lstrip()
        hint = hints[f.name]
        optional = hint if type(None) in typing.get_args(hint) else Optional[hint]
        out.append((f.name, optional, dataclasses.field(default=None, metadata=metadata)))
    return out


class _EstimationArgumentsMixin:
    def estimation_config(self, num_batches: int) -> EstimationConfig:
        """The `EstimationConfig` of this run: `criterion`, `num_batches` = T2, `seed`, and every generated field
        that is set (None keeps `EstimationConfig`'s default)."""
        kwargs = dict(criterion=self.criterion, num_batches=num_batches, seed=self.seed)
        kwargs.update({name: getattr(self, name) for name in ESTIMATION_FIELDS if getattr(self, name) is not None})
        return EstimationConfig(**kwargs)


EstimationArguments = dataclasses.make_dataclass(
    "EstimationArguments", _generated_fields(), bases=(_EstimationArgumentsMixin,),
    namespace={"__module__": __name__, "__doc__": (
        "Every `fishertune.fisher.EstimationConfig` option except criterion, num_batches and seed (see the module "
        "docstring); each field's help and choices are EstimationConfig's, documented in its `Args:`.")},
)  # fmt: skip
#: The generated field names, in EstimationConfig's order.
ESTIMATION_FIELDS = tuple(f.name for f in dataclasses.fields(EstimationArguments))
