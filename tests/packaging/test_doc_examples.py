"""Every ```python block of README.md and docs/*.md runs as written, offline, on tiny local stand-ins.

This module is the ONE place that adapts the documents' examples to a test machine:

- `HUB_STAND_INS`: each Hub id an example names -> a tiny local model of the same family, built here.
- `SHRINK`: settings sized for a real run -> a few steps (each replacement must match the block it names,
  so an edited example cannot silently escape its shrinking).
- `PREAMBLES`: by section heading, the code that supplies the names an example uses without defining them
  (`loader`, `t`, `total_steps`, `fresh_seg`, `seg`, `train`, the output folders and image a loading example
  opens); a preamble sees `STAND_INS` (Hub id -> local folder) and `REPO`. A block whose section has no preamble
  runs with none.

Each block runs in a fresh namespace in its own temporary working directory. A block that cannot run here
is marked in the document by `<!-- not-run: <reason> -->` on the line before its opening fence; such
blocks are reported as skipped with the reason (there is none today).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->\s*$")

#: Hub id -> name of the tiny stand-in built by the `stand_ins` fixture (a folder under its tmp dir).
HUB_STAND_INS = {"facebook/dinov2-large": "dinov2-tiny"}

#: (section heading, text in the block, replacement): a GPU-sized run shrunk to a few CPU steps.
SHRINK = [
    ("## Train with Algorithm 1", "max_steps=40_000", "max_steps=10"),
    ("## Train with Algorithm 1", "estimation_batches=200", "estimation_batches=2"),
    ("## Train with Algorithm 1", 'report_to="tensorboard"', 'report_to="none"'),
]

#: A run's output folders and an image for the loading examples: the quick demo recipe on the micro backbone.
_RUNS = """
import runpy
from fishertune.data import generate_sample

_helpers = runpy.run_path(f"{REPO}/tests/experiment/_helpers.py")  # the recipe tests' own quick demo
recipe_main, quick_demo_argv = _helpers["recipe_main"], _helpers["quick_demo_argv"]

_micro = ["--backbone", "config:vit-micro-test", "--targets", "synthetic:fog", "--val_split", ""]
recipe_main("train")(quick_demo_argv("outputs/demo", *_micro))
recipe_main("train")(quick_demo_argv("outputs/merged", "--merge", "true", *_micro))
from PIL import Image
Image.fromarray(generate_sample(0, "source", (64, 96))[0]).save("street.png")
"""

#: section heading -> code run before each of its blocks; `STAND_INS` maps a Hub id to its local folder.
PREAMBLES = {
    "## Use it as a PEFT method": """
import torch
from fishertune.models import build_model

fresh_seg = build_model("light", STAND_INS["facebook/dinov2-large"], num_labels=19)
_g = torch.Generator().manual_seed(0)
loader = [{"pixel_values": torch.randn(2, 3, 32, 32, generator=_g),
           "labels": torch.randint(0, 19, (2, 32, 32), generator=_g)} for _ in range(2)]
t, total_steps = 5, 10
""",
    "## Train with Algorithm 1": """
from fishertune.data import SYNTHETIC_CLASSES, make_synthetic_dataset, train_transforms
from fishertune.models import build_model

seg = build_model("light", STAND_INS["facebook/dinov2-large"], num_labels=len(SYNTHETIC_CLASSES))
train = make_synthetic_dataset(16, size=(32, 32)).with_transform(train_transforms(crop_size=32, scale_range=(32, 32)))
""",
    "## Load and predict": _RUNS,
}


def _blocks() -> list:
    """`pytest.param(document, section, code)` for every python block, with the not-run mark honoured."""
    params = []
    for doc in DOCUMENTS:
        text = (REPO / doc).read_text(encoding="utf-8")
        for i, match in enumerate(FENCE.finditer(text)):
            before = text[: match.start()].splitlines()
            headings = [line for line in before if line.startswith("#")]
            section = headings[-1].strip() if headings else ""
            marks = ()
            not_run = NOT_RUN.search(before[-1]) if before else None
            if not_run:
                marks = pytest.mark.skip(reason=f"{doc}: not-run: {not_run.group(1)}")
            params.append(pytest.param(doc, section, match.group(1), id=f"{doc}#{i}", marks=marks))
    return params


def _adapt(section: str, code: str, stand_ins: dict[str, str]) -> str:
    for heading, old, new in SHRINK:
        if heading == section:
            assert old in code, f"SHRINK expects {old!r} in the block under {heading!r}: update SHRINK with the example"
            code = code.replace(old, new)
    for hub_id, local in stand_ins.items():
        code = code.replace(f'"{hub_id}"', repr(local))
    return code


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    """`HUB_STAND_INS` built: Hub id -> a local folder holding a tiny random model of the same family."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("hub_stand_ins")
    torch.manual_seed(0)
    tiny = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32,
                        patch_size=8)  # fmt: skip
    Dinov2Model(tiny).save_pretrained(root / HUB_STAND_INS["facebook/dinov2-large"])
    return {hub_id: str(root / name) for hub_id, name in HUB_STAND_INS.items()}


def test_every_document_with_examples_is_collected():
    """The collection sees README's examples (a broken fence pattern would silently test nothing)."""
    assert sum(1 for p in _blocks() if p.values[0] == "README.md") >= 3


def test_not_run_marks_are_few_and_give_a_reason():
    skipped = [p for p in _blocks() if p.marks]
    assert len(skipped) <= 2, [p.id for p in skipped]
    assert all(p.marks[0].kwargs["reason"].split("not-run:")[1].strip() for p in skipped)


@pytest.mark.parametrize(("doc", "section", "code"), _blocks())
def test_document_example_runs(doc, section, code, stand_ins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "doc_example", "STAND_INS": stand_ins, "REPO": str(REPO)}
    preamble = PREAMBLES.get(section, "")
    exec(compile(textwrap.dedent(preamble), f"<preamble of {section}>", "exec"), namespace)
    exec(compile(_adapt(section, code, stand_ins), f"<{doc}: {section}>", "exec"), namespace)
