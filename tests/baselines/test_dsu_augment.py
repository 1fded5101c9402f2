"""Training-time DSU on patch tokens: train-only, CLS/registers excluded, DSU's formula."""

import torch

from fishertune.baselines import add_dsu_augmentation, dsu_perturb

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
