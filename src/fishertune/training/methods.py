"""The training methods of `FisherTuneTrainingArguments.method`: FisherTune's sparse tuning and the baselines.

One table, read by `setup.prepare_model` (how the backbone trains), the trainer and `phase_lengths` (warm-up
and estimation), `experiment.run` (saved whole or as an adapter) and the model card (its line). The selection
criterion (`fishertune.fisher` registry) only matters for `method="sparse"`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

from ..baselines.api import METHODS as BASELINE_REGISTRY


@dataclass(frozen=True)
class Method:
    """How one method trains and saves.

    Args:
        name (`str`): the value of `FisherTuneTrainingArguments.method`.
        kind (`str`): what trains in the backbone: `"sparse"` (FisherTune's selected deltas, PEFT adapter; the
            only kind with Algorithm 1's warm-up by default and phase 2's estimation and selection), `"full"`
            (every weight), `"frozen"` (nothing), `"lora"` (a PEFT LoRA, or the PeftModel passed), `"baseline"`
            (the `fishertune.baselines` method of that name, default config; backbone frozen).
        saved_as (`str`): `"adapter"` (a PEFT adapter over base_model/) or `"whole"` (the plain model).
        card_line (`str`): the model card's sentence for a baseline (empty for FisherTune's own card).
    """

    name: str
    kind: str
    saved_as: str
    card_line: str = ""

    @property
    def is_sparse(self) -> bool:
        """FisherTune: T1 warm-up by default (`warmup_phase_ratio`), phase 2 selects the entries phase 3 tunes."""
        return self.kind == "sparse"

    @property
    def baseline(self) -> Optional[str]:
        """The `fishertune.baselines` method name installed on the plain model, or None."""
        return self.name if self.kind == "baseline" else None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sparse", "sparse", "adapter"),
    Method("full", "full", "whole",
           card_line="every weight of the backbone and the decoder fine-tuned (full fine-tuning)."),
    Method("frozen", "frozen", "whole", card_line="the backbone frozen, only the decoder trained."),
    Method("lora", "lora", "adapter",
           card_line="PEFT LoRA on the q, k, v and FFN linears of every block, plus the decoder."),
    # fishertune.baselines' own table: a baseline added there is a method here with no other edit.
    *(Method(name, "baseline", "whole", card_line=config_cls.card_line)
      for name, (config_cls, *_) in BASELINE_REGISTRY.items()),
)}  # fmt: skip
#: The methods other than FisherTune's sparse tuning (the baselines of the ablation).
BASELINE_METHODS = tuple(n for n, m in METHODS.items() if not m.is_sparse)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method={name!r} is not one of {', '.join(METHODS)}: 'sparse' is FisherTune (pick the "
                         "selection with `criterion`), the others are the baselines.") from None


def resolve_method(method: str, criterion: str, default_criterion: str) -> tuple[str, str]:
    """`(method, criterion)` with the pre-`method` spelling `criterion=<method>` mapped, with a FutureWarning.

    `criterion="full"` (and the other baselines) meant the method before `method` existed; with `method` left
    at "sparse" (or equal) it becomes `method="full"` and `criterion` returns to its default (unused by a
    baseline, so that the old and the new spelling give equal arguments and checkpoints).
    """
    get_method(method)
    if criterion not in BASELINE_METHODS:
        return method, criterion
    if method not in ("sparse", criterion):
        raise ValueError(f"method={method!r} but criterion={criterion!r} names another method; the method goes in "
                         f"`method` only: drop criterion (or set method={criterion!r}).")
    warnings.warn(f"criterion={criterion!r} is deprecated: it is a training method, not a selection criterion; "
                  f"write method={criterion!r} (YAML `method: {criterion}`, flag `--method {criterion}`).",
                  FutureWarning, stacklevel=4)
    return criterion, default_criterion


def upgrade_options(options: dict) -> dict:
    """A checkpoint's saved `fishertune_options` in today's form: checkpoints written before `method` existed
    hold `criterion="full"` etc. and no `method` key (old sparse runs: the criterion, method "sparse")."""
    if "method" in options:
        return options
    out = dict(options)
    if out.get("criterion") in BASELINE_METHODS:
        out["method"] = out.pop("criterion")
    else:
        out["method"] = "sparse"
    return out
