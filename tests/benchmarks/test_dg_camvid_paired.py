"""benchmarks/dg_camvid_paired.py: paired-by-seed differences against hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from _benchmark_modules import load_benchmark

pd = load_benchmark("dg_camvid_paired")


def _run(folder, method, seed, targets):
    metrics = {"source_val": {"mIoU": 99.0}} | {f"target_{i}": {"mIoU": v} for i, v in enumerate(targets)}
    (folder / f"{method}__seed{seed}.json").write_text(json.dumps({"method": method, "seed": seed, "metrics": metrics}))


def test_paired_differences_mean_and_t_by_hand(tmp_path):
    runs = tmp_path / "runs" / "tagx"
    runs.mkdir(parents=True)
    for seed, (a, b) in enumerate([((40, 42), (40, 40)), ((41, 43), (40, 40)), ((43, 45), (41, 41))]):
        _run(runs, "random", seed, a)  # target means 41, 42, 44: source_val must not enter them
        _run(runs, "dr_fim_var", seed, b)  # 40, 40, 41
    _run(runs, "frozen", 0, (30, 30))  # one seed only: no t
    means = pd.target_means(runs)
    assert means["random"] == {0: 41.0, 1: 42.0, 2: 44.0}
    p = pd.paired(means["random"], means["dr_fim_var"])
    # diffs 1, 2, 3: mean 2, sample sd 1, t = 2 / (1 / sqrt 3)
    assert p["diffs"] == [1.0, 2.0, 3.0] and p["mean"] == 2.0 and p["t"] == pytest.approx(2 * math.sqrt(3))
    single = pd.paired(means["random"], means["frozen"])
    assert single["seeds"] == [0] and single["t"] is None
    pd.main(
        ["--tag", "tagx", "--out-dir", str(tmp_path), "--pairs", "random:dr_fim_var", "random:frozen", "lora:random"]
    )
    md = (tmp_path / "dg_camvid_paired_tagx.md").read_text()
    assert "| random - dr_fim_var | 0 1 2 | +1.00, +2.00, +3.00 | +2.00 | 3.5 |" in md
    assert "| random - frozen | 0 | +11.00 | +11.00 | n/a |" in md and "| lora" not in md
    assert "--pairs random:dr_fim_var random:frozen lora:random`" in md  # the command that remakes the file


def test_bad_pairs_and_folders_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pd.main(["--tag", "nope", "--out-dir", str(tmp_path)])
    assert "nope" in capsys.readouterr().err
    (tmp_path / "runs" / "t").mkdir(parents=True)
    with pytest.raises(SystemExit):
        pd.main(["--tag", "t", "--out-dir", str(tmp_path), "--pairs", "random-frozen"])
    assert "METHOD_A:METHOD_B" in capsys.readouterr().err
