import torch
import torch.nn.functional as F

from fishertune.models import LightSegmenter, tapped_features

from .conftest import tiny_config


def _model(**kw):
    torch.manual_seed(0)
    model = LightSegmenter.from_backbone(tiny_config("vit"), num_labels=5, **kw)
    bn = model.decode_head.batch_norm  # non-trivial running statistics, so eval BN is not the identity
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def test_config_defaults_and_taps():
    model = _model()
    assert model.config.taps == [1, 2, 3, 4]
    assert model.decoder_modules == ["decode_head"]
    assert _model(taps=(2, 4)).decode_head.classifier.in_channels == 64


def test_head_equals_hand_computed_bn_conv(images, labels):
    model = _model(taps=(2, 4))
    out = model(pixel_values=images, labels=labels)
    feats = tapped_features(model.backbone, images, (2, 4))
    x = torch.cat(feats, dim=1)
    bn, conv = model.decode_head.batch_norm, model.decode_head.classifier
    x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    x = x * bn.weight[:, None, None] + bn.bias[:, None, None]
    expected = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + conv.bias[:, None, None]
    assert out.logits.shape == (2, 5, 4, 6)
    assert torch.allclose(out.logits, expected, atol=1e-5)

    up = F.interpolate(expected, size=(32, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(model.semantic_logits(out, (32, 48)), up, atol=1e-5)
    assert torch.allclose(out.loss, F.cross_entropy(up, labels, ignore_index=255), atol=1e-5)


def test_loss_ignores_void_and_trains(images, labels):
    model = _model().train()
    void = torch.full_like(labels, 255)
    out = model(pixel_values=images, labels=void)
    assert out.loss.item() == 0.0  # no NaN from an all-void batch
    out = model(pixel_values=images, labels=labels)
    out.loss.backward()
    assert model.decode_head.classifier.weight.grad.abs().sum() > 0
    assert model.backbone.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
