import pytest
import torch
from transformers import Dinov2Model, Dinov2WithRegistersModel, EomtConfig, EomtImageProcessor

from fishertune.models import EomtSegmenter

from .conftest import TINY_EOMT, tiny_config


def _pair(family="dinov2"):
    torch.manual_seed(0)
    model_cls = Dinov2Model if family == "dinov2" else Dinov2WithRegistersModel
    source = model_cls(tiny_config(family)).eval()
    return source, EomtSegmenter.from_backbone(source, num_labels=5, **TINY_EOMT).eval()


@pytest.mark.parametrize("family", ["dinov2", "dinov2_reg"])
def test_dinov2_weights_reproduce_dinov2_blocks(family):
    """Until the queries join, EoMT with converted weights computes exactly what DINOv2 does."""
    source, model = _pair(family)
    assert model.backbone.config.num_register_tokens == getattr(source.config, "num_register_tokens", 0)
    x = torch.randn(2, 3, 32, 32)
    seen = {}
    source.encoder.layer[1].register_forward_hook(lambda m, a, o: seen.__setitem__("src", o))
    model.backbone.layers[1].register_forward_hook(lambda m, a, o: seen.__setitem__("eomt", o))
    source(pixel_values=x)
    model(pixel_values=x)
    assert torch.allclose(seen["src"], seen["eomt"], atol=1e-5)


def test_loss_semantic_logits_and_size_check():
    _, model = _pair()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    out = model.train()(pixel_values=x, labels=y)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.backbone.mask_head.fc1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=x)
    processed = EomtImageProcessor(size={"shortest_edge": 32, "longest_edge": 32}).post_process_semantic_segmentation(
        out, target_sizes=[(32, 32)] * 2, return_segmentation_scores=True
    )
    ours = model.semantic_logits(out, (32, 32))
    for i, item in enumerate(processed):
        scores = item.segmentation_scores
        assert torch.allclose(ours[i].softmax(0), scores / scores.sum(0, keepdim=True), atol=1e-5)
    with pytest.raises(ValueError, match="32x32"):
        model(pixel_values=torch.randn(1, 3, 32, 48))


def test_random_init_from_eomt_config():
    cfg = EomtConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    model = EomtSegmenter.from_backbone(cfg, num_labels=3, **TINY_EOMT)
    assert model.backbone.class_predictor.out_features == 4
    with pytest.raises(ValueError, match="taps"):
        EomtSegmenter.from_backbone(cfg, num_labels=3, taps=(1, 2))
