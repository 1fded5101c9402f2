"""A `base_model/` folder that names its pretrained backbone instead of holding weights (what a run on a Hub or
local backbone saves for `AutoPeftModel`) loads with `from_pretrained` for every head."""

import pytest
import torch
from transformers import AutoModel, AutoModelForSemanticSegmentation, Dinov2Model

import fishertune  # noqa: F401  (registers the Auto classes)
from fishertune.models import BACKBONE_REFERENCE, backbone_reference, build_model, save_backbone_reference

from .conftest import TINY_EOMT, TINY_M2F, tiny_config

HEADS = {"light": {}, "mask2former": TINY_M2F, "eomt": TINY_EOMT}


@pytest.fixture(scope="module")
def backbone_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(5)
    Dinov2Model(tiny_config("dinov2")).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("head", sorted(HEADS))
def test_from_pretrained_builds_the_config_with_the_named_backbone(tmp_path, backbone_folder, head):
    torch.manual_seed(0)
    built = build_model(head, str(backbone_folder), num_labels=5, **HEADS[head])
    save_backbone_reference(built, tmp_path / "base", str(backbone_folder))
    assert backbone_reference(tmp_path / "base") == str(backbone_folder.resolve())

    torch.manual_seed(1)  # another random decoder: only the backbone comes from the named weights
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "base")
    assert type(loaded) is type(built) and not loaded.training

    def fields(config):
        return {k: v for k, v in config.to_diff_dict().items() if k != "_name_or_path"}

    assert fields(loaded.config) == fields(built.config) and loaded.name_or_path == str(tmp_path / "base")
    expected = built.backbone.state_dict()
    assert expected.keys() == loaded.backbone.state_dict().keys()
    for name, value in loaded.backbone.state_dict().items():
        if head == "eomt" and name.startswith(("query", "mask_head", "upscale_block", "class_predictor")):
            continue  # EoMT's own head inside its backbone module starts random, as in from_backbone
        assert torch.equal(value, expected[name]), name
    # AutoModel, dtype and loading info as from_pretrained gives them
    model, info = AutoModel.from_pretrained(tmp_path / "base", dtype=torch.float64, output_loading_info=True)
    assert next(model.parameters()).dtype == torch.float64 and not info["missing_keys"]


def test_a_folder_with_weights_is_loaded_as_saved(tmp_path, backbone_folder):
    model = build_model("light", str(backbone_folder), num_labels=5)
    save_backbone_reference(model, tmp_path, str(backbone_folder))
    with torch.no_grad():
        model.decode_head.classifier.bias.fill_(3.0)
    model.save_pretrained(tmp_path)  # weights next to the reference: they win
    assert (tmp_path / BACKBONE_REFERENCE).exists() and backbone_reference(tmp_path) is None
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path)
    assert torch.equal(loaded.decode_head.classifier.bias, torch.full((5,), 3.0))
