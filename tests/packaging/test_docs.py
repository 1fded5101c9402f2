"""What users read: the README is a short guide, and no document links outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/METHOD.md", "docs/ARCHITECTURE.md", "benchmarks/README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("name", DOCS)
def test_every_link_resolves_inside_the_repository(name):
    path = REPO / name
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # URLs and anchors
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{name} links outside the repository: {target}"
        assert resolved.exists(), f"{name} links a missing file: {target}"


def test_readme_is_a_short_guide_that_starts_with_the_two_commands():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    top = "\n".join(lines[:15])
    assert "    make demo " in top and "    make test " in top
    for section in ("## Install", "## Use it as a PEFT method", "## Train with Algorithm 1", "## Recipes",
                    "## Multi-GPU with accelerate", "## Load and predict", "## Results"):
        assert section in lines, section
    assert "benchmarks/README.md" in "\n".join(lines)


def test_method_doc_has_the_units_section():
    text = (REPO / "docs/METHOD.md").read_text(encoding="utf-8")
    assert "## Units and the exchange rate between F and dF" in text and "EstimationConfig" in text
