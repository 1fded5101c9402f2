"""benchmarks/dg_camvid.py without training: recipe tags, resumable grid bookkeeping, aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _benchmark_modules import load_benchmark

dg = load_benchmark("dg_camvid")


def _args(*extra):
    import argparse

    ns = argparse.Namespace(quick="--quick" in extra, steps=None, estimation_batches=None, eval_every=None,
                            fisher_type="true", corruptions=list(dg.DEFAULT_CORRUPTIONS), extra=None,
                            root=dg.DEFAULT_ROOT, backbone=dg.DEFAULT_BACKBONE, workers=0)  # fmt: skip
    return ns


def _fake_run(out: Path, method: str, seed: int, base: float):
    targets = ["source_val", "target_day_new_route", "target_dusk", "target_fog", "target_dark"]
    metrics = {t: {"mIoU": base + i + seed, "aAcc": 90.0, "IoU": {}} for i, t in enumerate(targets)}
    (out / f"{method}__seed{seed}.json").write_text(json.dumps({
        "method": method, "seed": seed, "metrics": metrics, "train_seconds": 1.0,
        "machine": {"cpu": "x", "cpu_count": 2},
        "selection": None, "trainable_backbone_entries": 0.0,
    }))  # fmt: skip


def test_recipe_defaults_and_tags():
    quick, full = dg.recipe_from_args(_args("--quick")), dg.recipe_from_args(_args())
    assert (quick["steps"], quick["eval_every"], full["steps"], full["eval_every"]) == (120, 3, 800, 1)
    assert full["crop_size"] == [224, 304] and full["taps"] == [3, 6, 9, 12] and full["batch_size"] == 8
    assert (full["backbone_lr"], full["decoder_lr"], full["delta_max"]) == (1e-4, 1e-3, 0.05)
    full["default"], quick["default"] = True, True
    # DR-FIM version 2 (issue 16) runs in its own folder; version-1 recipes keep theirs
    assert dg.recipe_tag(full) == "full_v2" and dg.recipe_tag(quick) == "quick_v2"
    v1 = {k: v for k, v in full.items() if k != "dr_fim_version"}
    assert dg.recipe_tag(v1) == "full"
    other = dict(full, default=False, extra={"gamma": 1e-12})
    assert dg.recipe_tag(other).startswith("full_800steps_") and dg.recipe_tag(other) != dg.recipe_tag(
        dict(other, extra={})
    )


def test_default_protocol_slides_training_crops_and_the_whole_image_protocol_keeps_its_results_folder():
    full = dg.recipe_from_args(_args())
    assert full["eval_window"] == full["crop_size"] == [224, 304] and full["eval_stride"] == [149, 203]
    # two overlapping windows per axis reach past a 360x480 image (slide mode clamps the last one to the border)
    assert [s + w for s, w in zip(full["eval_stride"], full["eval_window"])] == [373, 507]
    whole = dg.recipe_from_args(argparse_ns(eval_window=[368, 480]))
    assert whole["eval_window"] == [368, 480] and "eval_stride" not in whole  # one window: stride = window
    # the 800-step, every-3rd-image grid of the README was made with this protocol; its folder must not move
    # (it predates DR-FIM version 2, whose runs go to a folder of their own)
    old = dict(dg.recipe_from_args(argparse_ns(eval_window=[368, 480], steps=800, eval_every=3)), default=False)
    assert dg.recipe_tag({k: v for k, v in old.items() if k != "dr_fim_version"}) == "full_800steps_692c23"
    assert dg.recipe_tag(old) != "full_800steps_692c23"


def test_results_folder_does_not_depend_on_where_the_checkout_and_shared_live():
    here = dict(dg.recipe_from_args(_args()), default=False)
    # Two layouts that differ from each other wherever this checkout lives (CI's is /check/work).
    dev, ci = (dict(here, root=f"{top}/shared/data/camvid", backbone=f"{top}/shared/models/vit-tiny-patch16-224-augreg")
               for top in ("/work", "/check/work"))  # fmt: skip
    assert dg.recipe_tag(here) == dg.recipe_tag(dev) == dg.recipe_tag(ci)
    # another dataset copy outside ../shared is another recipe
    assert dg.recipe_tag(dict(here, root="/data/camvid")) != dg.recipe_tag(here)


def argparse_ns(**kw):
    ns = _args()
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_aggregate_mean_std_and_outputs(tmp_path):
    recipe = dict(dg.recipe_from_args(_args()), default=True, command="python benchmarks/dg_camvid.py")
    out = dg.runs_dir(recipe, tmp_path)
    out.mkdir(parents=True)
    for seed in (0, 1, 2):
        _fake_run(out, "frozen", seed, 40.0)
        _fake_run(out, "dr_fim_var", seed, 42.0)
    summary = dg.aggregate(recipe, tmp_path)
    row = summary["methods"]["dr_fim_var"]["mIoU"]
    assert row["source_val"]["mean"] == pytest.approx(43.0) and row["source_val"]["std"] == pytest.approx(1.0)
    # mean over the 4 targets (day 43, dusk 44, fog 45, dark 46) + seed offset 1
    assert row["mean_targets"]["mean"] == pytest.approx(45.5)
    assert row["mean_clean_targets"]["mean"] == pytest.approx(44.5) and row["mean_corrupted"]["mean"] == pytest.approx(
        46.5
    )
    for ext in ("json", "md", "png"):  # the version-1 table keeps the bare name dg_camvid.*
        assert (tmp_path / f"dg_camvid_full_v2.{ext}").is_file()
    md = (tmp_path / "dg_camvid_full_v2.md").read_text()
    assert "43.0 ± 1.0" in md and "frozen backbone" in md


def test_grid_methods_are_trainer_methods_or_criteria_with_labels():
    from fishertune.fisher import criterion_names
    from fishertune.training import BASELINE_METHODS

    assert dg.METHODS["vqt"] == {"method": "vqt"}
    for name, opts in dg.ALL_METHODS.items():
        # baselines by method (no criterion), FisherTune's runs by a registered criterion (method left at sparse)
        assert (opts.get("method") in BASELINE_METHODS and "criterion" not in opts) or (
            "method" not in opts and opts["criterion"] in criterion_names()
        ), name
        assert name in dg.LABELS and name in dg.DISPLAY_ORDER, name


def test_tables_name_the_budget_overrides_and_protocol_the_recipe_ran_with(tmp_path):
    recipe = dict(dg.recipe_from_args(_args()), command="python benchmarks/dg_camvid.py")
    recipe["extra"] = {"delta_max": 0.1}
    out = dg.runs_dir(recipe, tmp_path)
    out.mkdir(parents=True)
    _fake_run(out, "random", 0, 40.0)
    _fake_run(out, "dr_fim_var", 0, 42.0)
    summary = dg.aggregate(recipe, tmp_path)
    assert summary["methods"]["random"]["label"] == "random 10%"
    assert summary["methods"]["dr_fim_var"]["label"] == "DRF 10% (variational) = FisherTune"
    md = dg.markdown(summary)
    assert "5%" not in md and '`{"delta_max": 0.1}`' in md
    assert "Scored on every evaluation image, sliding windows 224x304, stride 149x203." in md
    # the default budget keeps the 5% labels and prints no overrides line
    summary["recipe"] = dict(recipe, extra={}, eval_every=3, eval_window=[368, 480], eval_stride=None)
    assert dg.row_label("random", summary["recipe"]) == "random 5%"
    md = dg.markdown(summary)
    assert (
        "--extra" not in md
        and "1 in 3 evaluation images, windows 368x480 without overlap (the whole padded image)" in md
    )


def test_table_names_every_machine_its_runs_came_from(tmp_path):
    recipe = dict(dg.recipe_from_args(_args()), default=True, command="python benchmarks/dg_camvid.py")
    out = dg.runs_dir(recipe, tmp_path)
    out.mkdir(parents=True)
    _fake_run(out, "frozen", 0, 40.0)
    _fake_run(out, "random", 0, 41.0)
    run = json.loads((out / "random__seed0.json").read_text())
    run["machine"] = {"cpu": "Intel Xeon", "cpu_count": 2, "torch": "2.13.0+cpu", "torch_threads": 1}
    (out / "random__seed0.json").write_text(json.dumps(run))
    md = dg.markdown(dg.aggregate(recipe, tmp_path))
    assert md.rstrip().endswith(
        "Machines (runs of this table came from each): Intel Xeon (2 CPUs, torch 2.13.0+cpu, "
        "1 threads per run); x (2 CPUs, torch None, ? threads per run)."
    )
    (out / "random__seed0.json").unlink()
    md = dg.markdown(dg.aggregate(recipe, tmp_path))
    assert md.rstrip().endswith("Machine: x (2 CPUs, torch None, ? threads per run).")
