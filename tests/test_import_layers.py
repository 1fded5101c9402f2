"""The subpackages of fishertune import each other only downwards (issue 19), read from the source with `ast`.

Layering, lowest first:

- `backbones`: the backbone-family registry; imports no other part of fishertune.
- `tuner` (on `backbones`), `fisher` (on `tuner`), `models` (on `backbones` only: never the tuner or the
  baselines, so that a segmenter can be built without them).
- `baselines`: the other PEFT methods, on `backbones`, `tuner`, `fisher` and `models`.
- `data`, `evaluation` (on `data`): no tuner, Fisher, training or experiment.
- `hub`: uploading a run to the Hub (huggingface_hub only); below `training`, whose `push_to_hub` and
  checkpoint pushes go through it, so that the trainer and the recipes upload by the same rules.
- `training`: everything above except `experiment`.
- the package root (`fishertune/__init__.py`), then `experiment` (which pushes through `hub`) on top.
- `outputs`: the names of the files the package writes; a leaf (it imports nothing of fishertune) that every
  layer may import, so that writers and readers in different layers share one name.
- `atomic`: writing a file or folder through a temporary name and a rename; a leaf every layer may use.
- `registry`: `Registry[T]`, the one shape of the tables of named entries; a leaf every layer may use.

Every import counts, also those inside functions: a lazy import hides an upward edge from the import-time cycle
but not from the layering. To add an edge, change `ALLOWED` here in the same commit, with the reason.

No cycle between modules either (two files importing each other, directly or through others): the same edges, file
to file, counting every import (inside functions and under `TYPE_CHECKING` too: an import that only serves an
annotation still ties the two files together for a reader). `from package import name` is an edge to the module
`package/name.py` when there is one, else to `package/__init__.py`; importing a module does not count as importing
its parent packages (Python runs their `__init__` first, but that is not a dependency the file chose).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fishertune"
ROOT = "fishertune"  # the package's own __init__ (the `__version__` and the public names)

_BELOW_TRAINING = {"backbones", "tuner", "fisher", "models", "baselines", "data", "evaluation"}

#: subpackage -> the subpackages it may import.
ALLOWED: dict[str, set[str]] = {
    "outputs": set(),
    "atomic": set(),
    "registry": set(),
    "backbones": set(),
    "tuner": {"backbones"},
    "fisher": {"backbones", "tuner"},
    "models": {"backbones"},
    "baselines": {"backbones", "tuner", "fisher", "models"},
    "data": set(),
    "evaluation": {"data"},
    "training": _BELOW_TRAINING | {"hub"},
    ROOT: _BELOW_TRAINING | {"training"},
    "experiment": _BELOW_TRAINING | {"training", "hub", ROOT},
    "hub": set(),
}
_LEAVES = {"outputs", "atomic", "registry"}
for _layer_name in set(ALLOWED) - _LEAVES:
    ALLOWED[_layer_name] = ALLOWED[_layer_name] | _LEAVES


def _module_parts(path: Path) -> tuple[list[str], list[str]]:
    """(dotted module parts, parts of the package that relative imports start from)."""
    parts = ["fishertune", *path.relative_to(SRC).with_suffix("").parts]
    if parts[-1] == "__init__":
        return parts[:-1], parts[:-1]
    return parts, parts[:-1]


def _layer(parts: list[str]) -> str:
    """The layer of a module `fishertune.X...`: its subpackage, or ROOT for the package's own modules."""
    if len(parts) < 2:
        return ROOT
    sub = parts[1]
    return sub if (SRC / sub).is_dir() or sub in ("hub", "outputs", "atomic", "registry") else ROOT


def imported_layers(path: Path) -> dict[str, int]:
    """`layer -> first line` of every fishertune layer the module at `path` imports."""
    _, package = _module_parts(path)
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[list[str]] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
            else:
                base = []
            full = base + (node.module.split(".") if node.module else [])
            if full[:1] != ["fishertune"]:
                continue
            if len(full) == 1:  # `from .. import data` imports a subpackage, `from .. import __version__` the root
                targets = [[*full, alias.name] for alias in node.names]
            else:
                targets = [full]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names if a.name.split(".")[0] == "fishertune"]
        for target in targets:
            found.setdefault(_layer(target), node.lineno)
    return found


