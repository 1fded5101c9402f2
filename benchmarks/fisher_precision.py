"""`accumulator_dtype="float32"` against the float64 reference: the error on F, F' and the scores, and the overlap of
the selections (top 5% of all targeted entries by DR-FIM).

A randomly initialised 6-block ViT-Ti-width DINOv2 classifier (q/k/v/fc1/fc2 of every block targeted), synthetic
batches; both estimators, the default DR-FIM criterion. The same model and data under both dtypes, so the only
difference is the rounding of the sums of per-sample squares. CPU, about a minute.

    python benchmarks/fisher_precision.py [--batches 8] [--batch 4]
"""

from __future__ import annotations

import argparse

import torch

from fishertune.fisher import EstimationConfig, estimate_statistics, scores_from_stats

from _common import dinov2_problem


def _flat(d: dict) -> torch.Tensor:
    return torch.cat([d[n].double().flatten() for n in sorted(d)])


def _max_rel(a: dict, ref: dict, floor: float = 0.0) -> float:
    """Largest |a - ref| / |ref| over entries whose reference is above ``floor`` (0: all nonzero ones)."""
    x, r = _flat(a), _flat(ref)
    keep = r.abs() > floor
    return float(((x - r).abs()[keep] / r.abs()[keep]).max())


def _jaccard_top(a: dict, ref: dict, share: float = 0.05) -> float:
    x, r = _flat(a), _flat(ref)
    k = max(1, int(share * x.numel()))
    ta, tr = set(x.topk(k).indices.tolist()), set(r.topk(k).indices.tolist())
    return len(ta & tr) / len(ta | tr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    model, weights, batches = dinov2_problem(192, 6, 112, args.batch, args.batches)
    print(f"{sum(w.numel() for w in weights.values()):,} targeted entries, T2 = {args.batches} batches of {args.batch}")
    print("| estimator | max rel. err. F | F' | DR-FIM score | Jaccard top 5% (DR-FIM) | Jaccard top 5% (F) |")
    print("|---|---|---|---|---|---|")
    for estimator in ("diagonal", "variational"):
        out = {}
        for dtype in ("float64", "float32"):
            config = EstimationConfig(
                estimator=estimator, num_batches=args.batches, accumulator_dtype=dtype, exchange="quantile"
            )
            stats = estimate_statistics(model, batches, weights, config, disable_tqdm=True)
            out[dtype] = stats, scores_from_stats(stats, config)
        (ref, ref_s), (f32, f32_s) = out["float64"], out["float32"]
        print(
            f"| {estimator} | {_max_rel(f32.fisher, ref.fisher):.1e} | "
            f"{_max_rel(f32.fisher_shift, ref.fisher_shift):.1e} | {_max_rel(f32_s, ref_s):.1e} | "
            f"{_jaccard_top(f32_s, ref_s):.4f} | {_jaccard_top(f32.fisher, ref.fisher):.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
