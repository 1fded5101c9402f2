"""Library code reads as code: no issue numbers, dates, machine notes or history narration in `src/` (those belong in
commit messages; a measured constant names the benchmark that measures it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
FORBIDDEN = {
    "an issue number": re.compile(r"\bissues?\s*#?\s*\d+|\(issue\b|\bgh-\d+", re.I),
    "a date": re.compile(
        r"\b(19|20)\d\d-(0[1-9]|1[0-2])(-\d\d)?\b|\b(Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]* (19|20)\d\d\b"
    ),
    "a machine description": re.compile(r"\bVM\b|\bXeon\b|\bEPYC\b|\d-core\b"),
    "history narration": re.compile(r"kept for (the record|comparison)|\bused to (list|be|return|take)\b", re.I),
}
FILES = sorted(p for p in SRC.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".txt", ".json", ".yaml"})


def test_the_scan_sees_the_package():
    assert len(FILES) > 50 and any(p.name == "sparse_grad.py" for p in FILES)


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_no_source_file_mentions(what):
    hits = [f"{p.relative_to(SRC)}:{n}: {line.strip()}"
            for p in FILES for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if FORBIDDEN[what].search(line)]  # fmt: skip
    assert not hits, f"{what} in src/ (say it in the commit message instead):\n" + "\n".join(hits)


@pytest.mark.parametrize(("text", "what"), [
    ("Rein, VPT (issue 7): the baselines", "an issue number"), ("see issue 21's timings", "an issue number"),
    ("measured 2026-12-07", "a date"), ("on a 2-core Intel Xeon VM", "a machine description"),
    ("slow; kept for the record", "history narration"), ("Everything that used to list names", "history narration"),
])  # fmt: skip
def test_the_patterns_catch_what_they_name(text, what):
    assert FORBIDDEN[what].search(text)


def test_the_patterns_pass_ordinary_code():
    for text in ("Eq. 16's schedule", "torch 2.13 and peft 0.21", "ViT-L/16 at 512 px", "issued by the trainer"):
        assert not any(p.search(text) for p in FORBIDDEN.values()), text
