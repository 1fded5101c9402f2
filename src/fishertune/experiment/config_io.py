"""YAML + command-line parsing for the recipes (HfArgumentParser style: YAML sets defaults, flags override)."""

from __future__ import annotations

import argparse
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
        "available: "
        f"{sorted(f[:-5] for f in os.listdir(configs_dir)) if configs_dir and os.path.isdir(configs_dir) else []}"
    )


def load_yaml(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(data).__name__}.")
    return data


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout (the recipe's docstring) and shows every flag's default."""


def pop_config(argv: list[str]) -> Optional[str]:
    """Remove ``--config <value>`` or ``--config=<value>`` from ``argv`` (in place) and return the value."""
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ValueError("--config needs a value: a YAML path or a name in recipes/configs/.")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith("--config="):
            del argv[i]
            return arg[len("--config=") :]
    return None


def parse_args(dataclass_types, argv: Optional[list[str]] = None, configs_dir: Optional[str] = None,
               default_config: Optional[str] = None, description: Optional[str] = None):  # fmt: skip
    """Parse ``--config <yaml or name>`` (or ``--config=...``) plus flags into the given dataclasses.

    Values in the YAML become parser defaults; any flag on the command line overrides them.
    Unknown YAML keys are an error naming the key (a typo must not silently fall back to a default).
    ``--help`` prints ``description``, ``--config`` and every flag with the library's defaults (not a
    YAML's). Returns ``(*dataclasses, config_path)``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config = pop_config(argv) or default_config
    # The help starts with the description (argparse's generated usage line lists 200 flags; the description
    # shows the real usage).
    parser = HfArgumentParser(
        dataclass_types,
        description=description,
        formatter_class=_HelpFormatter,
        usage=argparse.SUPPRESS if description else None,
    )
    if "-h" in argv or "--help" in argv:
        configs = sorted(f[:-5] for f in os.listdir(configs_dir) if f.endswith(".yaml")) if configs_dir else []
        parser.add_argument(
            "--config",
            default=default_config,
            help=(
                "YAML file, or the name of one in recipes/configs/"
                + (f" ({', '.join(configs)})" if configs else "")
                + ", whose keys (the flags below) replace the defaults shown here; flags override both."
            ),
        )
        actions = parser._optionals._group_actions
        actions.insert(1, actions.pop())  # listed right after --help
        parser.parse_args(argv)  # prints the help and exits
    path = find_config(config, configs_dir)
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
