"""Eq. 10-15: variational (stable) estimation of the Fisher and of DR-FIM.

Posterior q(theta) = N(theta_hat, Lambda^-1) per entry, prior p(theta) = N(theta_pt, tau^2)
(Eq. 10); Lambda minimizes ELBO = E_q[L(theta)] + gamma * KL(q || p) (Eq. 11, 13), whose optimum
under a second-order expansion is Lambda = F / gamma + tau^-2 (Eq. 14).

How it is optimized (the paper gives no recipe):
- Parameter: s = Lambda^-1 per entry through rho = log s; theta = theta_hat + sqrt(s) * xi.
- Data term of d ELBO / d rho, two ways (``EstimationConfig.variational_gradient``):
  ``"reparam"``: the reparameterization trick as the paper words it, one xi ~ N(0, I) per step
  evaluated antithetically (theta_hat +/- sqrt(s) xi), which cancels the gradient at theta_hat
  and leaves ``(H delta)_n delta_n / 2``. For a ViT this is noise-dominated: (H delta)_n sums the
  cross-curvature of all N entries, so one draw has SNR ~ 1/sqrt(N) per entry, and the gradient
  change H delta is ~1e-7 of the gradient itself for F ~ 1e-8, at fp32 resolution.
  ``"expected"`` (default): the expectation over xi in closed form under the second-order
  expansion the paper uses for Eq. 14, E_q[L] = L(theta_hat) + 1/2 sum_n F_n s_n, with F_n the
  batch's per-sample-squared Fisher (Eq. 9 on that batch): data term ``F_n s_n / 2``. Same
  objective and optimum, no sampling noise; the prior floor and the clipped log-space steps make
  it robust to heavy-tailed per-batch Fisher values (the step is linear in the batch Fisher only near the optimum).
- Preconditioned step: the ELBO's curvature in rho at the optimum is gamma/2 for EVERY entry,
  whatever its Fisher, so the gradient is divided by gamma/2 and one learning rate fits all
  entries (``lr`` = fraction of the remaining log-distance moved per step). A downward step never
  passes the current batch's optimum (log1p of the normalized gradient), so a start far above
  the optimum lands on it in one step without overshoot; upward steps are lr * |u| (in the
  expected mode |u| <= 1; the sampled gradient's larger ones keep E[s] unbiased); and s <= tau^2 (Lambda >=
  tau^-2 holds at the optimum because F >= 0), which keeps every sampled weight within the prior
  width tau of theta_hat, i.e. in the local regime Eq. 14 assumes.
- Estimate: Lambda = 1 / mean(s) over the second half of the steps. For a quadratic,
  E[s] at stationarity equals the optimum exactly (the update is linear in s given xi).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch


def kl_divergence(log_var: torch.Tensor, theta_hat: torch.Tensor, theta_pt: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 13: KL(N(theta_hat, diag(exp(log_var))) || N(theta_pt, tau^2 I)), summed over entries."""
    s = log_var.exp()
    t2 = tau * tau
    return 0.5 * (s / t2 + (theta_hat - theta_pt).square() / t2 - 1.0 + math.log(t2) - log_var).sum()


def elbo_log_var_grad(log_var: torch.Tensor, data_grad: torch.Tensor, gamma: float, tau: float) -> torch.Tensor:
    """d/d(log s) of Eq. 11: the data term (``expected_data_grad`` or ``reparam_data_grad``) plus
    gamma times the KL term of Eq. 13, ``gamma/2 (s / tau^2 - 1)``."""
    return data_grad + 0.5 * gamma * (log_var.exp() / (tau * tau) - 1.0)


def expected_data_grad(log_var: torch.Tensor, fisher_batch: torch.Tensor) -> torch.Tensor:
    """d/d(log s) of E_q[L] = L(theta_hat) + 1/2 sum F s (second-order expansion, expectation in closed form)."""
    return 0.5 * log_var.exp() * fisher_batch


def reparam_data_grad(log_var: torch.Tensor, xi: torch.Tensor, grad_diff: torch.Tensor) -> torch.Tensor:
    """d/d(log s) of E_q[L] by the reparameterization trick, one antithetic draw (Eq. 11):
    ``sqrt(s) xi (dL/dtheta(theta_hat + sqrt(s) xi) - dL/dtheta(theta_hat - sqrt(s) xi)) / 4``."""
    return 0.25 * (0.5 * log_var).exp() * xi * grad_diff


