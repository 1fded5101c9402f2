"""Eq. 4, 9: the diagonal Fisher against closed forms and hand-computed per-sample gradients."""

import pytest
import torch
import torch.nn.functional as F
from fisher_helpers import PixelClassifier, SoftmaxRegression, image_batches, tiny_dinov2
from peft import get_peft_model

import fishertune  # noqa: F401  (registers the PEFT method)
from fishertune import FisherTuneConfig
from fishertune.fisher import EstimationConfig, estimate_scores

DIAG = dict(criterion="fim", estimator="diagonal")


def _batches(x, y, bs, repeats):
    return [
        {"pixel_values": x[i : i + bs], "labels": y[i : i + bs]} for _ in range(repeats) for i in range(0, len(x), bs)
    ]


def test_true_fisher_converges_to_closed_form(softmax_data):
    x, y = softmax_data
    model = SoftmaxRegression()
    repeats = 60
    est = estimate_scores(
        model,
        _batches(x, y, 64, repeats),
        {"fc": model.fc.weight},
        EstimationConfig(fisher_type="true", num_batches=10_000, **DIAG),
    )["fc"]
    with torch.no_grad():
        p = torch.softmax(model(x), -1)  # [N, C]
    v = p * (1 - p)
    exact = (v[:, :, None] * x[:, None, :] ** 2).mean(0)  # E_x[x_j^2 p_c (1 - p_c)]
    # Standard error of the one-draw-per-sample Monte Carlo mean: Var_y[(p_c - 1[y=c])^2] = v((1-p)^3 + p^3) - v^2.
    var_y = (v * ((1 - p) ** 3 + p**3) - v**2)[:, :, None] * x[:, None, :] ** 4
    se = (var_y.sum(0) * repeats).sqrt() / (repeats * len(x))
    assert torch.all((est - exact).abs() <= 5 * se + 1e-7), (est - exact) / se
    # The bound is tight enough to fail: the empirical Fisher is a different quantity here.
    emp = estimate_scores(
        model, _batches(x, y, 16, 1), {"fc": model.fc.weight}, EstimationConfig(fisher_type="empirical", **DIAG)
    )["fc"]
    assert not torch.all((emp - exact).abs() <= 5 * se + 1e-7)


def test_empirical_fisher_is_mean_of_squared_per_sample_grads(softmax_data):
    x, y = softmax_data
    model = SoftmaxRegression()
    est = estimate_scores(
        model, _batches(x, y, 16, 1), {"fc": model.fc.weight}, EstimationConfig(fisher_type="empirical", **DIAG)
    )["fc"]
    ref = torch.zeros_like(model.fc.weight)
    for i in range(len(x)):
        g = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), model.fc.weight)[0]
        ref += g**2
    torch.testing.assert_close(est, ref / len(x), rtol=1e-5, atol=1e-9)
    # Not the square of the batch gradient (that would be ~B times smaller here).
    gb = (
        sum(
            torch.autograd.grad(F.cross_entropy(model(x[i : i + 16]), y[i : i + 16]), model.fc.weight)[0] ** 2
            for i in range(0, 64, 16)
        )
        / 4
    )
    assert not torch.allclose(est, gb, rtol=0.1)


@pytest.mark.parametrize("unit", ["pixel", "sample"])
def test_segmentation_per_pixel_mean_with_ignore(unit):
    """Per sample: the squared gradient of the per-pixel-mean loss, times its number of valid pixels
    for the "pixel" unit (18 and 30 here), and a sample with no valid pixel is not counted."""
    model = PixelClassifier()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 5, 6, generator=g)
    y = torch.randint(0, 4, (3, 5, 6), generator=g)
    y[0, :2] = 255
    y[2] = 255  # a sample with no valid pixel is not counted
    est = estimate_scores(
        model,
        [{"pixel_values": x, "labels": y}],
        {"proj": model.proj.weight},
        EstimationConfig(fisher_type="empirical", fisher_unit=unit, **DIAG),
    )["proj"]
    ref = torch.zeros_like(model.proj.weight)
    for i, n_valid in ((0, 18), (1, 30)):
        loss = F.cross_entropy(model.semantic_logits(model(x[i : i + 1]), (5, 6)), y[i : i + 1], ignore_index=255)
        ref += torch.autograd.grad(loss, model.proj.weight)[0] ** 2 * (n_valid if unit == "pixel" else 1)
    torch.testing.assert_close(est, ref / 2, rtol=1e-5, atol=1e-10)


