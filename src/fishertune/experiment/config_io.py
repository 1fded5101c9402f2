"""YAML + command-line parsing for the recipes (HfArgumentParser style: YAML sets defaults, flags override)."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Optional

import yaml
from transformers import HfArgumentParser

DEMO_CONFIG = "demo"


def find_config(name_or_path: Optional[str], configs_dir: Optional[str] = None) -> Optional[str]:
    """Resolve ``--config``: a YAML path, or a name of ``recipes/configs/<name>.yaml``."""
    if name_or_path is None:
        return None
    if os.path.isfile(name_or_path):
        return name_or_path
    if configs_dir is not None:
        candidate = os.path.join(configs_dir, f"{name_or_path}.yaml")
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"Config '{name_or_path}' is neither a file nor a name in {configs_dir}; "
        f"available: {sorted(f[:-5] for f in os.listdir(configs_dir)) if configs_dir and os.path.isdir(configs_dir) else []}"
    )


def load_yaml(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(data).__name__}.")
    return data


def parse_args(dataclass_types, argv: Optional[list[str]] = None, configs_dir: Optional[str] = None, default_config: Optional[str] = None):
    """Parse ``--config <yaml or name>`` plus flags into the given dataclasses.

    Values in the YAML become parser defaults; any flag on the command line overrides them.
    Unknown YAML keys are an error naming the key (a typo must not silently fall back to a default).
    Returns ``(*dataclasses, config_path)``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config = default_config
    if "--config" in argv:
        i = argv.index("--config")
        config = argv[i + 1]
        del argv[i : i + 2]
    path = find_config(config, configs_dir)
    parser = HfArgumentParser(dataclass_types)
    if path is not None:
        values = load_yaml(path)
        known = {f.name for dc in dataclass_types for f in dataclasses.fields(dc)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown keys in {path}: {unknown}. Check the spelling against `--help`.")
        parser.set_defaults(**values)
        # Required fields satisfied by the YAML must not be demanded again on the command line.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    return (*parser.parse_args_into_dataclasses(args=argv), path)


def resolved_config(*args_objs) -> dict[str, Any]:
    """Every field of the parsed dataclasses, JSON/YAML-safe, for the output folder."""
    out: dict[str, Any] = {}
    for obj in args_objs:
        d = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        out.update({k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))})
    return out
