"""A trained output folder loads with the standard Hugging Face calls after `import fishertune`.

AutoModelForSemanticSegmentation (base_model/ and merged runs), AutoImageProcessor, pipeline("image-segmentation"),
AutoPeftModel; and the normalization of a Hub backbone comes from its image processor (offline: a cache).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import fishertune  # noqa: F401  (registers the Auto classes)
from fishertune.data import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, generate_sample

from ._helpers import quick_demo_argv, recipe_main

MICRO = ["--backbone", "config:vit-micro-test", "--targets", "synthetic:fog", "--val_split", ""]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{"adapter": folder, "merged": folder}`: the demo recipe (quick) on the micro backbone."""
    root = tmp_path_factory.mktemp("hf")
    recipe_main("train")(quick_demo_argv(root / "adapter", *MICRO))
    recipe_main("train")(quick_demo_argv(root / "merged", "--merge", "true", *MICRO))
    return {"adapter": root / "adapter", "merged": root / "merged"}


def _image(size=(64, 96)) -> Image.Image:
    return Image.fromarray(generate_sample(3, "fog", size, seed=7)[0])


def _logits(model, pixel_values):
    with torch.no_grad():
        return model.semantic_logits(model(pixel_values=pixel_values), tuple(pixel_values.shape[-2:]))


def test_auto_model_for_semantic_segmentation_loads_base_and_merged(runs):
    from transformers import AutoModelForSemanticSegmentation

    from fishertune.experiment import load_output
    from fishertune.models import LightSegmenter

    base = AutoModelForSemanticSegmentation.from_pretrained(runs["adapter"] / "base_model")
    assert type(base) is LightSegmenter
    merged = AutoModelForSemanticSegmentation.from_pretrained(runs["merged"]).eval()
    reference, _ = load_output(str(runs["merged"]), device="cpu")
    x = torch.randn(1, 3, 64, 96)
    assert torch.equal(_logits(merged, x), _logits(reference, x))


def test_auto_image_processor_reproduces_the_eval_transform(runs):
    from transformers import AutoImageProcessor

    from fishertune.models import FisherTuneImageProcessor

    for folder in (runs["adapter"], runs["adapter"] / "base_model", runs["merged"]):
        processor = AutoImageProcessor.from_pretrained(folder)
        assert type(processor) is FisherTuneImageProcessor
    image = _image()
    ours = eval_transforms(scale=None, mean=IMAGENET_MEAN, std=IMAGENET_STD)(
        {"image": [image], "label": [Image.fromarray(np.zeros((64, 96), np.uint8))]}
    )["pixel_values"][0]
    theirs = processor(images=[image], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)  # (x / 255 - m) / s against (x - 255 m) / (255 s)


@pytest.mark.parametrize("which", ["merged", "base_model"])
def test_pipeline_segments_with_the_saved_processor(runs, capfd, which):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

    folder = runs["merged"] if which == "merged" else runs["adapter"] / "base_model"
    segment = pipeline("image-segmentation", model=str(folder), device="cpu")
    image = _image((70, 90))  # not the training size: masks follow the image
    annotations = segment(image)
    assert "not supported" not in capfd.readouterr().err
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    _assert_masks_are_the_models(annotations, model, AutoImageProcessor.from_pretrained(folder), image)


def test_pipeline_on_an_adapter_run_merged_in_memory(runs):
    from peft import AutoPeftModel
    from transformers import AutoImageProcessor, pipeline

    from fishertune.experiment import load_output

    merged = AutoPeftModel.from_pretrained(str(runs["adapter"])).merge_and_unload().eval()
    processor = AutoImageProcessor.from_pretrained(runs["adapter"])
    image = _image((70, 90))
    annotations = pipeline("image-segmentation", model=merged, image_processor=processor, device="cpu")(image)
    reference, _ = load_output(str(runs["adapter"]), device="cpu")  # the trained adapter, as the recipes load it
    _assert_masks_are_the_models(annotations, reference.eval(), processor, image)


def _assert_masks_are_the_models(annotations, model, processor, image):
    """One mask per predicted class, each exactly where `model`'s argmax is that class, at the image's size."""
    pixel_values = processor(images=[image], return_tensors="pt")["pixel_values"]
    h, w = image.size[1], image.size[0]
    with torch.no_grad():
        ids = model.semantic_logits(model(pixel_values=pixel_values), (h, w))[0].argmax(0).numpy()
    id2label = model.config.id2label
    expected = {id2label[int(c)]: ids == c for c in np.unique(ids)}
    assert {a["label"] for a in annotations} == set(expected)
    for a in annotations:
        assert a["mask"].size == (w, h) and np.array_equal(np.asarray(a["mask"]) == 255, expected[a["label"]])