def test_peft_model_with_active_entries_matches_merged_reference():
    base = tiny_dinov2(layers=1)
    peft_model = get_peft_model(base, FisherTuneConfig(init_criterion="random", init_weights=False, delta_max=0.3))
    weights = peft_model.fishertune_target_weights()
    assert peft_model.num_active() > 0
    batch = image_batches(1, b=3)[0]
    est = estimate_scores(peft_model, [batch], weights, EstimationConfig(fisher_type="empirical", **DIAG))
    # Reference: per-sample autograd on a merged copy (W + delta), one sample at a time.
    merged = get_peft_model(
        tiny_dinov2(layers=1), FisherTuneConfig(init_criterion="random", init_weights=False, delta_max=0.3)
    ).merge_and_unload()
    mw = {n: merged.get_submodule(n).weight.requires_grad_(True) for n in weights}
    ref = {n: torch.zeros_like(w) for n, w in mw.items()}
    for i in range(3):
        loss = F.cross_entropy(merged(pixel_values=batch["pixel_values"][i : i + 1]).logits, batch["labels"][i : i + 1])
        for n, gr in zip(mw, torch.autograd.grad(loss, list(mw.values()))):
            ref[n] += gr**2 / 3
    for n in weights:
        torch.testing.assert_close(est[n], ref[n], rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("estimator", ["diagonal", "variational"])
def test_bf16_autocast_is_finite_and_close(estimator):
    model = tiny_dinov2()
    weights = {n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "fc1"))}
    data = image_batches(3)
    cfg = EstimationConfig(criterion="fim", estimator=estimator, fisher_type="empirical")
    ref = estimate_scores(model, data, weights, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = estimate_scores(model, data, weights, cfg)
    for n in weights:
        assert got[n].dtype == torch.float32 and torch.isfinite(got[n]).all()
        assert torch.corrcoef(torch.stack([got[n].flatten(), ref[n].flatten()]))[0, 1] > 0.9


def test_nan_statistic_names_the_parameter():
    model = SoftmaxRegression()
    bad = [{"pixel_values": torch.tensor([[float("nan"), 0.0, 1.0]]), "labels": torch.tensor([0])}]
    with pytest.raises(FloatingPointError, match="'fc'"):
        estimate_scores(model, bad, {"fc": model.fc.weight}, EstimationConfig(**DIAG))


class _Reuse(torch.nn.Module):
    """`a` runs twice per forward, `c` twice with one output dropped, `dead`'s output never reaches the loss, `b`'s
    output is modified in place."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b, self.c, self.dead = (torch.nn.Linear(i, o) for i, o in ((4, 5), (5, 3), (4, 3), (4, 2)))
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)

    def forward(self, x):  # x [B, T, 4]
        h = self.a(x) + self.a(0.5 * x.flip(1))
        self.c(2.0 * x)
        self.dead(x)
        return self.b(torch.tanh(h)).mul_(1.5) + self.c(x)  # in place on a targeted layer's output


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_accumulator_reused_and_dead_layers_match_per_sample_autograd(scale):
    """The squares are formed during the backward as each output gradient arrives: a layer called twice squares
    the sum of its calls' gradients, a dropped call adds nothing, a layer off the loss gets an exact 0."""
    from fishertune.fisher.diagonal import GradSquareAccumulator, linear_owners

    model = _Reuse()
    weights = {n: m.weight for n, m in model.named_children()}
    x = torch.randn(6, 7, 4, generator=torch.Generator().manual_seed(1))
    acc = GradSquareAccumulator(linear_owners(model, weights), weights)
    for rows in (slice(0, 4), slice(4, 6)):  # two batches of different sizes
        with acc.capture():
            out = model(x[rows])
        acc.accumulate((out.square().sum(dim=(1, 2)) * scale).sum(), out.shape[0], out.shape[0], scale)
    got = acc.finalize()
    ref = {n: torch.zeros_like(w) for n, w in weights.items()}
    for i in range(len(x)):
        grads = torch.autograd.grad(model(x[i : i + 1]).square().sum(), list(weights.values()), allow_unused=True)
        for n, g in zip(weights, grads):
            ref[n] += torch.zeros_like(ref[n]) if g is None else g.square()
    for n in weights:
        torch.testing.assert_close(got[n], ref[n] / len(x), rtol=1e-5, atol=1e-7)
    assert torch.equal(got["dead"], torch.zeros_like(got["dead"]))
    assert all(w.grad is None for w in weights.values())  # no dense weight gradient is ever built
    with pytest.raises(RuntimeError, match="finalized"):  # finalize consumed the sums
        with acc.capture():
            pass
