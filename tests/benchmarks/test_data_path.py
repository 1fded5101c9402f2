"""benchmarks/data_path.py at tiny size: the generated GTAV tree is read by the real loader with the paper
config's augmentation, and every derived number of the table is the raw measurement's (checked by hand)."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from _benchmark_modules import load_benchmark, markdown_tables

dp = load_benchmark("data_path")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp") / "dp.md"
    dp.main(
        [
            "--images",
            "12",
            "--image-size",
            "105x191",
            "--eval-size",
            "128x256",
            "--model",
            "tiny",
            "--threads",
            "1",
            "--max-workers",
            "1",
            "--step-rates",
            "1",
            "3.5",
            "--out",
            str(out),
        ]
    )
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def test_generated_tree_is_what_the_gtav_loader_reads(tmp_path):
    from fishertune.data import load_dataset

    dp.make_gtav_tree(tmp_path, 2, (21, 33))
    ds = load_dataset("gtav", str(tmp_path), "all")
    assert len(ds) == 2
    _, ids = dp.scene((21, 33), seed=0)
    label = np.asarray(ds[0]["label"])
    # Cityscapes ids -> train ids: road (7) -> 0, car (26) -> 13, unlabeled (0) -> 255.
    for cs_id, train_id in ((7, 0), (26, 13), (0, 255)):
        if (ids == cs_id).any():
            assert set(np.unique(label[ids == cs_id])) == {train_id}


def test_training_numbers(run):
    md, raw = run
    t = raw["train"]
    assert t["samples"] == 12 and t["crop"] == [512, 512] and raw["batch"] == 4  # the config's crop and batch
    assert t["per_worker_s"] == pytest.approx(statistics.median(t["sample_s"][1:]))
    assert t["per_worker_ips"] == pytest.approx(1 / t["per_worker_s"])
    rows = markdown_tables(md)[1]
    workers = {float(k): int(v[1]) for k, v in rows.items() if k}
    assert workers == {r: math.ceil(4 * r / t["per_worker_ips"]) for r in (1, 3.5)}
    assert float(markdown_tables(md)[0]["DataLoader, 1 worker(s), batch 4"][0]) == pytest.approx(
        t["loader_ips"]["1"], abs=0.006
    )


def test_eval_windows_follow_the_config(run):
    md, raw = run
    e = raw["eval"]
    # Rein's cityscapes protocol resizes 128x256 (keeping the ratio) to 512x1024; window 512, stride 341 ->
    # rows (512 - 512 + 340) // 341 + 1 = 1, cols (1024 - 512 + 340) // 341 + 1 = 3.
    assert e["resized"] == [512, 1024] and (e["window"], e["stride"]) == (512, 341)
    assert e["windows"] == 3 and e["finite"]
    assert e["per_window_s"] == pytest.approx(statistics.median(e["window_s"][1:]))
    row = markdown_tables(md)[2]["3"]
    assert float(row[0]) == pytest.approx(e["per_window_s"], abs=6e-4)
