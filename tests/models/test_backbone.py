import pytest
import torch
import torch.nn.functional as F

from fishertune.backbones import backbone_blocks
from fishertune.models import default_taps, patch_tokens, tapped_features
from fishertune.models.backbone import build_backbone, resample

from .conftest import FAMILIES, tiny_config


def test_default_taps():
    assert default_taps(12) == (3, 6, 9, 12)
    assert default_taps(24) == (6, 12, 18, 24)
    assert default_taps(4) == (1, 2, 3, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_blocks(family):
    backbone = build_backbone(tiny_config(family))
    blocks = backbone_blocks(backbone)
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) == 4
    assert not hasattr(backbone, "pooler") or backbone.pooler is None  # unused pooler would stall DDP


@pytest.mark.parametrize("family,prefix", [("vit", 1), ("dinov2_reg", 3)])
def test_patch_tokens_drops_prefix_and_folds_row_major(family, prefix):
    config = tiny_config(family)
    h, w = 4, 6
    tokens = torch.arange(2 * (prefix + h * w) * 3, dtype=torch.float).reshape(2, prefix + h * w, 3)
    out = patch_tokens(tokens, build_backbone(config), image_size=(32, 48))
    assert out.shape == (2, 3, h, w)
    # token prefix + r * w + c lands at [:, :, r, c]
    assert torch.equal(out[1, :, 2, 5], tokens[1, prefix + 2 * w + 5])
    with pytest.raises(ValueError, match="image_size"):
        patch_tokens(tokens, config)  # 24 tokens are not a square grid


@pytest.mark.parametrize("family", FAMILIES)
def test_tapped_features_are_raw_block_outputs(family, images):
    """Taps are the tapped blocks' outputs (no final norm, prefix dropped), at a non-square size."""
    torch.manual_seed(0)
    backbone = build_backbone(tiny_config(family)).eval()
    blocks = backbone_blocks(backbone)
    seen = {}
    for i in (1, 3):
        blocks[i].register_forward_hook(
            lambda m, a, o, i=i: seen.__setitem__(i + 1, o[0] if isinstance(o, tuple) else o)
        )
    feats = tapped_features(backbone, images, taps=(2, 4))
    for tap, feat in zip((2, 4), feats):
        assert feat.shape == (2, 32, 4, 6)
        assert torch.equal(feat, patch_tokens(seen[tap], backbone, image_size=(32, 48)))
    # deterministic: ViT-MAE would otherwise shuffle (and drop) patches at random
    assert torch.equal(tapped_features(backbone, images, taps=(4,))[0], feats[1])


def test_a_backbone_that_returns_no_hidden_states_gets_a_clear_error(images, monkeypatch):
    from transformers.utils import output_capturing

    backbone = build_backbone(tiny_config("vit")).eval()
    # what a process that unpickled the model without ever building one sees: an empty output registry
    monkeypatch.setattr(output_capturing, "_CAN_RECORD_REGISTRY", output_capturing._CanRecordRegistry())
    with pytest.raises(RuntimeError, match="ViTModel returned no hidden_states.*unpickled"):
        tapped_features(backbone, images, taps=(1,))


def test_position_embeddings_are_interpolated_for_non_square_input(images):
    backbone = build_backbone(tiny_config("vit")).eval()
    captured = {}
    backbone.embeddings.register_forward_hook(lambda m, a, o: captured.__setitem__("emb", o))
    tapped_features(backbone, images, taps=(1,))
    pos = backbone.embeddings.position_embeddings  # [1, 1 + 16, C], a 4x4 grid
    grid = pos[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 6), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    patches = backbone.embeddings.patch_embeddings.projection(images).flatten(2).transpose(1, 2)
    assert torch.allclose(captured["emb"][:, 1:], patches + expected, atol=1e-6)


def test_resample_is_reins_bilinear_pyramid():
    x = torch.randn(1, 2, 4, 6)
    out = resample([x] * 4, (4.0, 2.0, 1.0, 0.5))
    assert [tuple(o.shape[-2:]) for o in out] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert out[2] is x
    assert torch.equal(out[0], F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False))
