"""Issue 16: F's unit, Eq. 5's relative eps, Eq. 7's exchange rates and weight readings, against exact values.

Inputs are of order 1 and tolerances are tight, so that a swapped min/max, a dropped eps, a flipped
exponent or a missing weight changes a value the tests compare.
"""

import math

import pytest
import torch
from fisher_helpers import PixelClassifier, image_batches, tiny_dinov2

from fishertune.fisher import (
    EstimationConfig,
    domain_sensitivity,
    dr_fim,
    estimate_scores,
    estimate_statistics,
    fisher_from_precision,
    fisher_sample_weights,
    load_statistics,
    percentile_ranks,
    relative_eps,
    save_statistics,
    scores_from_stats,
)
from fishertune.fisher.criteria import exchange_rate, quantile_value, shift_weight
from fishertune.fisher.passes import EstimationStats, PerBatchDelta, ShiftWeight

# Two "layers" of hand-picked statistics: mean(F) = 2, so delta_eps = 0.05 gives eps = 0.1.
F = {"a": torch.tensor([4.0, 3.0, 2.0, 1.0]), "b": torch.tensor([0.5, 1.5])}
F_SHIFT = {"a": torch.tensor([4.0, 1.5, 4.0, 2.0]), "b": torch.tensor([1.5, 1.5])}
DF = {"a": torch.tensor([0.0, 1.5 / 1.6, 2.0 / 2.1, 1.0 / 1.1]), "b": torch.tensor([1.0 / 0.6, 0.0])}  # Eq. 5, eps 0.1
W = 0.5


def _cfg(**kw):
    return EstimationConfig(**{"estimator": "diagonal", "delta_eps": 0.05, **kw})


def _close(got: dict, want: dict, **tol):
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n].float(), want[n].float(), **(tol or {"rtol": 1e-6, "atol": 1e-7}))


def _order(scores: dict) -> list[str]:
    flat = [(f"{n}{i}", float(v)) for n, t in scores.items() for i, v in enumerate(t)]
    return [k for k, _ in sorted(flat, key=lambda kv: -kv[1])]


# -- Eq. 5 -----------------------------------------------------------------------------------------
def test_eq5_hand_computed_and_relative_eps():
    assert relative_eps(F, 0.05) == pytest.approx(0.1, rel=1e-12)
    _close({n: domain_sensitivity(F[n], F_SHIFT[n], 0.1) for n in F}, DF)
    stats = EstimationStats(F, F_SHIFT, weight=W)
    _close(scores_from_stats(stats, _cfg(criterion="delta_fim")), DF)
    # The floor of the variational estimator adds to the denominator: |F - F'| / (min + floor + eps).
    floored = scores_from_stats(EstimationStats(F, F_SHIFT, weight=W, floor=0.4), _cfg(criterion="delta_fim"))
    torch.testing.assert_close(floored["a"][1], torch.tensor(1.5 / 2.0))


# -- Eq. 7: every exchange, on a case where F and dF disagree ----------------------------------------
def test_percentile_ranks_mid_rank_with_ties():
    got = percentile_ranks(DF)  # sorted: 0, 0, .909, .9375, .952, 1.667 -> ties share (0 + 2) / 12
    _close(got, {"a": torch.tensor([2.0, 7.0, 9.0, 5.0]) / 12, "b": torch.tensor([11.0, 2.0]) / 12})
    assert quantile_value(F, 0.5) == 1.5 and quantile_value(F, 1.0) == 4.0 and quantile_value(F, 0.0) == 0.5


def test_percentile_ranks_match_brute_force_on_2d_tensors_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = {
        "w": torch.randint(0, 7, (5, 9), generator=g).float(),
        "v": torch.randint(0, 7, (13,), generator=g).float(),
    }
    every = torch.cat([t.reshape(-1) for t in scores.values()])
    got = percentile_ranks(scores)
    for name, t in scores.items():
        ref = ((every[None] < t.reshape(-1, 1)).sum(1) + (every[None] <= t.reshape(-1, 1)).sum(1)) / (
            2.0 * every.numel()
        )
        torch.testing.assert_close(got[name], ref.float().reshape(t.shape))


def test_rank_exchange_differs_from_both_terms():
    got = dr_fim(F, DF, W, "rank")
    _close(got, {"a": torch.tensor([12.0, 12.5, 11.5, 5.5]) / 12, "b": torch.tensor([6.5, 6.0]) / 12})
    assert _order(got) == ["a1", "a0", "a2", "b0", "b1", "a3"]
    assert _order(got) != _order(F) and _order(got)[:3] != _order(DF)[:3]
    _close(scores_from_stats(EstimationStats(F, F_SHIFT, weight=W), _cfg()), got)  # the default is "rank"


