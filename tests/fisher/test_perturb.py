"""Eq. 6: DSU statistics, layouts, and that estimation leaves the model exactly as it found it."""

import pytest
import torch
from fisher_helpers import image_batches, tiny_dinov2
from torch import nn

from fishertune.fisher import DSUHooks, EstimationConfig, estimate_scores, find_blocks


class Echo(nn.Module):
    def forward(self, x):
        return x * 1.0


def _run(x, p=1.0, prefix=1, eps=1e-6, enabled=True):
    block = Echo()
    with DSUHooks([block], prefix, p=p, eps=eps, generator=torch.Generator().manual_seed(0), record=True) as dsu:
        dsu.enabled = enabled
        dsu.new_draws()
        out = block(x)
    assert not block._forward_hooks
    return out, dsu.records.get(0)


def test_perturbed_tokens_have_the_drawn_mean_and_std():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1 + 7, 3, generator=g) * torch.tensor([1.0, 3.0, 0.2]) + torch.tensor([0.5, -2.0, 4.0])
    out, rec = _run(x)
    tokens = x[:, 1:]
    mu, var = tokens.mean(1), tokens.var(1)
    sigma = (var + 1e-6).sqrt()
    s_mu = (mu.var(0) + 1e-6).sqrt()  # over the batch, as DSU computes it
    s_sigma = (sigma.var(0) + 1e-6).sqrt()
    alpha = mu + rec["eps_mu"] * s_mu
    beta = sigma + rec["eps_sigma"] * s_sigma
    torch.testing.assert_close(rec["alpha"], alpha)
    torch.testing.assert_close(rec["beta"], beta)
    new = out[:, 1:]
    torch.testing.assert_close(new.mean(1), alpha, rtol=1e-5, atol=1e-5)
    # std(x') = beta * std(x) / sqrt(var(x) + eps): exactly beta up to DSU's eps inside sigma.
    torch.testing.assert_close(new.std(1), beta * var.sqrt() / sigma, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, :1], x[:, :1])  # CLS untouched
    assert not torch.allclose(new, tokens)


def test_off_is_identity():
    x = torch.randn(4, 6, 3)
    for kwargs in ({"p": 0.0}, {"enabled": False}):
        out, _ = _run(x, **kwargs)
        assert torch.equal(out, x)


def test_channel_last_maps_without_prefix():
    x = torch.randn(3, 4, 5, 2)
    out, rec = _run(x, prefix=0)
    torch.testing.assert_close(out.reshape(3, 20, 2).mean(1), rec["alpha"], rtol=1e-5, atol=1e-5)


def test_find_blocks_counts_registers():
    blocks, prefix = find_blocks(tiny_dinov2(registers=2))
    assert len(blocks) == 2 and prefix == 3
    assert find_blocks(tiny_dinov2())[1] == 1


def test_eomt_query_tokens_are_prefix_in_its_last_blocks():
    import transformers as T

    cfg = T.EomtConfig(
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        num_queries=5,
        num_blocks=1,
        num_register_tokens=2,
        num_labels=3,
    )
    model = T.EomtForUniversalSegmentation(cfg).eval()
    blocks, prefix = find_blocks(model)
    assert len(blocks) == 3 and prefix == [3, 3, 8]
    with DSUHooks(blocks, prefix, record=True) as dsu:
        dsu.enabled = True
        dsu.new_draws()
        model(pixel_values=torch.randn(2, 3, 32, 32))
    assert all(rec["x"].shape[1] == 16 for rec in dsu.records.values())  # the 4x4 patch tokens only


@pytest.mark.parametrize("estimator", ["diagonal", "variational"])
def test_estimation_leaves_model_untouched(estimator):
    model = tiny_dinov2()
    model.train()
    model.classifier.eval()
    weights = {n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "fc2"))}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.classifier.weight.requires_grad_(False)
    flags["classifier.weight"] = False
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    cfg = EstimationConfig(criterion="dr_fim", estimator=estimator, num_batches=2)
    estimate_scores(model, image_batches(2), weights, cfg)

    def boom(model, outputs, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        estimate_scores(model, image_batches(2), weights, cfg, log_prob_fn=boom)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None, n
        assert p.requires_grad == flags[n], n
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def _light_segmenter():
    import transformers as T

    from fishertune.models import build_model

    torch.manual_seed(0)
    cfg = T.Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         image_size=16, patch_size=4, layerscale_value=1.0)  # fmt: skip
    return build_model("light", cfg, num_labels=3, taps=(1, 2)).eval()


def test_taps_see_the_perturbed_block_output():
    """The segmenters read tapped blocks from `output_hidden_states`, which transformers records with forward
    hooks installed at a model's first forward. DSU must run before them, or a tapped block's perturbation would
    reach the next block but never the head (and the estimate would depend on whether the model ran before)."""
    model = _light_segmenter()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model(pixel_values=x)  # transformers' output-capturing hooks are installed now
    blocks, prefix = find_blocks(model)
    with DSUHooks(blocks[-1:], prefix, p=1.0, generator=torch.Generator().manual_seed(0), record=True) as dsu:
        dsu.enabled = True
        dsu.new_draws()
        out = model.backbone(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1][:, prefix:], dsu.records[0]["x_new"])


@pytest.mark.parametrize("estimator", ["diagonal", "variational"])
def test_estimation_is_repeatable_on_one_model(estimator):
    model = _light_segmenter()
    weights = {n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "fc2"))}
    cfg = EstimationConfig(criterion="dr_fim", estimator=estimator, num_batches=2, dsu_p=1.0)
    g = torch.Generator().manual_seed(1)
    batches = [{"pixel_values": torch.randn(3, 3, 16, 16, generator=g),
                "labels": torch.randint(0, 3, (3, 16, 16), generator=g)}
               for _ in range(2)]  # fmt: skip
    first = estimate_scores(model, batches, weights, cfg)  # on a model that never ran
    second = estimate_scores(model, batches, weights, cfg)
    assert all(torch.equal(first[n], second[n]) for n in first)
