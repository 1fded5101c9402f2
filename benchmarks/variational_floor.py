"""How far the variational estimator (Eq. 10-15) ranks away from the diagonal Fisher (Eq. 9), per prior floor.

Synthetic statistics, no model: N entries with a heavy-tailed true Fisher F* (log-normal, sigma 2, as F is on
the CamVid ViT: its 99.9% quantile is ~200x its median), a true shifted Fisher F'* = F* exp(0.5 z), and T batches
whose Fisher is F* (or F'*) times a Gamma(B/2, 2/B) factor: the mean of B per-sample squares of Gaussian
gradients. The diagonal estimator averages the batches; the variational one runs the package's own
`PrecisionFit` (the `"expected"` gradient, as the estimator does) with gamma from `prior_floor`, then both are
scored by `scores_from_stats` (F, and DR-FIM with the default rank exchange). Printed: the top-5% Jaccard of
variational vs diagonal, and of each vs the truth (F*; DR-FIM scored on F*, F'*).

    python benchmarks/variational_floor.py [--entries 200000] [--batches 100] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def synthetic(entries: int, batches: int, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    true = torch.exp(2.0 * torch.randn(entries, generator=g))
    true_shift = true * torch.exp(0.5 * torch.randn(entries, generator=g))
    gamma = torch.distributions.Gamma(torch.tensor(batch_size / 2), torch.tensor(batch_size / 2))
    torch.manual_seed(seed + 1)  # Gamma draws from the global generator

    def per_batch(f):
        return [f * gamma.sample((entries,)) for _ in range(batches)]

    return true, true_shift, per_batch(true), per_batch(true_shift)


def variational(batches_clean, batches_shift, floor: float, tau: float = 1e-3, lr: float = 0.1):
    from fishertune.fisher import fisher_from_precision
    from fishertune.fisher.passes import EstimationStats
    from fishertune.fisher.variational import PrecisionFit, expected_data_grad

    gamma = floor * tau**2 * float(batches_clean[0].double().mean())  # the estimator's gamma from prior_floor
    precisions = []
    for batches in (batches_clean, batches_shift):
        fit = PrecisionFit({"w": batches[0].shape}, gamma, tau, lr, len(batches))
        for f in batches:
            fit.update({"w": expected_data_grad(fit.log_var["w"], f)})
        precisions.append(fit.precision()["w"])
    fisher = {"w": fisher_from_precision(precisions[0], gamma, tau)}
    shift = {"w": fisher_from_precision(precisions[1], gamma, tau)}
    return EstimationStats(
        fisher,
        shift,
        weight=0.2,
        floor=gamma / tau**2,
        gamma=gamma,
        extra={"precision": {"w": precisions[0]}, "precision_shift": {"w": precisions[1]}},
    )


def main(argv=None) -> None:
    from dg_camvid_drfim import jaccard
    from dg_camvid_selection import top_mask
    from fishertune.fisher import EstimationConfig, scores_from_stats
    from fishertune.fisher.passes import EstimationStats

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=200_000)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--floors", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    true, true_shift, clean, shift = synthetic(args.entries, args.batches, args.batch_size, args.seed)
    diag = EstimationStats({"w": torch.stack(clean).mean(0)}, {"w": torch.stack(shift).mean(0)}, weight=0.2)
    truth = EstimationStats({"w": true}, {"w": true_shift}, weight=0.2)

    def masks(stats, estimator):
        return {
            c: top_mask(scores_from_stats(stats, EstimationConfig(criterion=c, estimator=estimator)), 0.05)
            for c in ("fim", "dr_fim")
        }

    m_diag, m_true = masks(diag, "diagonal"), masks(truth, "diagonal")
    print(f"{args.entries} entries, {args.batches} batches of {args.batch_size}; top 5%, Jaccard")
    print(
        "| prior_floor | F: var vs diag | F: var vs truth | DRF: var vs diag | DRF: var vs truth | "
        "entries at the floor |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| (diagonal) | 1 | {jaccard(m_diag['fim'], m_true['fim']):.3f} | 1 | "
        f"{jaccard(m_diag['dr_fim'], m_true['dr_fim']):.3f} | - |"
    )
    for floor in args.floors:
        stats = variational(clean, shift, floor)
        m_var = masks(stats, "variational")
        floored = float((stats.fisher["w"] <= stats.floor).double().mean())
        print(
            f"| {floor:g} | {jaccard(m_var['fim'], m_diag['fim']):.3f} | {jaccard(m_var['fim'], m_true['fim']):.3f} | "
            f"{jaccard(m_var['dr_fim'], m_diag['dr_fim']):.3f} | {jaccard(m_var['dr_fim'], m_true['dr_fim']):.3f} | "
            f"{floored:.1%} |"
        )


if __name__ == "__main__":
    main()