def test_quantile_gamma_and_sum_exchanges():
    # quantile 0.5 of F is 1.5: DRF = F + 1.5 * 0.5 * dF
    q = dr_fim(F, DF, W, "quantile", quantile=0.5)
    _close(q, {n: F[n] + 0.75 * DF[n] for n in F})
    assert _order(q) == ["a0", "a1", "a2", "b0", "a3", "b1"]  # neither F's (b1 > a3 > b0) nor dF's order
    _close(dr_fim(F, DF, W, "sum"), {n: F[n] + 0.5 * DF[n] for n in F})
    _close(dr_fim(F, DF, W, "gamma", gamma=0.2), {n: F[n] + 0.1 * DF[n] for n in F})
    assert exchange_rate(F, "quantile", 0.99, None) == 3.0  # lower order statistic at 0.99 * (6 - 1) = 4.95
    with pytest.raises(ValueError, match="variational"):
        exchange_rate(F, "gamma", 0.5, None)


def test_eq15_printed_form_from_precisions():
    """gamma 0.2, tau 1: Lambda = F / gamma + 1; Eq. 15 = gamma * (Lambda - 1 + w * ratio), ratio with eps/gamma."""
    gamma = 0.2
    prec = {n: F[n] / gamma + 1.0 for n in F}
    prec_s = {n: F_SHIFT[n] / gamma + 1.0 for n in F}
    fisher = {n: fisher_from_precision(prec[n], gamma, 1.0) for n in F}
    stats = EstimationStats(
        fisher, None, weight=W, floor=gamma, gamma=gamma, extra={"precision": prec, "precision_shift": prec_s}
    )
    ratio = {"a": torch.tensor([0.0, 7.5 / 9.0, 10.0 / 11.5, 5.0 / 6.5]), "b": torch.tensor([5.0 / 4.0, 0.0])}
    _close(scores_from_stats(stats, _cfg(criterion="delta_fim", estimator="variational")), ratio, rtol=1e-5, atol=1e-6)
    printed = scores_from_stats(stats, _cfg(estimator="variational", exchange="gamma"))
    _close(printed, {n: gamma * (prec[n] - 1.0 + W * ratio[n]) for n in F}, rtol=1e-5, atol=1e-6)


# -- the weight of Eq. 7 and its two readings ---------------------------------------------------
def test_shift_weight_modes_and_mean():
    assert shift_weight(0.3, -0.1, "abs_mean") == pytest.approx(math.exp(-0.3))
    assert shift_weight(0.3, -0.1, "literal") == pytest.approx(math.exp(0.1))
    w = ShiftWeight("abs_mean")
    assert w.add(None) is None and w.value == 1.0  # a step that perturbed nothing does not count
    assert w.add((0.3, -0.1)) == pytest.approx(math.exp(-0.3))
    w.add((1.0, 0.2))
    assert w.value == pytest.approx((math.exp(-0.3) + math.exp(-1.0)) / 2)


def test_per_batch_reading_weighs_each_batch_before_averaging():
    f1, f1s = {"a": torch.tensor([1.0, 2.0])}, {"a": torch.tensor([2.0, 2.0])}
    f2, f2s = {"a": torch.tensor([3.0, 1.0])}, {"a": torch.tensor([3.0, 3.0])}
    acc = PerBatchDelta(delta_eps=0.1)  # eps_t = 0.1 * mean(F_t): 0.15 then 0.2
    acc.add(f1, f1s, 0.25)
    acc.add(f1, f1s, None)  # no block perturbed: not counted
    acc.add(f2, f2s, 0.75)
    d1 = torch.tensor([1 / 1.15, 0.0], dtype=torch.float64)
    d2 = torch.tensor([0.0, 2 / 1.2], dtype=torch.float64)
    torch.testing.assert_close(acc.sums["a"], 0.25 * d1 + 0.75 * d2)
    assert acc.count == 2
    stats = EstimationStats({"a": torch.tensor([2.0, 1.5])}, None, weight=0.5, weighted_delta=acc.sums, num_weighted=2)
    got = scores_from_stats(stats, _cfg(exchange="sum", shift_weight_reading="per_batch"))
    # F + (1/T) sum_t w_t dF_t
    torch.testing.assert_close(got["a"], (torch.tensor([2.0, 1.5]) + (0.25 * d1 + 0.75 * d2) / 2).float())
    with pytest.raises(ValueError, match="per_batch"):
        scores_from_stats(EstimationStats(F, F_SHIFT), _cfg(shift_weight_reading="per_batch"))


