"""benchmarks/tuner_speed.py: one tiny run through main() (ViT-S dims with 2 blocks, 28 px, batch 2, one step, every
method, one delta, a profile) whose tables must agree with the raw numbers, plus unit tests of the driver's pieces."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from _benchmark_modules import load_benchmark
from _benchmark_modules import markdown_tables as _tables

ts = load_benchmark("tuner_speed")
W = ts.W

DELTA = 0.005  # low enough that the dispatch rule picks the sampled path on 384-wide layers
TINY = ["--layers", "2", "--image-size", "28", "--batch", "2", "--steps", "1", "--warmup", "0", "--rounds", "1",
        "--mem-steps", "1", "--delta-max", str(DELTA), "--classes", "10", "--threads", "1", "--profile",
        "--profile-rows", "5"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ts") / "ts.md"
    ts.main([*TINY, "--out", str(out)])
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def test_one_section_with_main_and_detail_tables(run):
    md, raw = run
    assert md.count("### 28 px") == 1
    main_t, detail_t = _tables(md)
    assert main_t[""] == ["method", "trainable entries", "step time s", "step / full", "step / LoRA", "peak MB",
                          "peak / full", "peak / LoRA", "state MB", "state / full"]  # fmt: skip
    names = [r["row"] for r in raw["rows"]]
    assert [r["method"] for r in raw["rows"]] == ["full", "lora", "shira", "fishertune", "fishertune-dense"]
    assert list(main_t)[1:] == names == list(detail_t)[1:]
    assert names[0] == "full fine-tuning" and names[1] == "LoRA r=16" and names[2].endswith("(0.5%)")
    assert names[3].startswith("FisherTune 0.5% (") and names[4] == "FisherTune 0.5%, dense grads forced"
    assert all(len(cells) == 9 for k, cells in main_t.items() if k)


def test_table_ratios_are_the_ratios_of_the_raw_numbers(run):
    md, raw = run
    main_t = _tables(md)[0]
    by = {r["method"]: r for r in raw["rows"]}
    full, lora = by["full"], by["lora"]
    for r in raw["rows"]:
        c = main_t[r["row"]]
        assert c[0] == f"{r['trainable']:,}"
        assert c[1] == f"{r['step_s']:.4g}"
        assert c[2] == f"{r['step_s'] / full['step_s']:.2f}x"
        assert c[3] == f"{r['step_s'] / lora['step_s']:.2f}x"
        assert c[4] == f"{r['peak_bytes'] / 2**20:.1f}"
        assert c[5] == f"{r['peak_bytes'] / full['peak_bytes']:.2f}x"
        assert c[6] == f"{r['peak_bytes'] / lora['peak_bytes']:.2f}x"
        assert c[7] == f"{r['state_bytes'] / 2**20:.2f}"
        assert c[8] == f"{r['state_bytes'] / full['state_bytes']:.3f}x"
        # the table's own rounded numbers give its ratios back, to rounding
        assert float(c[2][:-1]) == pytest.approx(
            float(c[1]) / float(main_t["full fine-tuning"][1]), abs=0.006, rel=1e-3
        )
    assert main_t["full fine-tuning"][2] == main_t["LoRA r=16"][3] == "1.00x"


def test_raw_numbers_are_consistent(run):
    _, raw = run
    for r in raw["rows"]:
        assert r["step_s"] == min(r["round_medians"]) and len(r["round_medians"]) == 1
        assert r["state_bytes"] == r["grad_bytes"] + r["optim_bytes"] + r["adapter_bytes"]
        assert r["image_size"] == 28 and r["peak_bytes"] > 0 and math.isfinite(r["loss"])
    by = {r["method"]: r for r in raw["rows"]}
    assert by["full"]["adapter_bytes"] == 0 and by["full"]["grad_enters_block"] == 0
    assert by["fishertune"]["trainable"] == by["fishertune-dense"]["trainable"]
    assert by["shira"]["delta_max"] == DELTA and by["full"]["delta_max"] is None


def test_fishertune_rows_run_the_path_they_claim(run):
    _, raw = run
    by = {r["method"]: r for r in raw["rows"]}
    ft, dense = by["fishertune"], by["fishertune-dense"]
    head = 384 * 10 + 10
    for r in (ft, dense):
        assert r["targeted_layers"] == r["tuned_layers"] == len(r["layers"]) == 10  # 2 blocks x q/k/v/fc1/fc2
        assert sum(ly["nnz"] for ly in r["layers"]) + head == r["trainable"]
    # dense forced: no layer ran a sparse path and no pattern was built
    assert dense["sampled_layers"] == dense["compact_layers"] == 0 and dense["pattern_bytes"] == 0
    assert all(ly["ran_path"] == ly["rule_path"] == "dense" for ly in dense["layers"])
    # auto: every layer ran the path the dispatch rule names, and at this density some are sampled
    assert [ly["ran_path"] for ly in ft["layers"]] == [ly["rule_path"] for ly in ft["layers"]]
    assert ft["sampled_layers"] > 0, "the dispatch rule picks no sampled layer at 0.5% on 384-wide layers"
    assert ft["sampled_layers"] + ft["compact_layers"] + ft["dense_layers"] == 10
    assert ft["pattern_bytes"] > 0
    counts = f"{ft['sampled_layers']} sampled, {ft['compact_layers']} compact, {ft['dense_layers']} dense of 10 layers"
    assert f"({counts})" in ft["row"]
    assert ft["lowest_tuned_block"] == 0 and ft["grad_enters_block"] == 1 and ft["blocks"] == 2


def test_profile_section(run):
    md, raw = run
    assert "### Profile of one fishertune 0.5% step, 28 px" in md
    assert "Self CPU time total" in md and "Top 5 ops by self CPU time" in md
    (prof,) = raw["profiles"]
    assert set(prof["phases_s"]) == {"zero_grad", "forward", "backward", "optimizer"}
    assert prof["method"] == "fishertune" and prof["delta_max"] == DELTA


# -- unit tests of the driver -------------------------------------------------------------------------------
def _driver_args(**kw):
    base = dict(model="vit-s14", layers=2, steps=3, warmup=1, mem_steps=2, batch=4, threads=1, classes=7,
                profile_rows=9, device="cpu", dtype="bf16", scores="")  # fmt: skip
    return argparse.Namespace(**dict(base, **kw))


def test_worker_gets_every_argument_it_requires():
    args = _driver_args()
    cmd = ts.worker_cmd(args, "fishertune-dense", "mem", 448, 0.01)
    parsed = W.parser().parse_args(cmd[2:])
    assert (parsed.method, parsed.mode, parsed.image_size, parsed.delta_max) == ("fishertune-dense", "mem", 448, 0.01)
    for k in W.FORWARDED:
        assert getattr(parsed, k) == getattr(args, k), k
    required = {a.dest for a in W.parser()._actions if a.required}
    assert required == set(W.FORWARDED) | {"method", "mode", "image_size", "delta_max"}


def _row(step, peak, state, **kw):
    return dict(trainable=1, step_s=step, peak_bytes=peak * 2**20, state_bytes=state * 2**20, **kw)


def test_table_hand_computed():
    ft = dict(sampled_layers=3, compact_layers=1, dense_layers=1, tuned_layers=5)
    rows = {
        ("full", None): _row(2.0, 100, 40),
        ("lora", None): _row(1.0, 50, 4),
        ("fishertune", 0.05): _row(1.5, 40, 2, **ft),
    }
    t = ts.table(rows, list(rows))
    line = next(x for x in t.splitlines() if x.startswith("| FisherTune 5% ("))
    assert line == (
        "| FisherTune 5% (3 sampled, 1 compact, 1 dense of 5 layers) | 1 | 1.5 | 0.75x | 1.50x | 40.0 | 0.40x | 0.80x "
        "| 2.00 | 0.050x |"
    )
    rows[("lora", None)]["peak_bytes"] = 0  # an RSS delta of 0 gives no ratio rather than a crash
    assert "| n/a |" in ts.table(rows, list(rows))


def test_check_grad_paths():
    ok = dict(sampled_layers=0, compact_layers=0, layers=[dict(name="a", rule_path="dense", ran_path="dense")])
    ts.check_grad_paths("fishertune-dense", ok)
    ts.check_grad_paths("fishertune", dict(ok, layers=[dict(name="a", rule_path="compact", ran_path="compact")]))
    ts.check_grad_paths("lora", {})
    for k in ("sampled_layers", "compact_layers"):
        with pytest.raises(SystemExit, match="dense was forced"):
            ts.check_grad_paths("fishertune-dense", dict(ok, **{k: 1}))
    with pytest.raises(SystemExit, match="differs from values_grad_path"):
        ts.check_grad_paths("fishertune", dict(ok, layers=[dict(name="a", rule_path="sampled", ran_path="dense")]))
    with pytest.raises(SystemExit, match="differs from values_grad_path"):
        ts.check_grad_paths("fishertune", dict(ok, layers=[dict(name="a", rule_path="dense", ran_path="compact")]))


def _blocky_scores(path, blocks=2, hidden=384, inter=1536):
    """Scores for ViT-S layers named as a ViT-Ti/16 run saves them, high only in a fifth of fc2's input columns
    and a tenth of q's rows: those blocks hold more entries than a 5% budget, so it falls inside them."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    shapes = {"attention.q_proj": (hidden, hidden), "attention.k_proj": (hidden, hidden),
              "attention.v_proj": (hidden, hidden), "mlp.fc1": (inter, hidden), "mlp.fc2": (hidden, inter)}  # fmt: skip
    out = {}
    for b in range(blocks):
        for leaf, shape in shapes.items():
            v = torch.rand(shape, generator=g)
            if leaf == "mlp.fc2":
                v[:, : inter // 5] += 10
            if leaf == "attention.q_proj":
                v[: hidden // 10] += 10
            out[f"backbone.layers.{b}.{leaf}"] = v
    save_file(out, str(path))


@pytest.fixture
def worker_globals():
    """The worker sets torch's thread count and the sparse-gradient mode for its process; run in this one, it
    must leave both as it found them (a later test's bitwise resume compares against another process)."""
    import torch

    from fishertune.tuner import sparse_grad

    threads, mode = torch.get_num_threads(), sparse_grad.get_sparse_grad_mode()
    yield
    torch.set_num_threads(threads)
    sparse_grad.set_sparse_grad_mode(mode)


def test_worker_selects_by_saved_scores_and_runs_the_compact_gemm(tmp_path, worker_globals):
    scores = tmp_path / "fishertune_scores.safetensors"
    _blocky_scores(scores)
    args = _driver_args(layers=2, steps=1, warmup=0, mem_steps=1, batch=1, dtype="fp32", scores=str(scores))
    cmd = ts.worker_cmd(args, "fishertune", "mem", 28, 0.05)
    r = W.measure(W.parser().parse_args(cmd[2:]))
    by = {ly["name"].split("layer.", 1)[1]: ly for ly in r["layers"]}
    assert by["0.mlp.fc2"]["nnz"] and by["0.mlp.fc2"]["block_fraction"] == pytest.approx(0.2, abs=0.01)
    assert by["0.mlp.fc2"]["ran_path"] == by["0.mlp.fc2"]["rule_path"] == "compact"
    assert by["1.attention.q_proj"]["ran_path"] == "compact" and by["1.attention.q_proj"]["block_fraction"] <= 0.1
    assert by["1.mlp.fc1"]["nnz"] == 0 and by["1.mlp.fc1"]["ran_path"] == "none"
    assert [ly["ran_path"] for ly in r["layers"]] == [ly["rule_path"] for ly in r["layers"]]
    assert 0 < r["block_share"] < 1
    bad = tmp_path / "other.safetensors"
    _blocky_scores(bad, hidden=192, inter=768)  # a ViT-Ti scores file for a ViT-S model
    with pytest.raises(SystemExit, match=r"no score of shape \(384, 384\) for .*layer.0.attention.q_proj"):
        W.measure(
            W.parser().parse_args(ts.worker_cmd(dict_args(args, scores=str(bad)), "fishertune", "mem", 28, 0.05)[2:])
        )


def dict_args(args, **kw):
    return argparse.Namespace(**dict(vars(args), **kw))


def test_notes_check_where_backward_stops():
    ft = dict(trainable=100, step_s=1.0, sampled_layers=1, compact_layers=0, tuned_layers=2, targeted_layers=4,
              pattern_bytes=0, blocks=4, block_share=0.5)  # fmt: skip
    good = ts.notes({("fishertune", 0.05): dict(ft, lowest_tuned_block=2, grad_enters_block=3)}, [0.05])
    assert "expected 3" in good[0] and "NOT" not in good[0]
    bad = ts.notes({("fishertune", 0.05): dict(ft, lowest_tuned_block=2, grad_enters_block=1)}, [0.05])
    assert "NOT as expected" in bad[0]
    last = ts.notes({("fishertune", 0.05): dict(ft, lowest_tuned_block=3, grad_enters_block=None)}, [0.05])
    assert "expected None" in last[0] and "NOT" not in last[0]


def test_shira_rank_and_pct():
    shapes = [(384, 384)] * 3 + [(1536, 384), (384, 1536)]  # r * 6144 entries
    assert W.shira_rank(shapes, 6144 * 13 + 100) == 13
    assert W.shira_rank(shapes, 6144 * 13 + 4000) == 14
    assert W.shira_rank(shapes, 10) == 1
    assert (ts.pct(0.05), ts.pct(0.01), ts.pct(0.005)) == ("5%", "1%", "0.5%")


def test_cli_refuses_unknown_methods_and_empty_rounds(tmp_path):
    for bad in (["--methods", "full,dora"], ["--profile", "sparse"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            ts.main([*bad, "--out", str(tmp_path / "x.md")])
    assert not (tmp_path / "x.md").exists()
