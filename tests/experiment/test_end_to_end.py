"""The demo config end to end (shortened by --quick), then evaluate.py and predict.py on its output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from fishertune.data import SYNTHETIC_CLASSES, generate_sample

from ._helpers import quick_demo_argv, recipe_main

ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
RUN_FILES = {"metrics.json", "config.yaml", "README.md", "fishertune_scores.safetensors",
             "fishertune_selection.json", "fishertune_sensitivity.png", "base_model"}  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        result = recipe_main("train")(quick_demo_argv(out))
    return out, result, buf.getvalue()


def test_output_folder(demo_run):
    out, result, printed = demo_run
    assert ADAPTER_FILES | RUN_FILES <= set(os.listdir(out))
    assert not {"config.json", "model.safetensors"} & set(os.listdir(out))  # an adapter, not a full model
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    targets = ["synthetic:fog", "synthetic:noise", "synthetic:texture", "synthetic:dark"]
    assert set(metrics) == {*targets, "mean", "source:synthetic:source"}
    # metrics.json rounds to 4 decimals: the rounded mean and the mean of rounded values differ by up to 1e-4
    assert metrics["mean"]["mIoU"] == pytest.approx(np.mean([metrics[t]["mIoU"] for t in targets]), abs=1e-4)
    assert all(
        0 <= m["mIoU"] <= 100 and set(m["per_class_iou"]) == set(SYNTHETIC_CLASSES)
        for m in metrics.values()
        if "per_class_iou" in m
    )
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (
        config["criterion"] == "dr_fim"
        and config["method"] == "sparse"
        and config["quick"] is True
        and config["max_steps"] == 6
    )
    assert config["config_file"].endswith("demo.yaml") and "hub_token" not in config
    # the printed end of the run: a row per target domain, and the paths written
    assert "mean over targets" in printed and all(t in printed for t in targets)
    assert str(out / "metrics.json") in printed and str(out / "README.md") in printed
    assert result["metrics"] == metrics


def test_model_card_has_the_real_numbers(demo_run):
    out, _, _ = demo_run
    card = (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert card.startswith("---\n") and "base_model" not in card.split("---")[1]  # a config: backbone has no Hub id
    for name, m in metrics.items():
        if name != "mean":
            assert f"| {name} | {m['mIoU']:.2f} | {m['aAcc']:.2f} |" in card
    assert f"**{metrics['mean']['mIoU']:.2f}**" in card
    assert "![sensitivity map](fishertune_sensitivity.png)" in card
    selection = json.loads((out / "fishertune_selection.json").read_text())
    assert f"{int(selection['allocated_entries']):,} deltas" in card
    assert "warm-up 2 steps, estimation 2 batches, tuning 4 steps" in card
    assert (
        f'AutoPeftModel.from_pretrained("{os.path.abspath(out)}")' in card
        and "@inproceedings{zhao2025fishertune" in card
    )
    assert "n/a" not in card and "http" not in card  # no invented links


def test_model_card_is_a_valid_model_card_with_a_model_index(demo_run):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    out, _, _ = demo_run
    metrics = json.loads((out / "metrics.json").read_text())
    card = ModelCard.load(out / "README.md")
    card.validate = None  # (online validation is the Hub's; loading parses and checks the metadata here)
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["datasets"] == ["synthetic"] and data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "image-segmentation" and "base_model" not in data
    name, results = model_index_to_eval_results(data["model-index"])
    got = {r.dataset_name: (r.dataset_type, r.dataset_split, r.metric_type, r.metric_value) for r in results}
    targets = ["synthetic:fog", "synthetic:noise", "synthetic:texture", "synthetic:dark"]
    expected = {t: ("synthetic", t.split(":")[1], "mean_iou", round(metrics[t]["mIoU"], 2)) for t in targets}
    expected["source validation synthetic:source"] = (
        "synthetic",
        "source",
        "mean_iou",
        round(metrics["source:synthetic:source"]["mIoU"], 2),
    )
    expected["mean over target domains"] = ("targets", None, "mean_iou", round(metrics["mean"]["mIoU"], 2))
    assert got == expected and name.startswith("dr_fim on config:vit-small-demo")


def test_evaluate_recipe_reproduces_the_metrics(demo_run, tmp_path, capsys):
    out, _, _ = demo_run
    written = json.loads((out / "metrics.json").read_text())
    again = recipe_main("evaluate")(["--model", str(out), "--output_file", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == again
    assert set(again) == set(written)
    for name in written:
        assert again[name]["mIoU"] == pytest.approx(written[name]["mIoU"], abs=1e-3), name
        assert again[name].get("num_pixels") == written[name].get("num_pixels"), name
    assert "synthetic:fog" in capsys.readouterr().out
    # any dataset of the package: another synthetic domain, not seen at training time
    other = recipe_main("evaluate")(["--model", str(out), "--targets", "synthetic:blur", "--max_eval_samples", "2"])
    assert set(other) == {"synthetic:blur", "mean"} and other["synthetic:blur"]["num_pixels"] > 0


def test_predict_recipe_writes_masks_overlays_and_legend(demo_run, tmp_path):
    out, _, _ = demo_run
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"fog": (96, 128), "dark": (70, 90)}  # not the training size: outputs follow each image
    for i, (domain, size) in enumerate(sizes.items()):
        Image.fromarray(generate_sample(i, domain, size, seed=5)[0]).save(images / f"{domain}.png")
    preds = tmp_path / "preds"
    stems = recipe_main("predict")(
        ["--model", str(out), "--images", str(images), "--output_dir", str(preds), "--device", "cpu"]
    )
    assert sorted(stems) == sorted(sizes)
    legend = json.loads((preds / "legend.json").read_text())
    assert [e["name"] for e in legend] == list(SYNTHETIC_CLASSES)
    colors = {tuple(e["color"]) for e in legend}
    assert len(colors) == len(legend)
    assert Image.open(preds / "legend.png").size[0] > 0
    for stem, (h, w) in sizes.items():
        mask = np.asarray(Image.open(preds / "masks" / f"{stem}.png"))
        ids = np.asarray(Image.open(preds / "labels" / f"{stem}.png"))
        overlay = np.asarray(Image.open(preds / "overlays" / f"{stem}.png"))
        image = np.asarray(Image.open(images / f"{stem}.png"))
        assert mask.shape == overlay.shape == (h, w, 3) and ids.shape == (h, w)
        assert ids.max() < len(SYNTHETIC_CLASSES)
        # every mask pixel is the legend colour of its predicted class
        palette = np.asarray([e["color"] for e in legend], dtype=np.uint8)
        assert np.array_equal(mask, palette[ids])
        assert np.abs(overlay.astype(int) - (0.5 * image + 0.5 * mask)).max() <= 1


def test_merge_and_baseline_outputs(tmp_path):
    # --merge writes a plain model; a baseline method gets its own card wording. Micro model: fast.
    out = tmp_path / "merged"
    micro = ["--backbone", "config:vit-micro-test", "--targets", "synthetic:fog", "--val_split", ""]
    result = recipe_main("train")(quick_demo_argv(out, "--merge", "true", *micro))
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors"} <= files and not ADAPTER_FILES & files and "base_model" not in files
    again = recipe_main("evaluate")(["--model", str(out)])
    assert again["synthetic:fog"]["mIoU"] == pytest.approx(result["metrics"]["synthetic:fog"]["mIoU"], abs=1e-3)
    out = tmp_path / "lora"
    recipe_main("train")(quick_demo_argv(out, "--method", "lora", *micro))
    card = (out / "README.md").read_text()
    assert "**`lora` baseline**" in card and "PEFT LoRA" in card and "FisherTune** adapter" not in card
    assert "fishertune_scores.safetensors" not in os.listdir(out) and "sensitivity map" not in card
    assert ADAPTER_FILES <= set(os.listdir(out))


def test_baseline_output_reloads_with_its_method(tmp_path):
    # A baseline method saves the whole model plus baseline/; load_output must put the method back
    # (from_pretrained alone drops VQT's queries and head link and evaluates the bare model).
    from fishertune.baselines.api import installed_state
    from fishertune.experiment import load_output

    out = tmp_path / "vqt"
    micro = ["--backbone", "config:vit-micro-test", "--targets", "synthetic:fog", "--val_split", ""]
    result = recipe_main("train")(quick_demo_argv(out, "--method", "vqt", *micro))
    assert {"config.json", "model.safetensors", "baseline"} <= set(os.listdir(out))
    model, _ = load_output(str(out), device="cpu")
    assert installed_state(model)[1]["config"].method == "vqt"
    assert model.decode_head.vqt_classifier.classifier.weight.any()  # trained, not the zero init
    again = recipe_main("evaluate")(["--model", str(out)])
    assert again["synthetic:fog"]["mIoU"] == pytest.approx(result["metrics"]["synthetic:fog"]["mIoU"], abs=1e-3)
