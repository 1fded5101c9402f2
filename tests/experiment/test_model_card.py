"""The model card as huggingface_hub reads it, for a Hub backbone (a `base_model`) and a merged run.

The card of a demo run (a `config:` backbone, no `base_model`) is checked end to end in test_end_to_end.py.
"""

from __future__ import annotations

import re

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from fishertune.experiment.card import hub_base_model_id, render_model_card

RESULTS = {"cityscapes:val": {"mIoU": 68.123, "aAcc": 94.5}, "bdd100k:val": {"mIoU": 60.0, "aAcc": 92.0},
           "source:gtav:val": {"mIoU": 75.5, "aAcc": 96.0}}  # fmt: skip


def _context(backbone: str, **extra) -> dict:
    return {
        "title": f"dr_fim on {backbone}", "version": "0.1.0", "base_model": backbone,
        "base_model_id": hub_base_model_id(backbone), "head": "mask2former", "head_name": "mask2former",
        "num_labels": 19, "criterion": "dr_fim", "is_sparse": True, "uses_estimator": True, "method_line": "",
        "estimator": "variational", "fisher_type": "true", "allocated": "15,210,000", "allocated_fraction": 0.05,
        "targeted": "304,200,000", "delta_min": 0.01, "delta_max": 0.05, "merged": False, "t1": 4000, "t2": 100,
        "t3": 36000, "source": "gtav:train", "targets": "cityscapes:val, bdd100k:val",
        "datasets": ["bdd100k", "cityscapes", "gtav"], "seed": 0, "results": RESULTS, "mean": None,
        "sensitivity_map": None, "is_adapter": True, "repo_or_path": "me/run",
        **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    "backbone, base_model",
    [
        ("facebook/dinov2-large", "facebook/dinov2-large"),
        ("timm:eva02_large_patch14_224.mim_m38m", "timm/eva02_large_patch14_224.mim_m38m"),
    ],
)
def test_card_parses_back_with_base_model_and_model_index(tmp_path, backbone, base_model):
    path = tmp_path / "README.md"
    render_model_card(_context(backbone)).save(path)
    card = ModelCard.load(path)  # parses the front matter into ModelCardData (model-index included)
    data = card.data.to_dict()
    assert data["base_model"] == base_model and data["library_name"] == "peft"
    assert data["datasets"] == ["bdd100k", "cityscapes", "gtav"] and data["pipeline_tag"] == "image-segmentation"
    assert data["license"] == "apache-2.0" and "fishertune" in data["tags"]
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == f"dr_fim on {backbone}"
    got = {r.dataset_name: (r.task_type, r.dataset_type, r.dataset_split, r.metric_type, r.metric_value)
           for r in results}  # fmt: skip
    assert got == {
        "cityscapes:val": ("image-segmentation", "cityscapes", "val", "mean_iou", 68.12),
        "bdd100k:val": ("image-segmentation", "bdd100k", "val", "mean_iou", 60.0),
        "source validation gtav:val": ("image-segmentation", "gtav", "val", "mean_iou", 75.5),
        "mean over target domains": ("image-segmentation", "targets", None, "mean_iou", 64.06),  # (68.123 + 60) / 2
    }
    text = str(card)
    assert not re.search(r"https?://", text)  # no links at all: none can be invented
    assert 'model = AutoPeftModel.from_pretrained("me/run")' in text


def test_merged_run_card_loads_with_transformers_and_the_pipeline(tmp_path):
    path = tmp_path / "README.md"
    render_model_card(_context("facebook/dinov2-large", is_adapter=False, merged=True)).save(path)
    card = ModelCard.load(path)
    assert card.data.to_dict()["library_name"] == "transformers"
    assert 'pipeline("image-segmentation", model="me/run")' in str(card) and "merged into the weights" in str(card)


def test_card_refuses_results_without_the_metrics_it_prints():
    with pytest.raises(ValueError, match="aAcc"):
        render_model_card(_context("facebook/dinov2-large", results={"cityscapes:val": {"mIoU": 1.0}}))
