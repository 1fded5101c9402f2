"""benchmarks/grad_path_crossover.py: crossover() and fit() against hand-computed values, the compact path's blocks,
and main() of both paths at tiny sizes (real timings: the table agrees with the raw numbers; faked timings: the
printed constants are the hand fit, or the hand-computed smallest crossover)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from _benchmark_modules import load_benchmark

cx = load_benchmark("grad_path_crossover")


# -- crossover(): log-log interpolation of where sampled/dense crosses 1 ------------------------------------------
def test_crossover_interpolates_in_log_density_and_log_ratio():
    # ln(0.5) and ln(2) are symmetric around ln(1): halfway in log density, sqrt(0.01 * 0.1)
    assert cx.crossover([0.01, 0.1], [0.5, 2.0]) == pytest.approx(math.sqrt(0.001), rel=1e-12)
    # ln 2 / (ln 2 + ln 8) = 1/4 of the way: 0.01 * 10**0.25
    assert cx.crossover([0.01, 0.1], [0.5, 8.0]) == pytest.approx(0.01 * 10**0.25, rel=1e-12)
    # the first crossing, between the 2nd and 3rd density
    assert cx.crossover([0.001, 0.01, 0.1], [0.2, 0.5, 2.0]) == pytest.approx(math.sqrt(0.001), rel=1e-12)
    assert cx.crossover([0.01, 0.1], [0.5, 1.0]) == pytest.approx(0.1)  # reaches 1 exactly at the last density


def test_crossover_outside_the_measured_densities():
    assert cx.crossover([0.01, 0.1], [1.0, 2.0]) == 0.0  # sampled never faster
    assert cx.crossover([0.01, 0.1], [1.5, 0.5]) == 0.0
    assert cx.crossover([0.01, 0.1], [0.2, 0.9]) == math.inf  # sampled faster everywhere


# -- fit(): least squares of c = A - B * s -------------------------------------------------------------------
def test_fit_two_points_is_the_line_through_them():
    a, b = cx.fit([(0.01, 0.2), (0.02, 0.1)])
    assert (a, b) == (pytest.approx(0.3), pytest.approx(10.0))


def test_fit_least_squares_and_censored_points_left_out():
    # s = 0, 1, 2; c = 1, 2, 2: slope 0.5, intercept 5/3 - 0.5; (3, inf) and (4, 0) are outside the densities
    a, b = cx.fit([(0.0, 1.0), (1.0, 2.0), (2.0, 2.0), (3.0, math.inf), (4.0, 0.0)])
    assert a == pytest.approx(5 / 3 - 0.5)
    assert b == pytest.approx(-0.5)


def test_fit_degenerate_inputs():
    assert cx.fit([(0.01, math.inf), (0.02, 0.0)]) == (None, None)
    assert cx.fit([(0.01, 0.05), (0.02, math.inf)]) == (0.05, 0.0)
    assert cx.fit([(0.01, 0.05), (0.01, 0.07)]) == (pytest.approx(0.06), 0.0)  # one distinct s: no slope


def test_parse_shapes_and_paste_lines():
    assert cx.parse_shapes("384x384,1536x384") == [(384, 384), (1536, 384)]
    assert cx.paste_lines("cpu", 0.073142724, 0.88575888) == ["SAMPLED_CPU_A = 0.07314", "SAMPLED_CPU_B = 0.8858"]
    assert cx.paste_lines("cuda", 0.5, 0.0) == ["SAMPLED_CUDA_A = 0.5", "SAMPLED_CUDA_B = 0"]


# -- main() -----------------------------------------------------------------------------------------------
def _table(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| tokens")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows]


def test_main_tiny_table_agrees_with_raw_numbers(tmp_path, capsys):
    densities = [0.05, 0.5]
    out = tmp_path / "cx.md"
    res = cx.main(["--path", "sampled",
                   "--shapes", "64x32,32x96", "--tokens", "16", "--densities", "0.05,0.5", "--reps", "1",
                   "--threads", "1", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert out.read_text().endswith(printed)
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["densities"] == densities
    header = next(line for line in printed.splitlines() if line.startswith("| tokens"))
    assert header == "| tokens | weight (out x in) | 0.05 | 0.5 | crossover density |"
    table = _table(printed)
    assert len(table) == len(raw["rows"]) == len(res["rows"]) == 2
    for cells, r in zip(table, raw["rows"]):
        assert cells[:2] == [str(r["tokens"]), f"{r['out']}x{r['in']}"]
        assert len(cells) == 2 + len(densities) + 1
        for cell, t, q in zip(cells[2:-1], r["times"], r["ratios"]):
            m = re.fullmatch(r"(\S+) / (\S+) \((\S+)x\)", cell)
            assert m, cell
            assert m.group(1) == f"{t['sampled'] * 1e3:.3g}" and m.group(2) == f"{t['dense'] * 1e3:.3g}"
            assert q == pytest.approx(t["sampled"] / t["dense"])
            assert m.group(3) == f"{t['sampled'] / t['dense']:.2f}"
        expected = cx.crossover(densities, [t["sampled"] / t["dense"] for t in r["times"]])
        assert cells[-1] == f"{expected:.4g}"
    # constants: printed exactly when some crossover lies inside the densities
    a, b = cx.fit([(1 / r["out"] + 1 / r["in"], r["crossover"]) for r in raw["rows"]])
    if a is None:
        assert "no constants fitted" in printed and "SAMPLED_CPU_A" not in printed
    else:
        assert "SAMPLED_CPU_A = " + f"{a:.4g}" in printed.splitlines()


def test_main_prints_the_hand_fitted_constants(monkeypatch, capsys):
    # Faked timings (dense 1 s, sampled = ratio s): 64x32 crosses at sqrt(0.01 * 0.1), 32x32 a quarter of the way.
    ratios = {(64, 32): iter([0.5, 2.0]), (32, 32): iter([0.5, 8.0])}
    monkeypatch.setattr(
        cx, "measure", lambda path, go, x, idx, o, i, reps, sync: {"dense": 1.0, "sampled": next(ratios[(o, i)])}
    )
    res = cx.main(
        [
            "--path",
            "sampled",
            "--shapes",
            "64x32,32x32",
            "--tokens",
            "8",
            "--densities",
            "0.01,0.1",
            "--reps",
            "1",
            "--threads",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    s1, s2 = 1 / 64 + 1 / 32, 1 / 32 + 1 / 32
    c1, c2 = math.sqrt(0.001), 0.01 * 10**0.25  # 0.0316228, 0.0177828
    b = (c1 - c2) / (s2 - s1)  # 0.885759
    a = c1 + b * s1  # 0.0731427
    assert (res["a"], res["b"]) == (pytest.approx(a), pytest.approx(b))
    assert a == pytest.approx(0.0731427, rel=1e-5) and b == pytest.approx(0.885759, rel=1e-5)
    lines = printed.splitlines()
    block = lines[lines.index("```python") + 1 : lines.index("```python") + 3]
    assert block == ["SAMPLED_CPU_A = 0.07314", "SAMPLED_CPU_B = 0.8858"]
    assert [c[-1] for c in _table(printed)] == [f"{c1:.4g}", f"{c2:.4g}"]


def test_main_names_shapes_left_out_of_the_fit(monkeypatch, capsys):
    ratios = {(64, 32): iter([0.5, 2.0]), (32, 32): iter([0.5, 0.9])}  # 32x32: sampled faster at every density
    monkeypatch.setattr(
        cx, "measure", lambda path, go, x, idx, o, i, reps, sync: {"dense": 1.0, "sampled": next(ratios[(o, i)])}
    )
    res = cx.main(
        [
            "--path",
            "sampled",
            "--shapes",
            "64x32,32x32",
            "--tokens",
            "8",
            "--densities",
            "0.01,0.1",
            "--reps",
            "1",
            "--threads",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert "widen --densities): 32x32 at 8 tokens." in printed
    assert (res["a"], res["b"]) == (pytest.approx(math.sqrt(0.001)), 0.0)


def test_main_refuses_a_dtype_without_kernel_and_unsorted_densities():
    with pytest.raises(SystemExit):
        cx.main(["--path", "sampled", "--dtype", "bf16"])
    with pytest.raises(SystemExit):
        cx.main(["--path", "sampled", "--densities", "0.1,0.01"])


# -- the compact path -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("aspect", ["square", "rows", "cols"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_block_indices_fill_the_asked_block(aspect, fraction):
    out_f, in_f = 96, 64
    idx = cx.block_indices(out_f, in_f, fraction, aspect, torch.Generator().manual_seed(0))
    assert idx.dtype == torch.int32 and idx.unique().numel() == idx.numel()
    rows, cols = (idx.long() // in_f).unique().numel(), (idx.long() % in_f).unique().numel()
    want_r, want_c = {
        "square": (round(math.sqrt(fraction) * out_f), round(math.sqrt(fraction) * in_f)),
        "rows": (round(fraction * out_f), in_f),
        "cols": (out_f, round(fraction * in_f)),
    }[aspect]
    assert (rows, cols) == (want_r, want_c)
    assert idx.numel() == max(round(0.05 * rows * cols), rows, cols)  # 5% of the block, at least one per row/col


def test_compact_main_tiny_table_agrees_with_raw_numbers(tmp_path, capsys):
    out = tmp_path / "cx.md"
    res = cx.main(["--path", "compact",
                   "--shapes", "64x32", "--tokens", "16", "--fractions", "0.25,1", "--aspects", "square,cols",
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
        assert cells[-1] == f"{cx.crossover(r['blocks'], r['ratios']):.3g}"


def test_compact_main_prints_the_smallest_crossover(monkeypatch, capsys):
    # Faked timings (dense 1 s): square crosses halfway in log space between 0.25 and 1 (at 0.5), cols at 1.
    ratios = {"square": iter([0.5, 2.0]), "cols": iter([0.5, 1.0])}
    blocks = iter([0.25, 1.0, 0.25, 1.0])

    def fake(path, go, x, idx, o, i, reps, sync):
        aspect = "square" if len(seen) < 2 else "cols"
        seen.append(aspect)
        return {"dense": 1.0, "compact": next(ratios[aspect]), "block": next(blocks)}

    seen: list[str] = []
    monkeypatch.setattr(cx, "measure", fake)
    res = cx.main(["--path", "compact",
                   "--shapes", "64x32", "--tokens", "8", "--fractions", "0.25,1", "--aspects", "square,cols",
                   "--reps", "1", "--threads", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert res["threshold"] == pytest.approx(0.5)
    lines = printed.splitlines()
    assert lines[lines.index("```python") + 1] == "COMPACT_CPU_MAX = 0.5"


def test_compact_main_refuses_bad_fractions_and_aspects():
    with pytest.raises(SystemExit):
        cx.main(["--path", "compact", "--fractions", "0.5,0.1"])
    with pytest.raises(SystemExit):
        cx.main(["--path", "compact", "--fractions", "0,0.5"])
    with pytest.raises(SystemExit):
        cx.main(["--path", "compact", "--aspects", "diagonal"])


def test_path_is_required():
    with pytest.raises(SystemExit):
        cx.main(["--shapes", "64x32"])
