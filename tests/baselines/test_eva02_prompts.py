"""VPT-deep and VQT on EVA02 (timm, random init): the extra tokens sit after CLS/registers and are kept
out of RoPE; checked against a hand-written EvaBlock, then trained, saved/reloaded, and VQT linked to the
light and Mask2Former heads. Needs timm (run with `make test-eva02`)."""

from contextlib import nullcontext

import pytest
import torch

timm = pytest.importorskip("timm")

from timm.layers import apply_rot_embed_cat  # noqa: E402

from fishertune.backbones import Eva02Backbone, eva02_pyramid_taps  # noqa: E402
from fishertune.baselines import (  # noqa: E402
    VPTConfig,
    VQTConfig,
    apply_vpt,
    apply_vqt,
    load_method_state,
    save_method_state,
    vqt_features,
)
from fishertune.models import build_model  # noqa: E402

from .conftest import EVA02_TINY, TINY_M2F  # noqa: E402

TINY = EVA02_TINY
# eva02_base: separate q/k/v + SwiGLU (as EVA02-L); eva02_tiny: fused qkv + packed GluMlp; registers.
CASES = {
    "base": ("eva02_base_patch14_224", {}),
    "tiny": ("eva02_tiny_patch14_224", {}),
    "base+reg": ("eva02_base_patch14_224", {"num_reg_tokens": 2}),
}
P = 3  # prompts / queries per block


def _eva(case, depth=2):
    name, kw = CASES[case]
    torch.manual_seed(0)
    return Eva02Backbone.from_timm(name, pretrained=False, **{**TINY, "depth": depth, **kw}).eval()


def _x(n=2, seed=0):
    return torch.randn(n, 3, 28, 42, generator=torch.Generator().manual_seed(seed))  # 2 x 3 patches


def _embed(eva, x):
    tokens, rope = eva._pos_embed(eva.patch_embed(x))
    return eva.norm_pre(tokens), rope


def _ref_block(block, x, rope, npt, mask=None):
    """EvaBlock written out: RoPE on tokens npt: only, plain softmax attention with an additive mask."""
    attn, (b, n, _) = block.attn, x.shape
    h = block.norm1(x)
    if attn.qkv is not None:
        qkv = attn.qkv(h) + torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        q, k, v = qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    else:
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        q, k, v = (p(h).reshape(b, n, attn.num_heads, -1).transpose(1, 2) for p in projections)
    assert not attn.rotate_half

    def rot(t):
        return torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], rope)], dim=2)

    scores = rot(attn.q_norm(q)) @ rot(attn.k_norm(k)).transpose(-2, -1) * attn.scale
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    out = attn.proj(attn.norm((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)))
    x = x + (out if block.gamma_1 is None else block.gamma_1 * out)
    mlp = block.mlp(block.norm2(x))
    return x + (mlp if block.gamma_2 is None else block.gamma_2 * mlp)


@pytest.mark.parametrize("case", sorted(CASES))
def test_vpt_matches_hand_written_reference(case):
    x = _x()
    plain = _eva(case)
    npt = plain.eva.num_prefix_tokens
    with torch.no_grad():
        h, rope = _embed(plain.eva, x)
        ref_plain = plain(x, output_hidden_states=True).hidden_states
        for block, want in zip(plain.eva.blocks, ref_plain[1:]):  # the reference is timm's block
            h = _ref_block(block, h, rope, npt)
            torch.testing.assert_close(h, want, rtol=0, atol=1e-5)
    model = apply_vpt(_eva(case), VPTConfig(num_tokens=P))
    with torch.no_grad():
        model.vpt_prompts.prompt_embeddings.normal_(0, 3.0)  # large enough to matter
        out = model(x, output_hidden_states=True)
        h, _ = _embed(model.eva, x)
        for j, block in enumerate(model.eva.blocks):  # [prefix, P_j, patches], prompts are prefix: not rotated
            prompts = model.vpt_prompts.prompt_embeddings[j].expand(len(x), -1, -1)
            y = _ref_block(block, torch.cat([h[:, :npt], prompts, h[:, npt:]], 1), rope, npt + P)
            h = torch.cat([y[:, :npt], y[:, npt + P :]], 1)
            torch.testing.assert_close(out.hidden_states[j + 1], h, rtol=0, atol=1e-5)
    assert [t.shape for t in out.hidden_states] == [t.shape for t in ref_plain]
    assert not torch.allclose(out.hidden_states[-1], ref_plain[-1], atol=1e-3)  # the prompts act
    assert all(block.attn.num_prefix_tokens == npt for block in model.eva.blocks)  # restored after the call


