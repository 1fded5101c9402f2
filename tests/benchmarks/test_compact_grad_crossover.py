"""benchmarks/compact_grad_crossover.py: the blocks it builds, and main() at tiny sizes (real timings: the table
agrees with the raw numbers; faked timings: the printed constant is the hand-computed smallest crossover)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from _benchmark_modules import load_benchmark

cg = load_benchmark("compact_grad_crossover")


@pytest.mark.parametrize("aspect", ["square", "rows", "cols"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_block_indices_fill_the_asked_block(aspect, fraction):
    out_f, in_f = 96, 64
    idx = cg.block_indices(out_f, in_f, fraction, aspect, torch.Generator().manual_seed(0))
    assert idx.dtype == torch.int32 and idx.unique().numel() == idx.numel()
    rows, cols = (idx.long() // in_f).unique().numel(), (idx.long() % in_f).unique().numel()
    want_r, want_c = {
        "square": (round(math.sqrt(fraction) * out_f), round(math.sqrt(fraction) * in_f)),
        "rows": (round(fraction * out_f), in_f),
        "cols": (out_f, round(fraction * in_f)),
    }[aspect]
    assert (rows, cols) == (want_r, want_c)
    assert idx.numel() == max(round(0.05 * rows * cols), rows, cols)  # 5% of the block, at least one per row/col


def test_main_tiny_table_agrees_with_raw_numbers(tmp_path, capsys):
    out = tmp_path / "cg.md"
    res = cg.main(["--shapes", "64x32", "--tokens", "16", "--fractions", "0.25,1", "--aspects", "square,cols",
                   "--reps", "1", "--threads", "1", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert out.read_text().endswith(printed)
    raw = json.loads(out.with_suffix(".json").read_text())
    rows = [line for line in printed.splitlines() if line.startswith("| 16 ")]
    assert len(rows) == len(raw["rows"]) == len(res["rows"]) == 2
    for line, r in zip(rows, raw["rows"]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == ["16", "64x32", r["aspect"]]
        for cell, t in zip(cells[3:-1], r["times"]):
            m = re.fullmatch(r"(\S+) / (\S+) \((\S+)x\)", cell)
            assert m.group(1) == f"{t['compact'] * 1e3:.3g}" and m.group(2) == f"{t['dense'] * 1e3:.3g}"
        assert cells[-1] == f"{cg.crossover(r['blocks'], r['ratios']):.3g}"


def test_main_prints_the_smallest_crossover(monkeypatch, capsys):
    # Faked timings (dense 1 s): square crosses halfway in log space between 0.25 and 1 (at 0.5), cols at 1.
    ratios = {"square": iter([0.5, 2.0]), "cols": iter([0.5, 1.0])}
    blocks = iter([0.25, 1.0, 0.25, 1.0])

    def fake(go, x, idx, o, i, reps, sync):
        aspect = "square" if len(seen) < 2 else "cols"
        seen.append(aspect)
        return {"dense": 1.0, "compact": next(ratios[aspect]), "block": next(blocks)}

    seen: list[str] = []
    monkeypatch.setattr(cg, "measure", fake)
    res = cg.main(["--shapes", "64x32", "--tokens", "8", "--fractions", "0.25,1", "--aspects", "square,cols",
                   "--reps", "1", "--threads", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert res["threshold"] == pytest.approx(0.5)
    lines = printed.splitlines()
    assert lines[lines.index("```python") + 1] == "COMPACT_CPU_MAX = 0.5"


def test_main_refuses_bad_fractions_and_aspects():
    with pytest.raises(SystemExit):
        cg.main(["--fractions", "0.5,0.1"])
    with pytest.raises(SystemExit):
        cg.main(["--fractions", "0,0.5"])
    with pytest.raises(SystemExit):
        cg.main(["--aspects", "diagonal"])
