"""benchmarks/paper_scale.py at tiny size on CPU: the paper config's three phases and the full / Rein reference rows.

The tiny DINOv2 keeps the paper model's layout (patch 14, a position table for 70 px = 5x5) and the run uses a
60x88 crop, so the table is interpolated to a non-square 4x6 grid that is no multiple of the patch, as 518 -> 512 px
interpolates 37x37 to 36x36. The tables must agree with the raw numbers, and the extrapolations with the same
arithmetic done here by hand from the raw measurements and the YAML's 40k steps, T1 = 10% and T2 = 200.
"""

from __future__ import annotations

import json
import math

import pytest

from _benchmark_modules import load_benchmark
from _benchmark_modules import markdown_tables as _tables

ps = load_benchmark("paper_scale")
TINY = ["--model", "tiny", "--image-size", "60x88", "--batch", "2", "--threads", "1", "--estimation-batches", "3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ps") / "ps.md"
    ps.main([*TINY, "--out", str(out)])
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def _num(cell: str) -> float:
    return float(cell.rstrip("x%").replace(",", ""))


def test_the_config_is_the_papers(run):
    _, raw = run
    assert raw["config"] == dict(t1=4000, t2=200, t3=36000, max_steps=40000, batch=4, crop=[512, 512],
                                 criterion="dr_fim", estimator="variational", delta_min=None, delta_max=None,
                                 delta_min_count=3_042_000, delta_max_count=15_210_000)  # fmt: skip


def test_three_phases_and_reference_rows_ran(run):
    md, raw = run
    rows = raw["rows"]
    assert list(rows) == ["fishertune", "full", "rein"]
    ft = rows["fishertune"]
    assert list(ft["phases"]) == ["warmup", "estimation", "tuning"]
    assert ft["criterion"] == "dr_fim" and ft["image_size"] == [60, 88] and ft["batch"] == 2
    assert ft["mixed_precision"] == "no"
    assert [len(ft["phases"][p]["steps_s"]) for p in ft["phases"]] == [2, 0, 2]
    assert len(ft["phases"]["estimation"]["arrivals_s"]) == 3
    assert rows["full"]["criterion"] == "full" and rows["rein"]["criterion"] == "rein"
    assert all(list(r["phases"]) == ["tuning"] and len(r["phases"]["tuning"]["steps_s"]) == 2
               for m, r in rows.items() if m != "fishertune")  # fmt: skip
    assert all(math.isfinite(r["loss"]) for r in rows.values())
    # The paper's 15.21M entries are 5.49% of DINOv2-L's 11 h^2 x 24 targeted entries: the reduced model selects that
    # share; Eq. 16 reaches it at the last of the tuning steps, where the trainable set is the warm-up's (the
    # decoder) plus every selected entry.
    share = 15_210_000 / (11 * 1024**2 * 24)
    targeted = ft["phases"]["estimation"]["trainable"]
    assert abs(ft["allocated"] - share * targeted) <= 1 and ft["active_fraction"] == pytest.approx(share)
    assert ft["phases"]["tuning"]["trainable"] - ft["phases"]["warmup"]["trainable"] == ft["allocated"]
    assert rows["full"]["phases"]["tuning"]["trainable"] == rows["full"]["params"]
    assert ft["phases"]["warmup"]["trainable"] < rows["rein"]["phases"]["tuning"]["trainable"] < rows["full"]["params"]
    assert all(p["peak_bytes"] > 0 for r in rows.values() for p in r["phases"].values())
    assert "position table 5x5 interpolated to 4x6" in md and "crop 60x88, batch 2, fp32" in md


def test_table_layout(run):
    md, _ = run
    phase_t, ref_t = _tables(md)
    assert phase_t[""] == ["phase", "run here", "s per step or batch", "first s", "peak MB", "trainable entries",
                           "in the config", "extrapolated s", "share of the run"]  # fmt: skip
    assert list(phase_t)[1:] == ["1 warm-up (decoder)", "2 estimation (dr_fim, variational)", "3 sparse tuning", "all"]
    assert [phase_t[k][0] for k in list(phase_t)[1:4]] == ["2 steps", "3 batches", "2 steps"]
    assert [phase_t[k][5] for k in list(phase_t)[1:4]] == ["4,000 steps", "200 batches", "36,000 steps"]
    assert ref_t[""][0] == "method" and ref_t[""][6] == "run of 40,000 steps, s"
    assert list(ref_t)[1:] == ["full fine-tuning", "Rein (default config)", "FisherTune (phases 1-3)"]
    assert all(len(cells) == 8 for k, cells in phase_t.items() if k) and all(len(c) == 7 for k, c in ref_t.items() if k)