# -- F's unit ----------------------------------------------------------------------------------------
def test_fisher_sample_weights():
    n = torch.tensor([0, 1, 4, 9])
    torch.testing.assert_close(fisher_sample_weights(n, "pixel"), torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(fisher_sample_weights(n, "pixel", power=1.0), torch.tensor([0.0, 1.0, 4.0, 9.0]))
    torch.testing.assert_close(fisher_sample_weights(n, "sample"), torch.tensor([0.0, 1.0, 1.0, 1.0]))


def _iid_pixel_images(size: int, n: int, seed: int, features: torch.Tensor):
    """Every pixel takes one of ``features`` (rows) uniformly at random; all labels valid."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(features), (n, size, size), generator=g)
    return features[pick].permute(0, 3, 1, 2).contiguous(), torch.zeros(n, size, size, dtype=torch.long)


@pytest.mark.parametrize("size", [4, 16])
def test_pixel_fisher_is_the_closed_form_one_pixel_fisher_at_any_crop_size(size):
    """True Fisher of a per-pixel softmax regression: the one-pixel Fisher of W[c, d] is p_c (1 - p_c) x_d^2,
    so with pixels drawn from 3 feature vectors the population value is their mean, whatever the crop size.
    The "pixel" unit estimates exactly that (Monte Carlo, ~2% s.e.); the "sample" unit is 1/size^2 of it."""
    model = PixelClassifier()
    features = torch.tensor([[1.0, -0.5, 0.2], [0.3, 1.2, -0.8], [-1.0, 0.4, 0.9]])
    with torch.no_grad():
        p = torch.softmax(model.proj(features), -1)  # [3, K]
    exact = ((p * (1 - p))[:, :, None] * features[:, None, :] ** 2).mean(0)  # [K, 3]
    x, y = _iid_pixel_images(size, 3000, seed=size, features=features)
    batches = [{"pixel_values": x[i : i + 250], "labels": y[i : i + 250]} for i in range(0, len(x), 250)]
    weights = {"proj": model.proj.weight}
    got = estimate_scores(
        model, batches, weights, EstimationConfig(criterion="fim", estimator="diagonal", num_batches=len(batches))
    )["proj"]
    torch.testing.assert_close(got, exact, rtol=0.1, atol=0.0)
    per_sample = estimate_scores(
        model,
        batches,
        weights,
        EstimationConfig(criterion="fim", estimator="diagonal", num_batches=len(batches), fisher_unit="sample"),
    )["proj"]
    torch.testing.assert_close(per_sample * size * size, exact, rtol=0.1, atol=0.0)


# -- the data-derived gamma and the public API on a small model -----------------------------------
def test_gamma_from_the_first_batch():
    model = tiny_dinov2(layers=1)
    weights = {n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "fc1"))}
    batch = image_batches(1)[0]
    diag = estimate_scores(model, [batch], weights, EstimationConfig(criterion="fim", estimator="diagonal"))
    cfg = EstimationConfig(criterion="fim", prior_floor=0.01, tau=1e-2)
    stats = estimate_statistics(model, [batch] * 3, weights, cfg)
    mean_f = sum(float(v.double().sum()) for v in diag.values()) / sum(v.numel() for v in diag.values())
    assert stats.gamma == pytest.approx(0.01 * 1e-4 * mean_f, rel=1e-5)
    assert stats.floor == pytest.approx(0.01 * mean_f, rel=1e-5)


def test_default_drf_mask_overlaps_neither_term_fully():
    """Through the public API: the default DR-FIM's top 5% is neither F's nor dF's (Jaccard <= 0.8 each)."""
    model = tiny_dinov2(layers=2)
    weights = {
        n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj", "fc1", "fc2"))
    }
    data = image_batches(6, b=8)
    masks = {}
    for crit in ("fim", "delta_fim", "dr_fim"):
        s = estimate_scores(model, data, weights, EstimationConfig(criterion=crit))
        flat = torch.cat([v.flatten() for v in s.values()])
        k = int(round(0.05 * flat.numel()))
        m = torch.zeros(flat.numel(), dtype=torch.bool)
        m[flat.argsort(descending=True, stable=True)[:k]] = True
        masks[crit] = m

    def jaccard(a, b):
        return int((a & b).sum()) / int((a | b).sum())

    assert jaccard(masks["dr_fim"], masks["fim"]) <= 0.8, jaccard(masks["dr_fim"], masks["fim"])
    assert jaccard(masks["dr_fim"], masks["delta_fim"]) <= 0.8, jaccard(masks["dr_fim"], masks["delta_fim"])
    assert jaccard(masks["fim"], masks["delta_fim"]) < 0.5


def test_statistics_round_trip_scores_every_exchange(tmp_path):
    stats = EstimationStats(
        F, F_SHIFT, weight=W, floor=0.0, weighted_delta={n: 2 * d.double() for n, d in DF.items()}, num_weighted=2
    )
    path = save_statistics(stats, tmp_path / "stats.safetensors")
    back = load_statistics(path)
    for exchange in ("rank", "quantile", "sum"):
        for reading in ("mean", "per_batch"):
            cfg = _cfg(exchange=exchange, shift_weight_reading=reading)
            _close(scores_from_stats(back, cfg), scores_from_stats(stats, cfg))
    with pytest.raises(ValueError, match="not a fishertune statistics file"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        load_statistics(tmp_path / "other.safetensors")


def test_config_defaults_and_refusals():
    cfg = EstimationConfig()
    assert (cfg.dsu_p, cfg.exchange, cfg.fisher_unit, cfg.gamma, cfg.shift_weight_reading) == (
        0.5,
        "rank",
        "pixel",
        None,
        "mean",
    )
    with pytest.raises(ValueError, match="estimator='variational'"):
        EstimationConfig(estimator="diagonal", exchange="gamma")
    with pytest.raises(ValueError, match="per_batch"):
        EstimationConfig(variational_gradient="reparam", shift_weight_reading="per_batch")
    with pytest.raises(ValueError, match="exchange_quantile"):
        EstimationConfig(exchange_quantile=1.5)
    with pytest.raises(ValueError, match="use one of"):
        EstimationConfig(exchange="normalized")
