"""Long shipped configs save checkpoints: a crash late in a run must not lose it."""

from __future__ import annotations

import glob
import os

import pytest

from fishertune.experiment import parse_experiment_args

from ._helpers import CONFIGS_DIR

#: Runs longer than this many optimizer steps must checkpoint (the demo's 300 CPU steps take minutes).
LONG_RUN_STEPS = 500


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS_DIR, "*.yaml"))), ids=os.path.basename)
def test_long_configs_save_checkpoints(path):
    _, targs, _ = parse_experiment_args(["--config", path], configs_dir=CONFIGS_DIR)
    if targs.max_steps <= LONG_RUN_STEPS:
        pytest.skip(f"{targs.max_steps} steps: a short run")
    assert str(targs.save_strategy.value if hasattr(targs.save_strategy, "value") else targs.save_strategy) == "steps"
    assert 0 < targs.save_steps <= targs.max_steps // 4  # at most a quarter of the run lost
    assert targs.save_total_limit and targs.save_total_limit >= 1  # bounded disk use