def test_auto_peft_model_loads_the_adapter_folder(runs):
    from peft import AutoPeftModel

    from fishertune.experiment import load_output

    config = json.loads((runs["adapter"] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((runs["adapter"] / "base_model").resolve())
    model = AutoPeftModel.from_pretrained(str(runs["adapter"])).eval()
    reference, _ = load_output(str(runs["adapter"]), device="cpu")
    x = torch.randn(2, 3, 64, 96)
    assert torch.equal(_logits(model, x), _logits(reference, x))


def _cached_hub_repo(cache, repo_id: str, files: dict) -> None:
    """A Hub repo as huggingface_hub's cache lays it out (refs/main -> snapshots/<commit>/files)."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        (snapshot / name).write_text(json.dumps(content))


def test_hub_backbone_normalization_comes_from_its_image_processor(tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants

    from fishertune.experiment.build import normalization

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # nothing leaves this machine
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.5, 0.5],
        "do_normalize": True,
    }
    _cached_hub_repo(
        tmp_path / "hub",
        "someorg/vit-augreg",
        {"preprocessor_config.json": processor, "config.json": {"model_type": "vit"}},
    )
    assert normalization("someorg/vit-augreg") == ((127.5, 127.5, 127.5), (63.75, 127.5, 127.5))
    # no processor to be had (offline, not cached): ImageNet's, with a warning that says why
    with caplog.at_level("WARNING"):
        assert normalization("someorg/not-cached") == (IMAGENET_MEAN, IMAGENET_STD)
    assert "someorg/not-cached" in caplog.text and "ImageNet" in caplog.text
    # a local folder saved with save_pretrained
    from fishertune.models import processor_for

    processor_for((10.0, 20.0, 30.0), (2.0, 4.0, 8.0)).save_pretrained(tmp_path / "local")
    mean, std = normalization(str(tmp_path / "local"))
    assert mean == pytest.approx((10.0, 20.0, 30.0), abs=1e-9) and std == pytest.approx((2.0, 4.0, 8.0), abs=1e-9)


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """`(output folder, backbone folder)`: the quick demo on a pretrained backbone given by name (a local
    folder here, offline; a Hub id takes the same path), so base_model/ names the backbone instead of copying it."""
    from transformers import Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(11)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32,
                             patch_size=8)).save_pretrained(root / "dinov2-tiny")  # fmt: skip
    recipe_main("train")(
        quick_demo_argv(
            root / "run", "--backbone", str(root / "dinov2-tiny"), "--targets", "synthetic:fog", "--val_split", ""
        )
    )
    return root / "run", root / "dinov2-tiny"


def test_a_pretrained_backbone_run_loads_with_auto_peft_model(pretrained_run):
    from peft import AutoPeftModel, PeftModel
    from transformers import AutoModelForSemanticSegmentation, Dinov2Model

    from fishertune.models import BACKBONE_REFERENCE, LightSegmenter, build_model

    out, backbone = pretrained_run
    base_dir = out / "base_model"
    # the base is named, not copied: the config, the backbone's name and the processor, no weights
    assert sorted(p.name for p in base_dir.iterdir()) == [
        "config.json", BACKBONE_REFERENCE, "preprocessor_config.json"]  # fmt: skip
    assert json.loads((base_dir / BACKBONE_REFERENCE).read_text()) == {"backbone": str(backbone.resolve())}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve())

    base = AutoModelForSemanticSegmentation.from_pretrained(base_dir)
    assert type(base) is LightSegmenter and not base.training
    pretrained = Dinov2Model.from_pretrained(backbone).state_dict()
    assert all(torch.equal(v, pretrained[k]) for k, v in base.backbone.state_dict().items())

    model = AutoPeftModel.from_pretrained(str(out)).eval()
    # the documented way without base_model/: build the base from the backbone, put the adapter on it
    id2label = {int(k): v for k, v in base.config.id2label.items()}
    reference = PeftModel.from_pretrained(build_model("light", str(backbone), id2label=id2label), str(out)).eval()
    x = torch.randn(2, 3, 64, 96)
    assert torch.equal(_logits(model, x), _logits(reference, x))
    card = (out / "README.md").read_text()
    assert f'AutoPeftModel.from_pretrained("{out.resolve()}")' in card
