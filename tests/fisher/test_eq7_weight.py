"""Eq. 6-7 as the paper writes them (`dsu_draw="scalar"`): one eps_mu, eps_sigma per batch, and that batch's dF
weighted by its own w = exp(-(|eps_mu| + |eps_sigma|)); checked against the draws replayed by hand."""

import math

import pytest
import torch
from fisher_helpers import image_batches, tiny_dinov2
from torch import nn

from fishertune.fisher import EstimationConfig, estimate_statistics, load_statistics, passes, save_statistics
from fishertune.fisher.perturb import DSUHooks


def _replay(seed: int, steps: int, blocks: int, p: float = 1.0):
    """The (eps_mu, eps_sigma) pair of each step, drawn as DSUHooks(draw="scalar") draws them: per block a coin,
    and at the step's first block the pair."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(steps):
        pair = None
        for _ in range(blocks):
            torch.rand((), generator=g)
            if pair is None:
                pair = (float(torch.randn((), generator=g)), float(torch.randn((), generator=g)))
        pairs.append(pair)
    return pairs


def test_scalar_draw_perturbs_every_sample_channel_and_block_by_one_pair():
    torch.manual_seed(0)
    blocks = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    x = torch.randn(4, 5, 6)
    dsu = DSUHooks(
        list(blocks),
        num_prefix=1,
        p=1.0,
        eps=1e-6,
        generator=torch.Generator().manual_seed(7),
        record=True,
        draw="scalar",
    )
    (a, b), (a2, b2) = _replay(7, 2, 2)
    with dsu, torch.no_grad():
        dsu.enabled = True
        dsu.new_draws()
        blocks(x)
        shift = dsu.step_shift()
        rec = dsu.records[0]
        # Eq. 6 by hand with the scalar pair: x' = (sigma + b Sigma_sigma) (x - mu) / sigma + mu + a Sigma_mu
        t = rec["x"]
        mu, sigma = t.mean(1), (t.var(1) + 1e-6).sqrt()
        s_mu, s_sigma = (mu.var(0) + 1e-6).sqrt(), (sigma.var(0) + 1e-6).sqrt()
        expected = (sigma + b * s_sigma)[:, None] * (t - mu[:, None]) / sigma[:, None] + (mu + a * s_mu)[:, None]
        torch.testing.assert_close(rec["x_new"], expected, rtol=1e-5, atol=1e-5)
        for r in dsu.records.values():
            assert torch.all(r["eps_mu"] == a) and torch.all(r["eps_sigma"] == b)
        dsu.new_draws()
        blocks(x)
        shift2 = dsu.step_shift()
    assert shift == pytest.approx((abs(a) + abs(b), a + b), rel=1e-6)
    assert shift2 == pytest.approx((abs(a2) + abs(b2), a2 + b2), rel=1e-6)
    assert abs(a - a2) > 1e-3  # a new batch, a new shift


def test_each_batch_dF_gets_its_own_drawn_weight(monkeypatch, tmp_path):
    seen = []
    original = passes.PerBatchDelta.add

    def spy(self, fisher_t, fisher_shift_t, weight):
        seen.append(weight)
        return original(self, fisher_t, fisher_shift_t, weight)

    monkeypatch.setattr(passes.PerBatchDelta, "add", spy)
    model = tiny_dinov2(layers=2)
    weights = {n: p for n, p in model.named_parameters() if n.endswith("q_proj.weight") or n.endswith("fc1.weight")}
    config = EstimationConfig(
        criterion="delta_fim",
        estimator="diagonal",
        num_batches=4,
        dsu_p=1.0,
        dsu_draw="scalar",
        shift_weight_reading="per_batch",
        seed=3,
    )
    stats = estimate_statistics(model, image_batches(4), weights, config, disable_tqdm=True)
    hand = [math.exp(-(abs(a) + abs(b))) for a, b in _replay(config.seed + 1, 4, 2)]
    assert seen == pytest.approx(hand, rel=1e-6)
    assert stats.batch_weights == pytest.approx(hand, rel=1e-6)
    assert stats.weight == pytest.approx(sum(hand) / 4, rel=1e-6)
    assert max(hand) - min(hand) > 0.05  # the weight follows the draw, it is no constant
    save_statistics(stats, tmp_path / "stats.safetensors")  # the record of the draws' weights is kept
    assert load_statistics(tmp_path / "stats.safetensors").batch_weights == pytest.approx(hand, rel=1e-6)
    # the printed sign: exp(-(eps_mu + eps_sigma)), which can exceed 1
    literal = estimate_statistics(
        model,
        image_batches(4),
        weights,
        EstimationConfig(**{**config.__dict__, "shift_weight": "literal"}),
        disable_tqdm=True,
    )
    assert literal.batch_weights == pytest.approx(
        [math.exp(-(a + b)) for a, b in _replay(config.seed + 1, 4, 2)], rel=1e-6
    )


def test_channel_draw_stays_the_default_and_draw_is_validated():
    assert EstimationConfig().dsu_draw == "channel"
    with pytest.raises(ValueError, match="dsu_draw='batch' is not supported"):
        EstimationConfig(dsu_draw="batch")
    with pytest.raises(ValueError, match="draw must be one of"):
        DSUHooks([], 0, draw="sample")