def _is_module(parts: list[str]) -> bool:
    path = SRC.joinpath(*parts[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path) -> dict[str, int]:
    """`module -> first line` of every fishertune module (dotted; a package is its `__init__`) the file imports."""
    _, package = _module_parts(path)
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[list[str]] = []
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            full = base + (node.module.split(".") if node.module else [])
            if full[:1] != ["fishertune"]:
                continue
            targets = [[*full, a.name] if _is_module([*full, a.name]) else full for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".") for a in node.names if a.name.split(".")[0] == "fishertune"]
        for target in targets:
            found.setdefault(".".join(target), node.lineno)
    return found


def module_graph(root: Path = SRC) -> dict[str, dict[str, str]]:
    """`module -> {imported module: "file:line" of the import}`, without self-edges."""
    graph: dict[str, dict[str, str]] = defaultdict(dict)
    for path in sorted(root.rglob("*.py")):
        source = ".".join(_module_parts(path)[0])
        for target, line in imported_modules(path).items():
            if target != source:
                graph[source][target] = f"{path.relative_to(SRC.parent)}:{line}"
    return graph


def layer_graph() -> dict[str, dict[str, str]]:
    """`layer -> {imported layer: "file:line" of one such import}`, without self-edges."""
    graph: dict[str, dict[str, str]] = defaultdict(dict)
    for path in sorted(SRC.rglob("*.py")):
        parts, _ = _module_parts(path)
        source = _layer(parts)
        for target, line in imported_layers(path).items():
            if target != source:
                graph[source].setdefault(target, f"{path.relative_to(SRC.parent)}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle of `graph` as `[a, b, ..., a]`, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        for nxt in graph.get(node, {}):
            if nxt in path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node, [node])):
            return cycle
    return None


def test_every_layer_is_in_the_table():
    layers = {_layer(_module_parts(p)[0]) for p in SRC.rglob("*.py")}
    assert layers <= set(ALLOWED), f"new subpackage(s) {sorted(layers - set(ALLOWED))}: give them a row in ALLOWED"


def test_imports_only_go_down():
    bad = [
        f"{source} -> {target} ({where})"
        for source, targets in sorted(layer_graph().items())
        for target, where in sorted(targets.items())
        if target not in ALLOWED[source]
    ]
    assert not bad, "imports against the layering of tests/test_import_layers.py:\n" + "\n".join(bad)


def test_no_cycle_between_layers():
    cycle = find_cycle(layer_graph())
    assert cycle is None, f"import cycle between fishertune's subpackages: {' -> '.join(cycle)}"


def test_no_cycle_between_modules():
    graph = module_graph()
    cycle = find_cycle(graph)
    where = [graph[a][b] for a, b in zip(cycle, cycle[1:])] if cycle else []
    assert cycle is None, f"import cycle between fishertune's modules: {' -> '.join(cycle)} ({', '.join(where)})"


def test_the_module_graph_sees_imports_in_functions_and_for_annotations():
    graph = module_graph()
    assert "fishertune.fisher.passes" in graph["fishertune.fisher.registry"]  # under TYPE_CHECKING
    assert "fishertune.fisher" in graph["fishertune.training.estimation"]  # `from .. import fisher` in a function
    assert "fishertune.training.bad_files" in graph["fishertune.training.trainer"]  # `from . import bad_files`


def test_the_allowed_table_itself_has_no_cycle():
    assert find_cycle({k: dict.fromkeys(v, "") for k, v in ALLOWED.items()}) is None


@pytest.mark.parametrize(
    "graph,cycle",
    [({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}, True), ({"a": {"b": ""}, "b": {"c": ""}, "c": {}}, False)],
)
def test_cycle_finder(graph, cycle):
    assert (find_cycle(graph) is not None) == cycle
