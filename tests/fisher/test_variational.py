"""Eq. 10-15: the variational optimum Lambda = H / gamma + tau^-2 (Eq. 14) on known curvature."""

import math

import pytest
import torch
from fisher_helpers import SoftmaxRegression

from fishertune.fisher import EstimationConfig, estimate_scores, fisher_from_precision, kl_divergence
from fishertune.fisher.variational import (
    PrecisionFit,
    elbo_log_var_grad,
    expected_data_grad,
    reparam_data_grad,
    variational_delta,
)

H = torch.tensor([0.0, 1e-9, 1e-8, 1e-6, 1e-4, 1e-2])  # spans the floor gamma/tau^2 = 1e-9 used below


@pytest.mark.parametrize("mode", ["expected", "reparam"])
def test_quadratic_loss_recovers_hessian(mode):
    cfg = EstimationConfig(gamma=1e-15)
    steps = 200 if mode == "expected" else 4000
    fit = PrecisionFit({"w": H.shape}, cfg.gamma, cfg.tau, cfg.variational_lr, steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        if mode == "expected":
            fit.update({"w": expected_data_grad(fit.log_var["w"], H)})
        else:  # L = 1/2 sum H (theta - c)^2: gradient difference at theta_hat +/- delta is exactly 2 H delta
            xi = torch.randn(H.shape, generator=gen)
            delta = fit.offsets({"w": xi})["w"]
            fit.update({"w": reparam_data_grad(fit.log_var["w"], xi, 2 * H * delta)})
    lam = fit.precision()["w"]
    assert torch.equal(fit.precision(release=True)["w"], lam) and not fit.log_var and not fit.s_sum  # state freed
    expected = H / cfg.gamma + cfg.tau**-2  # Eq. 14
    rtol = 1e-4 if mode == "expected" else 0.1  # sampled: chi^2(1) noise, ~2% s.e. after 2000 averaged steps
    torch.testing.assert_close(lam, expected, rtol=rtol, atol=0.0)
    recovered = fisher_from_precision(lam, cfg.gamma, cfg.tau)  # Eq. 15's first term / Eq. 14
    assert torch.allclose(recovered[3:], H[3:], rtol=rtol * 1.1)
    assert recovered[0] == 0.0  # no curvature: stays exactly at the prior


def test_elbo_gradient_matches_autograd_of_eq11_13():
    """The analytic d/d(log s) equals autograd of E_q[L] (closed form) + gamma * KL (Eq. 13)."""
    gamma, tau = 1e-3, 0.1
    lv = torch.tensor([-6.0, -5.0, -3.0], requires_grad=True)
    h = torch.tensor([1.0, 3.0, 0.5])
    theta_hat, theta_pt = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.0, 0.2, 0.1])
    elbo = 0.5 * (h * lv.exp()).sum() + gamma * kl_divergence(lv, theta_hat, theta_pt, tau)
    (auto,) = torch.autograd.grad(elbo, lv)
    manual = elbo_log_var_grad(lv.detach(), expected_data_grad(lv.detach(), h), gamma, tau)
    torch.testing.assert_close(manual, auto)


def test_eq15_ratio_hand_computed():
    """Order-1 inputs: gamma 0.5, tau 1 (floor gamma/tau^2 = 0.5), eps 0.1 (eps/gamma = 0.2)."""
    lam = torch.tensor([3.0, 2.0, 6.0, 1.5])
    lam_s = torch.tensor([2.0, 2.0, 7.0, 4.0])
    ratio = variational_delta(lam, lam_s, 0.5, 0.1)
    torch.testing.assert_close(ratio, torch.tensor([1 / 2.2, 0.0, 1 / 6.2, 2.5 / 1.7]), rtol=1e-6, atol=0)
    torch.testing.assert_close(fisher_from_precision(lam, 0.5, 1.0), torch.tensor([1.0, 0.5, 2.5, 0.25]))


def test_variational_end_to_end_recovers_eq9_on_fixed_data(softmax_data):
    """Through estimate_scores: on a repeated batch the batch Fisher is constant, so the ELBO optimum
    (Eq. 14) gives back exactly Eq. 9's mean of squared per-sample gradients."""
    x, y = softmax_data
    model = SoftmaxRegression()
    data = [{"pixel_values": x, "labels": y}] * 40
    got = estimate_scores(
        model,
        data,
        {"fc": model.fc.weight},
        EstimationConfig(criterion="fim", estimator="variational", gamma=1e-9, tau=1e-2, fisher_type="empirical"),
    )["fc"]
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    # Per-sample squares of the ground-truth gradient (what the "expected" mode averages) on fixed data:
    g = (p - torch.nn.functional.one_hot(y, 4))[:, :, None] * x[:, None, :]
    torch.testing.assert_close(got, (g**2).mean(0), rtol=1e-4, atol=1e-9)
    assert math.isfinite(float(got.sum()))
