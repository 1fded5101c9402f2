"""benchmarks/tuner_speed_selections.py: the paired-bootstrap statistics against hand-computed cases, and one tiny
interleaved run through main() (ViT-Ti dims with 2 blocks, 28 px) with a saved selection, whose rows must hold
every (selection, budget, vs) with a median inside its interval."""

from __future__ import annotations

import json

import pytest
from test_tuner_speed import _blocky_scores, worker_globals  # noqa: F401 (fixture)

from _benchmark_modules import load_benchmark

tss = load_benchmark("tuner_speed_selections")


def test_median_and_percentile_by_hand():
    assert tss.median([3.0, 1.0, 2.0]) == 2.0
    assert tss.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert tss.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert tss.percentile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0 and tss.percentile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert tss.percentile([0.0, 10.0], 0.025) == pytest.approx(0.25)


def test_paired_ratio_by_hand():
    # per-round ratios 0.5, 1.0, 1.5 -> median 1.0; every bootstrap median is one of the three
    r = tss.paired_ratio([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], boot=500, seed=0)
    assert r["median"] == 1.0
    assert 0.5 <= r["ci_low"] <= r["median"] <= r["ci_high"] <= 1.5
    assert r["ci_low"] < 1.0 < r["ci_high"]
    assert tss.paired_ratio([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], boot=500, seed=0) == r  # fixed seed: reproducible


def test_pairing_cancels_a_load_shared_by_the_round():
    """A round that is 100x slower for both methods does not move the ratio: the interval is the point 0.5."""
    a, b = [1.0, 10.0, 100.0, 3.0], [2.0, 20.0, 200.0, 6.0]
    assert tss.paired_ratio(a, b, boot=200) == {"median": 0.5, "ci_low": 0.5, "ci_high": 0.5}


def test_interval_contains_the_median_and_shrinks_with_more_rounds():
    def rounds(n):  # per-round ratio cycles 0.8, 0.9, 1.0, 1.1, 1.2 (median 1.0) at a drifting load
        ratios = [0.8, 0.9, 1.0, 1.1, 1.2]
        b = [1.0 + 0.1 * (i % 7) for i in range(n)]
        return [ratios[i % 5] * b[i] for i in range(n)], b

    widths = []
    for n in (10, 40, 160):
        r = tss.paired_ratio(*rounds(n), boot=1000, seed=0)
        assert r["ci_low"] <= r["median"] <= r["ci_high"]
        assert r["median"] == pytest.approx(1.0)
        widths.append(r["ci_high"] - r["ci_low"])
    assert widths[0] > widths[1] > widths[2]


def test_unpaired_input_is_refused():
    with pytest.raises(ValueError, match="equally many rounds"):
        tss.paired_ratio([1.0, 2.0], [1.0])


def test_fmt_says_when_an_interval_includes_one():
    assert tss.fmt({"median": 0.9, "ci_low": 0.8, "ci_high": 1.05}) == "0.90x [0.80, 1.05] (includes 1)"
    assert tss.fmt({"median": 0.9, "ci_low": 0.8, "ci_high": 0.95}) == "0.90x [0.80, 0.95]"


def test_tiny_run(tmp_path, worker_globals):  # noqa: F811
    scores = tmp_path / "fishertune_scores.safetensors"
    _blocky_scores(scores, hidden=192, inter=768)
    out = tmp_path / "sel.md"
    tss.main(["--layers", "2", "--image-size", "28", "--batch", "2", "--rounds", "3", "--warmup", "4",
              "--classes", "10", "--boot", "100", "--selection", f"blocky={scores}", "--out", str(out)])  # fmt: skip
    md, raw = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    keys = [(r["selection"], r["budget"], r["vs"]) for r in raw["rows"]]
    assert keys == [(s, d, vs) for s in ("uniform", "blocky") for d in (0.05, 0.01) for vs in ("full", "lora", "dense")]
    assert all(r["ci_low"] <= r["median"] <= r["ci_high"] and r["dispatch"] == "calibrate" for r in raw["rows"])
    assert [r["dispatch"] for r in raw["rows_auto"]] == ["auto"] * len(keys)
    assert all(len(t) == 3 for t in raw["times"].values()) and raw["threads"] == 1
    assert len(raw["load_before"]) == 3 and len(raw["load_after"]) == 3
    # the dense-forced models ran no sparse path; every FisherTune model reports its tuned layers' paths
    for name, p in raw["paths"].items():
        assert sum(p.values()) > 0
        if name.endswith("|dense"):
            assert p["sampled"] == p["compact"] == 0
    assert "800-dr_fim-s0" in raw["not_run"] and "Not run:" in md
    assert md.count("| blocky |") == 2 and md.count("| uniform |") == 2
    med = tss.paired_ratio(raw["times"]["blocky|0.05|calibrate"], raw["times"]["full"], 100, 0)["median"]
    assert f"| {med:.2f}x [" in md.split("| blocky | 5% |")[1].split("\n")[0]


def test_cli_refuses_bad_selections_and_short_warmup(tmp_path):
    for bad in (["--selection", "x"], ["--selection", f"uniform={tmp_path}"], ["--selection", "x=/no/such/file"],
                ["--warmup", "1"], ["--rounds", "1"]):  # fmt: skip
        with pytest.raises(SystemExit):
            tss.main([*bad, "--out", str(tmp_path / "x.md")])
    assert not (tmp_path / "x.md").exists()
