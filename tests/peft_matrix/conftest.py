"""Fetch PEFT's test matrix (from the sdist of the installed peft) before this directory is collected.

pytest imports this conftest before ``test_fishertune_matrix.py``, so a plain ``pytest`` from a
fresh clone downloads the matrix once (see ``fetch_peft_tests.py``). A failed download raises
here: the run errors out instead of silently skipping the conformance matrix.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_HERE = Path(__file__).resolve().parent

# PEFT's own test modules (and any half-written staging copy) are imported by the matrix, never collected.
collect_ignore_glob = ["_peft_tests*"]


def _fetch() -> None:
    spec = importlib.util.spec_from_file_location("_fishertune_fetch_peft_tests", _HERE / "fetch_peft_tests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.fetch()


_fetch()
