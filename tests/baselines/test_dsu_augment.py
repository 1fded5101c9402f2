"""Training-time DSU on patch tokens: train-only, CLS/registers excluded, DSU's formula."""

import pytest
import torch
import transformers as T

from fishertune.baselines import add_dsu_augmentation, dsu_perturb
from fishertune.fisher.perturb import find_blocks

from .conftest import tiny_backbone


def _hidden(model, x):
    return model(pixel_values=x, output_hidden_states=True).hidden_states


def test_dsu_formula_with_fixed_draws():
    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    out = dsu_perturb(x, generator=g)
    g = torch.Generator().manual_seed(3)
    e_mu, e_sigma = torch.randn(4, 1, 8, generator=g), torch.randn(4, 1, 8, generator=g)
    mu, sigma = x.mean(1, keepdim=True), (x.var(1, keepdim=True) + 1e-6).sqrt()
    s_mu, s_sigma = (mu.var(0, keepdim=True) + 1e-6).sqrt(), (sigma.var(0, keepdim=True) + 1e-6).sqrt()
    expected = (sigma + e_sigma * s_sigma) * (x - mu) / sigma + mu + e_mu * s_mu
    torch.testing.assert_close(out, expected)


def _dsu_reference(x, eps=1e-6, generator=None):
    """DSU's training-time formula as `baselines.dsu_perturb` computed it before issue 19 (its official code):
    local batch, batch std not detached, noise drawn in x's dtype, normalise first."""
    mu = x.mean(dim=1, keepdim=True)
    sigma = (x.var(dim=1, keepdim=True) + eps).sqrt()
    sigma_mu = (mu.var(dim=0, keepdim=True) + eps).sqrt()
    sigma_sigma = (sigma.var(dim=0, keepdim=True) + eps).sqrt()
    noise_mu = torch.randn(mu.shape, generator=generator, device=x.device, dtype=x.dtype)
    noise_sigma = torch.randn(sigma.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x - mu) / sigma * (sigma + noise_sigma * sigma_sigma) + (mu + noise_mu * sigma_mu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dsu_output_and_input_gradient_bit_for_bit(dtype):
    # Bit-for-bit: same output and same gradient w.r.t. x (through mu, sigma and the batch stds) for a seed.
    base = torch.randn(5, 9, 6, generator=torch.Generator().manual_seed(1)) * 2.0 + 0.5
    weight = torch.randn(5, 9, 6, generator=torch.Generator().manual_seed(2)).to(dtype)
    results = []
    for fn in (dsu_perturb, _dsu_reference):
        x = base.to(dtype, copy=True).requires_grad_(True)  # a fresh leaf each time (own .grad, even for fp32)
        out = fn(x, generator=torch.Generator().manual_seed(7))
        (out * weight).sum().backward()
        results.append((out.detach(), x.grad))
    (out, grad), (ref_out, ref_grad) = results
    assert grad is not ref_grad
    assert out.dtype == dtype and grad.dtype == dtype
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)


def test_train_only_patch_tokens_and_removal():
    model = tiny_backbone("dinov2_reg")
    x = torch.randn(3, 3, 28, 28)
    ref = _hidden(model, x)
    handle = add_dsu_augmentation(model, p=1.0, blocks=[0], generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(_hidden(model, x), ref))  # eval: off
    model.train()
    out = _hidden(model, x)
    assert torch.equal(out[1][:, :3], ref[1][:, :3])  # CLS + 2 registers excluded
    assert not torch.allclose(out[1][:, 3:], ref[1][:, 3:])  # taps see the perturbed patches
    assert torch.equal(_hidden(model, x[:1])[1], _hidden(model.eval(), x[:1])[1])  # batch of 1: skipped
    handle.remove()
    model.train()
    assert all(torch.equal(a, b) for a, b in zip(_hidden(model, x), ref))


def test_probability_zero_is_identity_and_bad_args():
    model = tiny_backbone("vit").train()
    x = torch.randn(2, 3, 28, 28)
    ref = model(pixel_values=x).last_hidden_state
    add_dsu_augmentation(model, p=0.0)
    assert torch.equal(model(pixel_values=x).last_hidden_state, ref)
    for kwargs in ({"p": 1.5}, {"blocks": [5]}):
        try:
            add_dsu_augmentation(model, **kwargs)
        except ValueError:
            continue
        raise AssertionError(f"{kwargs} accepted")


# SAM's blocks output [B, H, W, C] maps (no prefix); EoMT's last `num_blocks` blocks carry its queries in front of
# CLS + registers. Tiny configs as in tests/backbones/test_registry.py's TINY table.
_SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
_SPECIAL = {
    "sam_vision_model": (
        lambda: T.SamVisionConfig(**_SHAPE, mlp_dim=64, output_channels=16, global_attn_indexes=[1], window_size=2),
        [0, 0],
    ),
    "eomt": (
        lambda: T.EomtConfig(**_SHAPE, intermediate_size=64, num_blocks=1, num_queries=3, num_register_tokens=2),
        [1 + 2, 1 + 2 + 3],  # CLS + 2 registers; the 3 queries join in front of the last block
    ),
}


@pytest.mark.parametrize("name", sorted(_SPECIAL))
def test_sam_and_eomt_perturb_only_their_patch_tokens(name):
    from fishertune.baselines._common import first_tensor
    from fishertune.models.backbone import build_backbone

    make_config, prefix = _SPECIAL[name]
    torch.manual_seed(0)
    model = build_backbone(make_config()).train()
    blocks = find_blocks(model)[0]
    handle = add_dsu_augmentation(model, p=1.0, generator=torch.Generator().manual_seed(5))
    raw, out = {}, {}
    for i, block in enumerate(blocks):  # raw: before the augmentation's hook (prepended later), out: after it
        block.register_forward_hook(lambda m, a, o, i=i: raw.__setitem__(i, first_tensor(o)), prepend=True)
        block.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(i, first_tensor(o)))
    model(pixel_values=torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    replay = torch.Generator().manual_seed(5)
    for i, k in enumerate(prefix):
        assert out[i].shape == raw[i].shape
        torch.rand((), generator=replay)  # the block's coin
        if raw[i].dim() == 4:  # SAM: every position of the [B, H, W, C] map is a patch token
            b, c = raw[i].shape[0], raw[i].shape[-1]
            expected = dsu_perturb(raw[i].reshape(b, -1, c), generator=replay).reshape(raw[i].shape)
        else:
            assert raw[i].shape[1] == k + (32 // 8) ** 2
            assert torch.equal(out[i][:, :k], raw[i][:, :k])  # CLS, registers (and EoMT's queries) untouched
            expected = torch.cat([raw[i][:, :k], dsu_perturb(raw[i][:, k:], generator=replay)], dim=1)
        assert torch.equal(out[i], expected)  # DSU's statistics over exactly the patch tokens
        assert not torch.allclose(out[i], raw[i])
    handle.remove()
