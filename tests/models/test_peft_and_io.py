"""Every model: tuner targets only backbone q/k/v/fc1/fc2; save/load round trip; the factory."""

import os
import re

import peft
import pytest
import torch
from transformers import AutoModel

import fishertune
from fishertune.models import build_model, tapped_features

from .conftest import TINY_EOMT, TINY_M2F, tiny_config

CASES = [("light", "vit", {}), ("mask2former", "dinov2_reg", TINY_M2F), ("eomt", "dinov2", TINY_EOMT)]
TARGET_LEAF = re.compile(r"(q_proj|k_proj|v_proj|fc1|fc2)")


def _build(name, family, kw):
    torch.manual_seed(0)
    return build_model(name, tiny_config(family), num_labels=5, **kw)


@pytest.mark.parametrize("name,family,kw", CASES)
def test_tuner_targets_backbone_blocks_only(name, family, kw):
    model = _build(name, family, kw)
    regex = fishertune.target_regex(model)
    hits = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(regex, n)]
    assert len(hits) == 5 * model.backbone.config.num_hidden_layers  # q, k, v, fc1, fc2 per block
    for n in hits:
        assert n.startswith("backbone.") and TARGET_LEAF.fullmatch(n.rsplit(".", 1)[-1]), n
        assert not any(f".{d}." in f".{n}." for d in model.decoder_modules), n

    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    tuned = peft.get_peft_model(
        model, fishertune.FisherTuneConfig(modules_to_save=model.decoder_modules, init_criterion="magnitude")
    )
    out = tuned(pixel_values=x, labels=y)
    out.loss.backward()
    trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert any("fishertune_values" in n for n in trainable)
    for d in model.decoder_modules:  # the decoder is trained in full
        assert any(f".{d}.modules_to_save." in n for n in trainable), d
    assert not any("fishertune" in n for n in trainable if any(f".{d}." in n for d in model.decoder_modules))
    assert tuned.semantic_logits(out, (32, 32)).shape == (2, 5, 32, 32)


@pytest.mark.parametrize("name,family,kw", CASES)
def test_save_load_round_trip(name, family, kw, tmp_path):
    model = _build(name, family, kw).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(pixel_values=x)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and loaded.config.id2label == model.config.id2label
    for key in ("model_type", "hidden_size", "num_hidden_layers", "patch_size"):
        assert getattr(loaded.config.backbone_config, key) == getattr(model.config.backbone_config, key), key
    assert getattr(loaded.config, "taps", None) == getattr(model.config, "taps", None)
    with torch.no_grad():
        after = loaded(pixel_values=x)
    assert torch.equal(model.semantic_logits(before, (32, 32)), loaded.semantic_logits(after, (32, 32)))


def test_build_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="light"):
        build_model("segformer", tiny_config("vit"), num_labels=2)


VIT_TINY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "models", "vit-tiny-patch16-224-augreg")


@pytest.mark.skipif(not os.path.isdir(VIT_TINY), reason="shared vit-tiny checkpoint not present")
def test_from_backbone_loads_real_weights():
    from transformers import ViTModel

    reference = ViTModel.from_pretrained(VIT_TINY, add_pooling_layer=False).eval()
    model = build_model("light", VIT_TINY, num_labels=19).eval()
    assert model.config.taps == [3, 6, 9, 12] and model.config.backbone_config.hidden_size == 192
    assert (
        "id2label" not in model.config.to_dict()["backbone_config"]
        or len(model.config.to_dict()["backbone_config"]["id2label"]) < 1000
    )
    for (n, p), (m, q) in zip(model.backbone.state_dict().items(), reference.state_dict().items()):
        assert n == m and torch.equal(p, q), n
    x = torch.randn(1, 3, 64, 96)  # non-square, not the 224 of pretraining
    hidden = reference(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
    ours = tapped_features(model.backbone, x, (12,))[0]
    assert torch.equal(ours, hidden[12][:, 1:].transpose(1, 2).reshape(1, 192, 4, 6))
