"""Import a script of benchmarks/ (not a package) as a module, for the tests beside this file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    """Load ``benchmarks/<name>.py`` under the module name ``name`` (its own sibling imports resolve too)."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def markdown_tables(md: str) -> list[dict[str, list[str]]]:
    """Every markdown table of ``md`` as {row name: cells} (header row under the key "")."""
    tables, cur = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cur is None:
                cur = {"": cells}
                tables.append(cur)
            elif not set(line) <= set("|-: "):
                cur[cells[0]] = cells[1:]
        else:
            cur = None
    return tables
