"""Eq. 5, 7 and the criteria: a planted style-only pathway, random groups, artifacts."""

import pytest
import torch
from fisher_helpers import image_batches, tiny_dinov2
from peft import get_peft_model
from torch import nn

import fishertune  # noqa: F401
from fishertune import FisherTuneConfig
from fishertune.fisher import (
    EstimationConfig,
    estimate_scores,
    load_scores,
    plot_sensitivity_map,
    save_scores,
    sensitivity_table,
)
from fishertune.tuner.data_free import qkv_group_mask


class Echo(nn.Module):
    def forward(self, x):
        return x * 1.0


class Planted(nn.Module):
    """Tokens [B, 1 + T, 4]. Channels 0-1 carry the task. Channels 2-3 have opposite means in every clean
    sample and feed ReLU units through equal weights with a negative bias, so the units are dead for every
    clean input: the `style` weights have exactly zero Fisher on clean data and matter only when DSU's
    independent per-channel shifts (Eq. 6) break the balance."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block = Echo()
        self.task = nn.Linear(2, 3, bias=False)
        self.style = nn.Linear(2, 4)
        self.out = nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            self.style.weight.fill_(1.0)
            self.style.bias.fill_(-0.3)
            self.out.weight.normal_(std=2.0)

    def forward(self, pixel_values):
        pooled = self.block(pixel_values)[:, 1:].mean(1)
        return self.task(pooled[:, :2]) + self.out(torch.relu(self.style(pooled[:, 2:])))


def planted_batches(n=8, b=16):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        means = torch.rand(b, 1, 4, generator=g) - 0.5  # per-sample channel means in [-0.5, 0.5]
        means[..., 3] = -means[..., 2]
        x = means + 0.1 * torch.randn(b, 9, 4, generator=g)
        x = x - x[:, 1:].mean(1, keepdim=True) + means  # patch-token means exactly `means`
        y = (means[:, 0, 0] > 0).long() + (means[:, 0, 1] > 0).long()
        out.append({"pixel_values": x, "labels": y})
    return out


@pytest.mark.parametrize("estimator", ["diagonal", "variational"])
def test_planted_style_weights(estimator):
    """dF finds the planted style-only weights; the literal Eq. 7 sum ranks like dF (F << 1)."""
    model = Planted()
    weights = {"task": model.task.weight, "style": model.style.weight}
    data = planted_batches()
    ranks = {}
    for crit in ("fim", "delta_fim", "dr_fim"):
        s = estimate_scores(
            model,
            data,
            weights,
            EstimationConfig(criterion=crit, estimator=estimator, exchange="sum"),
            blocks=[model.block],
            num_prefix_tokens=1,
        )
        allv = torch.cat([s["task"].flatten(), s["style"].flatten()])
        rank = allv.argsort(descending=True).argsort()  # 0 = best
        ranks[crit] = rank[s["task"].numel() :].float().mean()  # mean rank of the style entries
        if crit == "fim":
            # fim ranks the task weights first (the variational F of a zero-Fisher entry is fp32 rounding of the prior)
            assert s["style"].max() < 1e-5 * s["task"].min()
    assert ranks["dr_fim"] < ranks["fim"] and ranks["delta_fim"] < ranks["fim"], ranks
    assert ranks["dr_fim"] == 3.5  # the 8 style entries take exactly the top 8 of 14 (mean rank of 0..7)


def test_random_groups_and_magnitude():
    model = tiny_dinov2()
    weights = {n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj", "fc1"))}
    s = estimate_scores(model, [], weights, EstimationConfig(criterion="random_k"))
    ink = torch.cat([v.flatten() for n, v in s.items() if n.endswith("k_proj")])
    out = torch.cat([v.flatten() for n, v in s.items() if not n.endswith("k_proj")])
    assert ink.min() > out.max()
    again = estimate_scores(model, [], weights, EstimationConfig(criterion="random_k"))
    other = estimate_scores(model, [], weights, EstimationConfig(criterion="random_k", seed=1))
    assert all(torch.equal(s[n], again[n]) for n in s) and not all(torch.equal(s[n], other[n]) for n in s)
    mag = estimate_scores(model, [], weights, EstimationConfig(criterion="magnitude"))
    assert all(torch.equal(mag[n], w.detach().abs()) for n, w in weights.items())
    fused = qkv_group_mask("vision_encoder.layers.0.attn.qkv", torch.Size([6, 2]), "k")
    assert fused[2:4].all() and fused.sum() == 4


def test_config_validation_says_how_to_fix():
    with pytest.raises(ValueError, match="use one of"):
        EstimationConfig(criterion="fisher")
    with pytest.raises(ValueError, match="gamma must be > 0"):
        EstimationConfig(gamma=0.0)
    with pytest.raises(ValueError, match="probability"):
        EstimationConfig(dsu_p=1.5)


def test_scores_roundtrip_and_sensitivity_map(tmp_path):
    model = get_peft_model(tiny_dinov2(), FisherTuneConfig(delta_max=0.1))
    weights = model.fishertune_target_weights()
    scores = estimate_scores(model, image_batches(2), weights, EstimationConfig(criterion="fim", estimator="diagonal"))
    path = save_scores(scores, tmp_path / "scores.safetensors")
    loaded = load_scores(path)
    assert list(loaded) == list(scores) and all(torch.equal(loaded[n], scores[n]) for n in scores)
    model.select(loaded)
    layers = {n: m for n, m in model.base_model.model.named_modules() if n in weights}
    selected = {n: m.fishertune_indices["default"] for n, m in layers.items() if "default" in m.fishertune_indices}
    mean, frac, blocks = sensitivity_table(scores, selected)
    assert blocks == 2 and mean.shape == (4, 2)
    q0 = "dinov2.encoder.layer.0.attention.q_proj"
    assert torch.isclose(mean[0, 0], scores[q0].mean())
    assert torch.isclose(frac[0, 0], torch.tensor(selected.get(q0, torch.empty(0)).numel() / scores[q0].numel()))
    png = plot_sensitivity_map(scores, selected, tmp_path / "map.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