def fisher_from_precision(precision: torch.Tensor, gamma: float, tau: float) -> torch.Tensor:
    """Eq. 14: F = gamma * Lambda - gamma * tau^-2 (>= 0: the float error of Lambda at the prior is clipped)."""
    return (gamma * (precision - 1.0 / (tau * tau))).clamp_min(0.0)


def variational_delta(precision: torch.Tensor, precision_shift: torch.Tensor, gamma: float, eps: float) -> torch.Tensor:
    """The domain-sensitivity ratio inside Eq. 15: |Lambda_x - Lambda_x'| / (min(Lambda_x, Lambda_x') + eps/gamma).

    Since Lambda = F/gamma + tau^-2 this is |F - F'| / (min(F, F') + gamma tau^-2 + eps): Eq. 5
    with the prior precision as a floor in the denominator, which keeps entries with a negligible
    Fisher from getting huge ratios (the "stability" the paper claims for Eq. 15). ``eps`` is
    Eq. 5's (relative to F's scale, see `criteria.relative_eps`). The Eq. 15 score itself is
    `criteria.dr_fim` on `fisher_from_precision` and this ratio (``exchange="gamma"`` is the
    printed form gamma * (Lambda_x - tau^-2 + w * ratio)).
    """
    return (precision - precision_shift).abs() / (torch.minimum(precision, precision_shift) + eps / gamma)


class PrecisionFit:
    """Per-entry SGD on log s = -log Lambda (Eq. 11) with the schedule described in the module docstring."""

    def __init__(
        self,
        shapes: Mapping[str, torch.Size],
        gamma: float | None,
        tau: float,
        lr: float,
        total_steps: int,
        device: torch.device | str = "cpu",
    ) -> None:
        # gamma may be set after construction (before the first update): the estimator derives it from
        # the first batch's Fisher when EstimationConfig.gamma is None.
        self.gamma, self.tau, self.lr = gamma, tau, lr
        # Start at the prior (s = tau^2): the largest variance the optimum can have, and a safe one.
        self.log_var = {n: torch.full(tuple(s), 2.0 * math.log(tau), device=device) for n, s in shapes.items()}
        self.avg_from = max(total_steps // 2, 0)
        self.step_count = 0
        self.s_sum = {n: torch.zeros_like(v) for n, v in self.log_var.items()}
        self.s_count = 0

    def offsets(self, xi: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """sqrt(s) * xi: the reparameterized weight perturbation (Eq. 10 posterior sample minus theta_hat)."""
        return {n: (0.5 * self.log_var[n]).exp() * xi[n] for n in self.log_var}

    def update(self, data_grad: Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor]) -> None:
        """One preconditioned, clipped step of every entry given the data term of d ELBO / d log s: a mapping, or a
        function of the weight's name called once per weight (so that no full set of data terms is ever held)."""
        if self.gamma is None:
            raise RuntimeError("PrecisionFit.gamma must be set before the first update.")
        half_gamma = 0.5 * self.gamma
        for n, lv in self.log_var.items():
            term = data_grad(n) if callable(data_grad) else data_grad[n]
            u = elbo_log_var_grad(lv, term, self.gamma, self.tau) / half_gamma
            # u = s / s*_batch - 1 in the expected mode: never step past this batch's optimum (log1p(u)). Upward
            # steps are not clipped: u >= -1 in the expected mode anyway, and the sampled gradient's u < -1 tail
            # is what keeps E[s] at the optimum (clipping it at -lr biased the SGVB Lambda up by ~3% on a
            # 12-entry softmax regression, tests/fisher/test_variational_reparam.py).
            lv.sub_(torch.minimum(self.lr * u, torch.log1p(u.clamp_min(0.0))))
            lv.clamp_(max=2.0 * math.log(self.tau))
        self.step_count += 1
        if self.step_count > self.avg_from:
            for n, lv in self.log_var.items():
                self.s_sum[n] += lv.exp()
            self.s_count += 1

    def precision(self, release: bool = False) -> dict[str, torch.Tensor]:
        """Lambda = 1 / mean(s) over the averaging window (the current s if it was never reached).

        ``release``: the fit is done; each weight's state (8 B per entry) is freed as its Lambda (4 B) is made,
        so the estimator's end never holds both."""
        out = {}
        for n in list(self.log_var):
            lv = self.log_var.pop(n) if release else self.log_var[n]
            s_sum = self.s_sum.pop(n) if release else self.s_sum[n]
            out[n] = (-lv).exp() if self.s_count == 0 else self.s_count / s_sum
            del lv, s_sum
        return out
