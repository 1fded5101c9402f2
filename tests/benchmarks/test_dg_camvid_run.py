"""benchmarks/dg_camvid.py end to end on a fake CamVid tree and a tiny random ViT: one run, then re-scoring it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from _benchmark_modules import load_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_trees import ids_grid, write_image, write_label  # noqa: E402

from models.conftest import TINY_M2F  # noqa: E402

dg = load_benchmark("dg_camvid")
ev = sys.modules["dg_camvid_eval"]

SPLITS = {"source_train": [f"train/0006R0_f0{i}" for i in range(4)], "source_val": ["val/0016E5_0"],
          "target_day_new_route": ["test/Seq05VD_f0", "test/Seq05VD_f1"],
          "target_dusk": ["train/0001TP_0"]}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import transformers as T

    tmp = tmp_path_factory.mktemp("dg")
    root, vit = tmp / "camvid", tmp / "vit"
    for i, stem in enumerate(s for stems in SPLITS.values() for s in stems):
        write_image(root / "images" / f"{stem}.jpg", h=360, w=480, seed=i)  # CamVid's size: the recipe assumes it
        write_label(root / "labels" / f"{stem}.png", np.roll(ids_grid(range(12), h=360, w=480), i, axis=1))  # 11 = void
    (root / "splits.json").write_text(json.dumps(SPLITS))
    cfg = T.ViTConfig(hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=32, patch_size=16)
    T.ViTModel(cfg, add_pooling_layer=False).save_pretrained(vit)
    T.ViTImageProcessor().save_pretrained(vit)
    ns = argparse.Namespace(quick=False, steps=6, estimation_batches=2, eval_every=None, fisher_type="true",
                            corruptions=["dark"], extra=None, root=str(root), backbone=str(vit), workers=0)  # fmt: skip
    recipe = dict(dg.recipe_from_args(ns), batch_size=2, corruption_cache=str(tmp / "cache"), default=False)
    runs = dg.runs_dir(recipe, tmp / "results")
    runs.mkdir(parents=True)
    (runs / "recipe.json").write_text(json.dumps(recipe))
    result = dg.run_one(recipe, "dr_fim_var", 0, runs / "dr_fim_var__seed0.json", threads=None)
    return recipe, runs, result


def test_a_run_writes_its_scores_selection_and_model(trained):
    recipe, runs, result = trained
    assert json.loads((runs / "dr_fim_var__seed0.json").read_text())["metrics"] == result["metrics"]
    assert set(result["metrics"]) == {"source_val", "target_day_new_route", "target_dusk", "target_dark"}
    for name, m in result["metrics"].items():
        assert 0.0 <= m["mIoU"] <= 100.0 and len(m["IoU"]) == 11, name
    assert result["phases"] == {"T1": 1, "T2": 2, "T3": 5}  # 10% warm-up of 6 steps rounds up to 1
    assert result["selection"]["per_block"] and (runs / "dr_fim_var__seed0_work" / ev.FINAL_MODEL).is_file()


def test_rescoring_the_saved_model_reproduces_the_run_and_follows_a_new_protocol(trained, tmp_path):
    recipe, runs, result = trained
    same = ev.rescore(runs, recipe, "dr_fim_var", 0, tmp_path / "same.json")
    for name, m in result["metrics"].items():
        assert same["metrics"][name]["mIoU"] == pytest.approx(m["mIoU"], abs=1e-9), name
    assert same["selection"] == result["selection"] and same["rescored_from"].endswith("dr_fim_var__seed0.json")
    whole = ev.rescore(runs, dict(recipe, eval_window=[368, 480], eval_stride=[368, 480]), "dr_fim_var", 0,
                       tmp_path / "whole.json")  # fmt: skip
    assert whole["recipe"]["eval_window"] == [368, 480]
    assert any(abs(whole["metrics"][n]["mIoU"] - m["mIoU"]) > 1e-6 for n, m in result["metrics"].items())


def test_rescoring_refuses_a_recipe_that_trains_another_model(trained, tmp_path):
    recipe, runs, _ = trained
    with pytest.raises(ValueError, match=r"differ in \['backbone_lr', 'steps'\]"):
        ev.rescore(runs, dict(recipe, steps=7, backbone_lr=1.0), "dr_fim_var", 0, tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="no saved model"):
        ev.load_final_model(tmp_path)


@pytest.mark.parametrize("method", ["full", "lora", "rein", "vpt", "adaptformer", "vqt", "dr_fim_q99_var"])
def test_every_kind_of_trained_model_can_be_rescored(trained, method, tmp_path, monkeypatch):
    from transformers.utils import output_capturing

    import fishertune.fisher

    # LoRA is a PEFT wrapper; Rein, VPT, AdaptFormer and VQT add modules run by closures hooked into the backbone;
    # dr_fim_q99_var is a variant set through the trainer's arguments (the package's estimator is never replaced)
    package_estimator = fishertune.fisher.estimate_scores
    recipe, runs, _ = trained
    result = dg.run_one(dict(recipe, steps=2), method, 0, tmp_path / f"{method}__seed0.json", threads=None)
    assert result["final_model"] is not None
    # the swap ends with the run: later runs in this process (and the demo test) get the package's estimator
    assert fishertune.fisher.estimate_scores is package_estimator
    (tmp_path / "recipe.json").write_text(json.dumps(dict(recipe, steps=2)))
    # as in a fresh process that only loads the pickled model: no model class has registered its outputs
    monkeypatch.setattr(output_capturing, "_CAN_RECORD_REGISTRY", output_capturing._CanRecordRegistry())
    again = ev.rescore(tmp_path, dict(recipe, steps=2), method, 0, tmp_path / "again.json")
    for name, m in result["metrics"].items():
        assert again["metrics"][name]["mIoU"] == pytest.approx(m["mIoU"], abs=1e-9), (method, name)


def test_rescore_grid_fills_the_new_protocols_folder_and_aggregates(trained, capsys):
    recipe, runs, result = trained
    whole = dict(recipe, eval_window=[368, 480], eval_every=2)
    whole.pop("eval_stride")
    out = dg.runs_dir(whole, runs.parents[1])
    out.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(threads=None, rescore_from=runs.name, out_dir=str(runs.parents[1]))
    modelless = runs / "random__seed0.json"  # a finished run from before models were saved
    modelless.write_text((runs / "dr_fim_var__seed0.json").read_text())
    try:
        dg._rescore_grid(args, whole, out, [("random", 0), ("dr_fim_var", 0), ("frozen", 0)])
    finally:
        modelless.unlink()
    printed = capsys.readouterr().out
    assert "frozen seed 0: not in" in printed and "random seed 0: no saved model" in printed
    assert not (out / "random__seed0.json").exists()
    new = json.loads((out / "dr_fim_var__seed0.json").read_text())
    assert (
        new["rescored_from"].endswith(f"{runs.name}/dr_fim_var__seed0.json")
        and new["train_seconds"] == result["train_seconds"]
    )
    summary = json.loads((runs.parents[1] / f"dg_camvid_{out.name}.json").read_text())
    assert summary["methods"]["dr_fim_var"]["mIoU"]["target_dark"]["mean"] == new["metrics"]["target_dark"]["mIoU"]
    assert not (out / "frozen__seed0.json").exists()


def test_the_mask2former_head_trains_scores_and_names_itself(trained, tmp_path, monkeypatch):
    """`--head mask2former` (gpu_check.sh's CamVid step): the paper's head through the same run, its own folder.
    The head is shrunk here (its default size takes minutes per step on a CPU; the run's path is the same)."""
    import fishertune.experiment.build as build
    from fishertune.models import PyramidMask2Former

    real = build.build_model
    monkeypatch.setattr(build, "build_model", lambda head, *a, **kw: real(head, *a, **(kw | TINY_M2F)))
    recipe, runs, _ = trained
    m2f = dict(recipe, model="mask2former", steps=1, estimation_batches=1)
    out = dg.runs_dir(m2f, tmp_path)
    assert out.name != runs.name
    trainer, *_ = dg.build_trainer(m2f, "dr_fim_var", 0, tmp_path / "w")
    assert isinstance(trainer.model.get_base_model(), PyramidMask2Former)
    out.mkdir(parents=True)
    result = dg.run_one(m2f, "dr_fim_var", 0, out / "dr_fim_var__seed0.json", threads=None)
    for name, m in result["metrics"].items():
        assert 0.0 <= m["mIoU"] <= 100.0 and len(m["IoU"]) == 11, name
    assert result["phases"] == {"T1": 0, "T2": 1, "T3": 1} and result["selection"]["per_block"]
    assert "+ mask2former head, 1 steps" in dg.markdown(dg.aggregate(m2f, tmp_path)).splitlines()[0]
    assert "+ light head, 6 steps" in dg.markdown(dg.aggregate(recipe, runs.parents[1])).splitlines()[0]


def test_an_unknown_head_is_refused_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        dg.main(["--head", "segformer", "--seeds", "0", "--methods", "frozen", "--out-dir", str(tmp_path)])
    assert exit_.value.code == 2 and "head must be one of" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
