"""Micro-batched phase 2 (`EstimationConfig.micro_batch_size`) equals the whole batch.

"Same result" means: the same per-sample label draws (Eq. 4), the same DSU coins and eps (Eq. 6, drawn for
the whole batch and sliced) and the same DSU batch statistics Sigma_mu, Sigma_sigma (the whole batch's, recorded
by a no-grad forward), so the statistics differ only by float rounding: the fp32 forward of a smaller batch
(different kernels) and the order of the fp64 sums. Measured: <= 4e-6 relative on
the diagonal F and F', <= 8e-6 on the variational Lambda. Scores are compared
under `exchange="quantile"`, which is continuous in F and dF; the default rank exchange turns such rounding
into swaps of near-tied neighbours (differences below one rank step, 1/N)."""

import pytest
import torch
from fisher_helpers import image_batches, tiny_dinov2

from fishertune.fisher import EstimationConfig, estimate_statistics, scores_from_stats

_RTOL = 1e-5


def _stats(estimator, micro, **kw):
    model = tiny_dinov2(layers=2)
    weights = {n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj", "fc1", "fc2"))}
    cfg = EstimationConfig(
        criterion="dr_fim",
        estimator=estimator,
        num_batches=2,
        dsu_p=1.0,
        micro_batch_size=micro,
        exchange="quantile",
        **kw,
    )
    stats = estimate_statistics(model, image_batches(2, b=5), weights, cfg, disable_tqdm=True)
    return stats, scores_from_stats(stats, cfg)


def _close(a, b):
    """Within _RTOL of each entry or of the largest entry of all tensors: the variational F = gamma (Lambda - tau^-2)
    is made from an fp32 Lambda, so F far below the prior floor (here whole q_proj tensors) is resolved only to
    ~1e-7 of the floor."""
    scale = max(float(t.abs().max()) for t in b.values())
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=_RTOL, atol=_RTOL * scale)


@pytest.mark.parametrize(
    "estimator,micro,draw", [("diagonal", 1, "channel"), ("variational", 2, "channel"), ("variational", 3, "scalar")]
)
def test_micro_batched_equals_whole_batch(estimator, micro, draw):
    (whole, whole_scores), (parts, part_scores) = (
        _stats(estimator, None, dsu_draw=draw),
        _stats(estimator, micro, dsu_draw=draw),
    )
    assert whole.batch_weights == parts.batch_weights  # the same DSU draws, bit for bit
    _close(parts.fisher, whole.fisher)
    _close(parts.fisher_shift, whole.fisher_shift)
    for key in ("precision", "precision_shift") if estimator == "variational" else ():
        for n, lam in whole.extra[key].items():  # Lambda itself, entry by entry
            torch.testing.assert_close(parts.extra[key][n], lam, rtol=_RTOL, atol=0)
    _close(part_scores, whole_scores)
    for n in whole_scores:  # and the same ranking
        assert torch.equal(
            part_scores[n].flatten().argsort()[-5:].sort().values,
            whole_scores[n].flatten().argsort()[-5:].sort().values,
        )


def test_micro_batched_per_batch_reading_and_empirical():
    kw = dict(shift_weight_reading="per_batch", fisher_type="empirical")
    (whole, whole_scores), (parts, part_scores) = _stats("diagonal", None, **kw), _stats("diagonal", 2, **kw)
    _close(parts.weighted_delta, whole.weighted_delta)
    _close(part_scores, whole_scores)


def test_micro_batch_size_is_validated():
    with pytest.raises(ValueError, match="micro_batch_size must be >= 1"):
        EstimationConfig(micro_batch_size=0)
    with pytest.raises(ValueError, match="variational_gradient='expected'"):
        EstimationConfig(micro_batch_size=2, variational_gradient="reparam")


def test_float32_accumulator_holds_float32_sums_and_stays_close():
    from fishertune.fisher.diagonal import GradSquareAccumulator, linear_owners

    model = tiny_dinov2()
    weights = {n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "fc2"))}
    acc = GradSquareAccumulator(linear_owners(model, weights), weights, torch.float32)
    assert all(t.dtype == torch.float32 for t in acc.sums.values())  # 4 B per entry, not 8
    out = {}
    for dtype in ("float64", "float32"):
        cfg = EstimationConfig(criterion="fim", estimator="diagonal", num_batches=2, accumulator_dtype=dtype)
        out[dtype] = estimate_statistics(model, image_batches(2), weights, cfg, disable_tqdm=True).fisher
    _close(out["float32"], out["float64"])
    assert any(not torch.equal(out["float32"][n], out["float64"][n]) for n in out["float64"])  # the option acts
