"""VQT's query outputs consumed by the light head and by Mask2Former: init, gradient, save/reload, counts."""

import pytest
import torch

from fishertune.baselines import (
    VQTConfig,
    apply_vqt,
    count_trainable,
    load_method_state,
    parameter_table,
    save_method_state,
)

from .conftest import DIM, tiny_backbone

NUM_LABELS, DEPTH4, Q = 3, 4, 2  # classes, blocks of the segmenters' backbone (the pyramid needs >= 3), VQT queries
M2F = dict(
    num_queries=4, decoder_layers=3, encoder_layers=1, train_num_points=16, feature_size=32, mask_feature_size=32,
    hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32, num_attention_heads=2,
)  # fmt: skip
HEADS = ["light", "mask2former"]


def _segmenter(head: str, seed: int = 0):
    from fishertune.models import LightSegmenter, PyramidMask2Former

    config = tiny_backbone("dinov2").config
    config.num_hidden_layers = DEPTH4
    torch.manual_seed(seed)
    if head == "light":
        return LightSegmenter.from_backbone(config, num_labels=NUM_LABELS).eval()
    return PyramidMask2Former.from_backbone(config, num_labels=NUM_LABELS, **M2F).eval()


def _installed(head: str, seed: int = 0, **config):
    model = _segmenter(head, seed)
    torch.manual_seed(100 + seed)
    return apply_vqt(model, VQTConfig(num_queries=Q, **config))


def _link(model, head: str):
    return model.decode_head.vqt_classifier if head == "light" else model.transformer_module.vqt_query_link


def _final_map(model, head: str) -> torch.Tensor:
    """The zero-initialised last map of the link."""
    link = _link(model, head)
    return link.classifier.weight if head == "light" else link.mix


def _logits(model, x):
    return model.semantic_logits(model(pixel_values=x), size=x.shape[-2:])


@pytest.fixture
def labels():
    y = torch.randint(0, NUM_LABELS, (3, 28, 28), generator=torch.Generator().manual_seed(2))
    y[:, :4] = 255
    return y


@pytest.mark.parametrize("head", HEADS)
def test_zero_init_link_leaves_predictions_unchanged(head, images):
    ref = _segmenter(head)
    model = _installed(head)
    assert torch.count_nonzero(_final_map(model, head)) == 0
    out = model(pixel_values=images, output_hidden_states=True)
    expected = ref(pixel_values=images, output_hidden_states=True)
    # Masked attention: the patch tokens are the no-VQT ones up to float summation order.
    features = out.hidden_states if head == "light" else out.encoder_hidden_states
    ref_features = expected.hidden_states if head == "light" else expected.encoder_hidden_states
    for got, want in zip(features, ref_features):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(model, images), _logits(ref, images), rtol=0, atol=1e-5)
    # ... and the link adds exactly zero (the same model, queries moved: same logits).
    before = _logits(model, images)
    with torch.no_grad():
        model.backbone.vqt_queries.query_embeddings.add_(1.0)
    assert torch.equal(_logits(model, images), before)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("link", [True, False])
def test_head_consumes_the_queries(head, link, images, labels):
    model = _installed(head, link_to_head=link).train()
    if link:
        with torch.no_grad():  # what training makes of the zero-initialised map
            _final_map(model, head).normal_(0, 0.5)
    model(pixel_values=images, labels=labels).loss.backward()
    grad = model.backbone.vqt_queries.query_embeddings.grad
    if not link:  # without the link nothing downstream reads the query outputs (the masked keys give exact zeros)
        assert grad is None or not grad.any()
        return
    assert all(g.abs().sum() > 0 for g in grad), "a layer's queries get no gradient from the segmentation loss"
    model.eval()
    before = _logits(model, images)
    with torch.no_grad():
        model.backbone.vqt_queries.query_embeddings.mul_(-2.0)
    assert not torch.allclose(_logits(model, images), before)


@pytest.mark.parametrize("head", HEADS)
def test_save_reload_gives_identical_logits(head, images, labels, tmp_path):
    model = _installed(head).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # step 1 moves the zero map, then the queries and the rest of the link follow
        opt.zero_grad()
        model(pixel_values=images, labels=labels).loss.backward()
        opt.step()
    model.eval()
    assert torch.count_nonzero(_final_map(model, head)) > 0
    expected = _logits(model, images)
    save_method_state(model, tmp_path)
    from safetensors.torch import load_file

    saved = set(load_file(tmp_path / "baseline_model.safetensors"))
    assert "backbone.vqt_queries.query_embeddings" in saved
    assert {k for k in saved if k.startswith("model.")} == {
        "model." + n for n, _ in model.named_parameters() if ".vqt_" in "." + n and not n.startswith("backbone.")
    }
    fresh = _segmenter(head)  # same frozen backbone; the decoder comes from the full checkpoint
    fresh.load_state_dict(model.state_dict(), strict=False)
    torch.manual_seed(999)
    load_method_state(fresh, tmp_path)
    assert torch.equal(_logits(fresh, images), expected)


@pytest.mark.parametrize("head", HEADS)
def test_parameter_table_counts_the_link(head):
    model = _segmenter(head)
    row = {r["method"]: r for r in parameter_table(model)}["vqt"]
    queries = DEPTH4 * 10 * DIM  # default VQTConfig: 10 queries per block
    if head == "light":  # K x (L * C) image-level classifier, no bias
        link = NUM_LABELS * DEPTH4 * DIM
    else:  # transform C -> D, merge 3D -> D, mix [num_queries, T]
        d = M2F["hidden_dim"]
        link = (DIM * d + d) + (3 * d * d + d) + M2F["num_queries"] * 10
    assert row["trainable"] == queries + link
    model.requires_grad_(False)
    apply_vqt(model, VQTConfig())
    assert count_trainable(model) == row["trainable"]


def test_eomt_is_refused_before_freezing():
    from fishertune.models import EomtSegmenter

    config = tiny_backbone("dinov2").config
    model = EomtSegmenter.from_backbone(config, num_labels=NUM_LABELS, num_queries=2, num_blocks=1)
    with pytest.raises(NotImplementedError, match="EOMT"):
        apply_vqt(model, VQTConfig(num_queries=Q))
    assert all(p.requires_grad for p in model.parameters())


def test_link_options_on_a_bare_backbone():
    with pytest.raises(ValueError, match="link_to_head=True"):
        apply_vqt(tiny_backbone("vit"), VQTConfig(link_to_head=True))
    with pytest.warns(UserWarning, match="no light head"):
        model = apply_vqt(tiny_backbone("vit"), VQTConfig(num_queries=Q))
    from fishertune.baselines._common import installed_state

    assert installed_state(model)[1]["config"].link_to_head is False  # resolved, as saved


def test_head_refuses_queries_of_another_batch(images):
    model = _installed("light")
    model(pixel_values=images)
    features = model(pixel_values=images, output_hidden_states=True).hidden_states
    with pytest.raises(RuntimeError, match="batch of 3"):
        model.decode_head([f[:1] for f in features])
