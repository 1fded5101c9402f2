"""Shared by the experiment tests: the recipes as functions, and a quick demo run."""

from __future__ import annotations

import os
import runpy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = os.path.join(REPO, "recipes")
CONFIGS_DIR = os.path.join(RECIPES, "configs")


def recipe_main(name: str):
    """`main` of recipes/<name>.py (loaded without running its `__main__` block)."""
    return runpy.run_path(os.path.join(RECIPES, f"{name}.py"), run_name=f"recipe_{name}")["main"]


def quick_demo_argv(output_dir: str, *extra: str) -> list[str]:
    """The demo config shortened by `--quick` (CI): all three phases, a handful of steps and images."""
    return ["--quick", "true", "--output_dir", str(output_dir), "--logging_steps", "2", *extra]


def records_dir(out) -> str:
    """Where a test driver writes what it records about a run: beside the output folder, which may hold that
    run's own files only (a resumed run refuses any other)."""
    return f"{os.path.normpath(str(out))}.records"