def test_extrapolations_by_hand(run):
    md, raw = run
    rows, d = raw["rows"], raw["derived"]
    ph = rows["fishertune"]["phases"]
    # By hand: the median of a phase's steps after its first is, with two steps, the second one.
    warm, tune = ph["warmup"]["steps_s"][1], ph["tuning"]["steps_s"][1]
    a0, a1, a2 = ph["estimation"]["arrivals_s"]
    first, per_batch = a1 - a0, a2 - a1  # three batches: the second interval is the only later one
    est = ph["estimation"]["phase_s"] + (200 - 3) * per_batch  # the measured phase, plus 197 batches more
    total = 4000 * warm + est + 36000 * tune
    expected = dict(warmup_step_s=warm, tuning_step_s=tune, est_first_batch_s=first, est_batch_s=per_batch,
                    est_total_s=est, warmup_total_s=4000 * warm, tuning_total_s=36000 * tune, run_total_s=total,
                    est_over_tuning=est / (36000 * tune),
                    est_fixed_s=ph["estimation"]["phase_s"] - first - 2 * per_batch)  # fmt: skip
    for k, v in expected.items():
        assert d[k] == pytest.approx(v, rel=1e-12), k
    for m in ("full", "rein"):
        step = rows[m]["phases"]["tuning"]["steps_s"][1]
        peak = rows[m]["phases"]["tuning"]["peak_bytes"] / ph["tuning"]["peak_bytes"]
        got = d[m]
        assert (got["step_s"], got["run_total_s"]) == pytest.approx((step, 40000 * step), rel=1e-12)
        assert (got["step_over_ft"], got["peak_over_ft"]) == pytest.approx((step / tune, peak), rel=1e-12)
        assert got["run_over_ft"] == pytest.approx(40000 * step / total, rel=1e-12)

    phase_t, ref_t = _tables(md)
    cells = {k: phase_t[k] for k in list(phase_t)[1:]}
    for (name, c), per, total_s in zip(cells.items(), (warm, per_batch, tune), (4000 * warm, est, 36000 * tune)):
        assert _num(c[1]) == pytest.approx(per, rel=1e-3), name
        assert _num(c[6]) == pytest.approx(total_s, rel=1e-3) and _num(c[7]) == pytest.approx(
            100 * total_s / total, abs=0.06
        )
    assert _num(cells["all"][6]) == pytest.approx(total, rel=1e-3)
    assert _num(cells["2 estimation (dr_fim, variational)"][2]) == pytest.approx(first, rel=1e-3)
    assert f"{est / (36000 * tune):.2%} of phase 3's 36,000 steps" in md
    for m, label in (("full", "full fine-tuning"), ("rein", "Rein (default config)")):
        c = ref_t[label]
        assert _num(c[1]) == pytest.approx(d[m]["step_s"], rel=1e-3) and _num(c[5]) == pytest.approx(
            40000 * d[m]["step_s"], rel=1e-3
        )
        assert [_num(c[i]) for i in (2, 4, 6)] == [
            round(d[m][k], 2) for k in ("step_over_ft", "peak_over_ft", "run_over_ft")
        ]
        assert _num(c[0]) == rows[m]["phases"]["tuning"]["trainable"]


def test_two_batch_estimation_reading():
    """With 2 batches there is one interval (the first batch); the second batch is read from its arrival to the
    end of the passes. Made-up numbers, so every value is known."""
    phases = {"warmup": {"steps_s": [9.0, 2.0], "peak_bytes": 5},
              "tuning": {"steps_s": [7.0, 4.0, 3.0], "peak_bytes": 8},
              "estimation": {"arrivals_s": [0.5, 6.5], "stats_s": 10.5, "phase_s": 20.0, "peak_bytes": 9}}  # fmt: skip
    rows = {"fishertune": {"phases": phases}, "full": {"phases": {"tuning": {"steps_s": [5.0, 6.0], "peak_bytes": 16}}}}
    d = ps.derive(rows, dict(t1=10, t2=100, t3=90, max_steps=100))
    assert (d["est_first_batch_s"], d["est_batch_s"], d["est_fixed_s"]) == (6.0, 4.0, 10.0)
    assert d["est_total_s"] == 20.0 + 98 * 4.0 and d["tuning_step_s"] == 3.5 and d["warmup_step_s"] == 2.0
    assert d["run_total_s"] == 10 * 2.0 + 412.0 + 90 * 3.5 and d["peak_bytes"] == 9
    assert d["full"] == dict(step_s=6.0, run_total_s=600.0, step_over_ft=6.0 / 3.5, peak_over_ft=2.0,
                             run_over_ft=600.0 / 747.0)  # fmt: skip


@pytest.mark.parametrize(
    "argv",
    [
        ["--estimation-batches", "1"],
        ["--warmup-steps", "0"],
        ["--methods", "full,rein"],
        ["--methods", "fishertune,lora"],
        ["--image-size", "0"],
        ["--config", "nope.yaml"],
    ],
)
def test_refused_arguments(argv, tmp_path):
    with pytest.raises(SystemExit) as err:
        ps.main(["--model", "tiny", "--out", str(tmp_path / "x.md"), *argv])
    assert err.value.code == 2 and not (tmp_path / "x.md").exists()


def test_bf16_autocast_at_the_tables_own_grid(tmp_path):
    """bf16 autocast (the CUDA setting; CPU autocast here) through the three phases, at the position table's own
    5x5 grid (70 px: no interpolation), batch 1."""
    out = tmp_path / "bf16.md"
    raw = ps.main(["--model", "tiny", "--image-size", "70", "--batch", "1", "--threads", "1", "--dtype", "bf16",
                   "--methods", "fishertune", "--out", str(out)])  # fmt: skip
    ft = raw["rows"]["fishertune"]
    assert raw["args"]["dtype"] == "bf16" and ft["mixed_precision"] == "bf16" and ft["image_size"] == [70, 70]
    assert math.isfinite(ft["loss"])
    assert list(ft["phases"]) == ["warmup", "estimation", "tuning"] and "Reference rows" not in out.read_text()
    assert "position table 5x5 (the crop's own grid)" in out.read_text()