@pytest.mark.parametrize("case", sorted(CASES))
def test_vqt_queries_do_not_leak_and_match_reference(case):
    x = _x()
    plain = _eva(case)
    npt = plain.eva.num_prefix_tokens
    with pytest.warns(UserWarning, match="only feed"):
        model = apply_vqt(_eva(case), VQTConfig(num_queries=P))
    with torch.no_grad():
        model.vqt_queries.query_embeddings.normal_(0, 3.0)
        ref = plain(x, output_hidden_states=True)
        out = model(x, output_hidden_states=True)
        for got, want in zip(out.hidden_states, ref.hidden_states):  # patch/CLS tokens: the plain backbone's
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-6)
        features = vqt_features(model)
        assert features.shape == (2, 2, P, 32)
        _, rope = _embed(plain.eva, x)
        n = ref.hidden_states[0].shape[1] + P
        is_query = torch.zeros(n, dtype=torch.bool)
        is_query[npt : npt + P] = True
        for j, block in enumerate(plain.eva.blocks):  # queries read every token, unrotated; nothing reads them
            h = ref.hidden_states[j]
            q = model.vqt_queries.query_embeddings[j].expand(len(x), -1, -1)
            y = _ref_block(block, torch.cat([h[:, :npt], q, h[:, npt:]], 1), rope, npt + P,
                           mask=~is_query[:, None] & is_query[None, :])  # fmt: skip
            torch.testing.assert_close(features[:, j], y[:, npt : npt + P], rtol=0, atol=1e-5)


TAPS = eva02_pyramid_taps(6)


def _plain_seg(case, head="light"):
    torch.manual_seed(1)
    return build_model(head, _eva(case, depth=6), num_labels=3, taps=TAPS,
                       **(TINY_M2F if head == "mask2former" else {})).eval()  # fmt: skip


def _seg(case, method, seed=0, head="light"):
    seg = _plain_seg(case, head)
    torch.manual_seed(100 + seed)
    if method == "vpt":
        return apply_vpt(seg, VPTConfig(num_tokens=P))
    return apply_vqt(seg, VQTConfig(num_queries=P))


def _data():
    x = _x(seed=3)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    y[:, :2] = 255
    return x, y


def _logits(seg, x):
    return seg.semantic_logits(seg(pixel_values=x), size=x.shape[-2:])


@pytest.mark.parametrize("method", ["vpt", "vqt"])
@pytest.mark.parametrize("case", ["base", "tiny"])
def test_train_save_reload_on_light_segmenter(case, method, tmp_path):
    seg = _seg(case, method).train()
    prefix = f"{method}_"
    frozen = {n: p.detach().clone() for n, p in seg.backbone.named_parameters() if not n.startswith(prefix)}
    tokens = next(p for n, p in seg.backbone.named_parameters() if n.startswith(prefix))
    start = tokens.detach().clone()
    x, y = _data()
    opt = torch.optim.Adam([p for p in seg.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # VQT: step 1 moves the zero-initialised link, then the queries follow
        opt.zero_grad()
        seg(pixel_values=x, labels=y).loss.backward()
        opt.step()
    assert all(not p.requires_grad for n, p in seg.backbone.named_parameters() if n in frozen)
    assert all(torch.equal(p, frozen[n]) for n, p in seg.backbone.named_parameters() if n in frozen)
    assert all((tokens[j] != start[j]).any() for j in range(6)), "a block's tokens did not move"
    seg.eval()
    with torch.no_grad():
        expected = _logits(seg, x)
    save_method_state(seg, tmp_path)
    fresh = _plain_seg(case)
    fresh.load_state_dict(seg.state_dict(), strict=False)  # the decoder, trained in full
    torch.manual_seed(999)
    load_method_state(fresh, tmp_path)
    with torch.no_grad():
        assert torch.equal(_logits(fresh, x), expected)


@pytest.mark.parametrize("case,head", [("base", "light"), ("tiny", "light"), ("base", "mask2former")])
def test_vqt_head_link_on_eva02_gets_gradients(case, head):
    x, y = _data()
    plain = _plain_seg(case, head)
    seg = _seg(case, "vqt", head=head)
    if head == "light":
        link = seg.decode_head.vqt_classifier.classifier.weight
    else:
        link = seg.transformer_module.vqt_query_link.mix
    with torch.no_grad():  # zero-initialised link: the plain segmenter's predictions
        torch.testing.assert_close(_logits(seg, x), _logits(plain, x), rtol=0, atol=1e-5)
        link.normal_(0, 0.5)  # what training makes of it
    seg.train()
    seg(pixel_values=x, labels=y).loss.backward()
    grad = seg.backbone.vqt_queries.query_embeddings.grad
    assert link.grad is not None and link.grad.abs().sum() > 0
    assert all(g.abs().sum() > 0 for g in grad), "a layer's queries get no gradient from the segmentation loss"


@pytest.mark.parametrize("apply, config", [(apply_vpt, VPTConfig(num_tokens=P)), (apply_vqt, VQTConfig(num_queries=P))])
def test_unsupported_cases_are_refused_clearly(apply, config):
    model = _eva("base")
    del model.eva.blocks[1].attn.num_prefix_tokens  # an attention without timm's RoPE skip count
    with pytest.raises(NotImplementedError, match="num_prefix_tokens"):
        apply(model, config)
    assert all(p.requires_grad for p in model.parameters())  # refused before anything was frozen
    model = _eva("base")
    with pytest.warns(UserWarning) if apply is apply_vqt else nullcontext():
        apply(model, config)
    x = _x()
    with pytest.raises(NotImplementedError, match="attention mask"):
        model.eva.forward_features(x, attn_mask=torch.zeros(1, 1, 7, 7))
