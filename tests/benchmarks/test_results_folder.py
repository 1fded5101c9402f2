"""benchmarks/ is a harness: README.md reads the current result of each benchmark in at most ~300 lines, names
every script and every file of results/, and every result it names exists (superseded results live in git's
history, not in results/)."""

from __future__ import annotations

import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
README = (BENCH / "README.md").read_text(encoding="utf-8")
NAMED = set(re.findall(r"\b([A-Za-z0-9_]+\.(?:md|json|png|py|sh))\b", README))


def test_readme_is_short_and_undated():
    assert len(README.splitlines()) <= 300
    assert not re.search(r"\bissues?\s*#?\s*\d+|\(issue\b", README, re.I), "issue numbers belong in commit messages"
    assert not re.search(r"\b20\d\d-\d\d(-\d\d)?\b", README), "dates belong in commit messages"


def test_every_script_is_named():
    missing = sorted(p.name for p in BENCH.glob("*.py") if p.name not in NAMED)
    missing += [p.name for p in BENCH.glob("*.sh") if p.name not in NAMED]
    assert not missing, f"benchmarks/README.md does not name {missing}"


def test_every_result_is_named_and_every_named_result_exists():
    results = sorted(p for p in (BENCH / "results").iterdir() if p.suffix in (".md", ".json", ".png"))
    # a .json or .png beside a named .md is that table's raw numbers or chart
    unnamed = [p.name for p in results if p.name not in NAMED and p.with_suffix(".md").name not in NAMED]
    assert not unnamed, f"results/ holds files benchmarks/README.md does not read (superseded? delete them): {unnamed}"
    named_results = {
        n for n in NAMED if n.endswith((".md", ".json", ".png")) and n != "README.md" and "METHOD" not in n
    }
    absent = sorted(n for n in named_results if not (BENCH / "results" / n).is_file())
    assert not absent, f"benchmarks/README.md names results that do not exist: {absent}"
