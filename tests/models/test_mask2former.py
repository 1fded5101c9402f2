import torch
from transformers import Mask2FormerImageProcessor

from fishertune.backbones import backbone_blocks
from fishertune.models import PyramidMask2Former, patch_tokens, semantic_to_instances

from .conftest import TINY_M2F, tiny_config


def _model(family="vit", **kw):
    torch.manual_seed(0)
    return PyramidMask2Former.from_backbone(tiny_config(family), num_labels=5, **{**TINY_M2F, **kw}).eval()


def test_config_follows_rein_defaults():
    config = PyramidMask2Former.config_class(backbone_config={"model_type": "dinov2", "num_hidden_layers": 24})
    assert config.taps == [6, 12, 18, 24] and config.scales == [4.0, 2.0, 1.0, 0.5]
    assert config.feature_strides == [4, 8, 16, 32]
    m2f = config.to_mask2former_config()
    assert (m2f.num_queries, m2f.decoder_layers - 1, m2f.encoder_layers, m2f.train_num_points) == (100, 9, 6, 12544)
    assert (m2f.class_weight, m2f.mask_weight, m2f.dice_weight, m2f.no_object_weight) == (2.0, 5.0, 5.0, 0.1)


def test_pyramid_shapes_and_stride16_level_is_the_tapped_block(images):
    model = _model(taps=(1, 2, 3, 4))
    seen = {}
    backbone_blocks(model.backbone)[2].register_forward_hook(lambda m, a, o: seen.__setitem__("b3", o))
    levels = model.pyramid(images)
    assert [tuple(f.shape) for f in levels] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    tokens = seen["b3"][0] if isinstance(seen["b3"], tuple) else seen["b3"]
    assert torch.equal(levels[2], patch_tokens(tokens, model.backbone, image_size=(32, 48)))


def test_semantic_to_instances():
    y = torch.tensor([[[0, 0, 3], [255, 3, 3]], [[255, 255, 255], [255, 255, 255]]])
    masks, classes = semantic_to_instances(y)
    assert classes[0].tolist() == [0, 3] and classes[1].numel() == 0
    assert masks[0].tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 1]]]
    assert masks[1].shape == (0, 2, 3)


def test_semantic_logits_match_processor(images):
    model = _model()
    with torch.no_grad():
        out = model(pixel_values=images)
    assert out.masks_queries_logits.shape == (2, 4, 16, 24)  # stride 4
    processed = Mask2FormerImageProcessor().post_process_semantic_segmentation(out, return_segmentation_scores=True)
    ours = model.semantic_logits(out, (384, 384))  # the processor's fixed intermediate size
    for i, item in enumerate(processed):
        scores = item.segmentation_scores
        assert torch.allclose(ours[i].softmax(0), scores / scores.sum(0, keepdim=True), atol=1e-5)
        assert torch.equal(ours[i].argmax(0), item.segmentation)
    # at another size only the resampling path differs: argmax agrees almost everywhere
    maps = Mask2FormerImageProcessor().post_process_semantic_segmentation(out, target_sizes=[(32, 48)] * 2)
    agree = (model.semantic_logits(out, (32, 48)).argmax(1) == torch.stack(maps)).float().mean()
    assert agree > 0.95


def test_loss_and_gradients(images, labels):
    model = _model().train()
    out = model(pixel_values=images, labels=labels)
    # class/mask/dice for the initial prediction and after each of the decoder_layers - 1 layers
    assert len(out.loss_dict) == 3 * TINY_M2F["decoder_layers"] and torch.isfinite(out.loss)
    assert torch.allclose(out.loss, sum(out.loss_dict.values()))
    out.loss.backward()
    for name in model.decoder_modules:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    assert backbone_blocks(model.backbone)[0].attention.q_proj.weight.grad.abs().sum() > 0
    # semantic labels and explicit instance targets give the same loss
    masks, classes = semantic_to_instances(labels)
    torch.manual_seed(3)
    a = model(pixel_values=images, labels=labels).loss
    torch.manual_seed(3)
    b = model(pixel_values=images, mask_labels=masks, class_labels=classes).loss
    assert torch.equal(a, b)


def test_other_backbones_and_larger_input():
    for family in ("dinov2_reg", "clip", "vit_mae"):
        model = _model(family)
        out = model(pixel_values=torch.randn(1, 3, 64, 40))
        assert model.semantic_logits(out, (64, 40)).shape == (1, 5, 64, 40)
        assert out.masks_queries_logits.shape[-2:] == (32, 20)
