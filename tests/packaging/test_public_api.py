"""The package's public face: `import fishertune` reaches every subpackage, lazily where heavy, and each
subpackage's `__all__` names only its own public objects."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

SUBPACKAGES = ["backbones", "tuner", "fisher", "models", "baselines", "data", "evaluation", "training", "experiment"]
#: Helpers of the backbone registry's built-in entries, not part of what a user or family author calls.
INTERNAL = {"backbones": {"cls_and_registers", "no_prefix", "default_tap_kwargs"}}


def test_import_fishertune_reaches_every_subpackage_and_stays_light():
    """The README's `fishertune.fisher.estimate_scores` after `import fishertune`, without importing `datasets` or
    the `Trainer` until a subpackage that needs them is touched (a fresh interpreter: sys.modules starts empty)."""
    code = """
import sys
import fishertune
heavy = [m for m in ("datasets", "transformers.trainer", "fishertune.training", "fishertune.data") if m in sys.modules]
assert not heavy, heavy
fishertune.fisher.estimate_scores, fishertune.fisher.EstimationConfig
fishertune.training.FisherTuneTrainer, fishertune.data.load_dataset, fishertune.evaluation.evaluate_model
fishertune.experiment.run_experiment, fishertune.hub.push_output_folder, fishertune.baselines.apply_method
assert {"fisher", "training", "data", "evaluation", "experiment"} <= set(dir(fishertune))
try:
    fishertune.no_such_thing
except AttributeError as err:
    assert "no_such_thing" in str(err)
else:
    raise AssertionError("an unknown attribute must raise AttributeError")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_all_holds_only_the_subpackages_own_public_names(sub):
    """No re-export across layers (EVA02 lives in `backbones`, not `baselines`; `backbone_blocks` is not a
    `models` name) and no internal helper: every class and function of `__all__` is defined in the subpackage."""
    module = importlib.import_module(f"fishertune.{sub}")
    assert len(module.__all__) == len(set(module.__all__)), "duplicate names in __all__"
    for name in module.__all__:
        assert not name.startswith("_"), name
        obj = getattr(module, name)  # every listed name exists
        origin = getattr(obj, "__module__", None) if callable(obj) else None
        if origin is not None:
            assert origin.startswith(f"fishertune.{sub}"), (
                f"fishertune.{sub}.{name} is {origin}'s: import it from there"
            )
    exported = set(module.__all__) | set(vars(module))
    assert not exported & INTERNAL.get(sub, set()), sorted(exported & INTERNAL[sub])
