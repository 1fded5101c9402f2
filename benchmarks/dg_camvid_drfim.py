"""What the DR-FIM of the CamVid runs measured and selected, from the statistics each run saved.

Every sparse Fisher run of benchmarks/dg_camvid.py writes `fishertune_statistics.safetensors` (F, F', the
per-batch weighted dF and Eq. 7's weight, `FisherTuneTrainingArguments.save_estimation_statistics`).
This script re-scores those statistics with `fishertune.fisher.scores_from_stats` (no new pass) and
writes results/dg_camvid_drfim[_<tag>].md with, per run:

- F's scale in the per-pixel unit (quantiles) and the share of entries for which min(F, F') is the
  larger part of Eq. 5's denominator (min(F, F') > eps + the prior floor);
- the Jaccard overlap of the top-`delta_max` mask of every exchange rate of Eq. 7 (and of the per-batch
  weight reading) with F's and with dF's;
- the Fig. 6 sensitivity map (share of each block x {Q, K, V, FFN} selected) for F, dF and the default DRF.

    python benchmarks/dg_camvid_drfim.py [--tag full_v2] [--method dr_fim_var delta_fim_var]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import torch

from fishertune.outputs import STATISTICS_NAME

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: label -> EstimationConfig overrides of the row; "" is the run's own configuration.
EXCHANGES = {
    "rank (default)": {},
    "quantile 0.9": {"exchange": "quantile", "exchange_quantile": 0.9},
    "quantile 0.99": {"exchange": "quantile", "exchange_quantile": 0.99},
    "quantile 0.999": {"exchange": "quantile", "exchange_quantile": 0.999},
    "gamma (printed Eq. 15)": {"exchange": "gamma"},
    "sum (literal Eq. 7)": {"exchange": "sum"},
    "rank, per-batch weight": {"shift_weight_reading": "per_batch"},
}


def jaccard(a: dict, b: dict) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / max(union, 1)


def describe(stats, config, fraction: float) -> dict:
    from dg_camvid_selection import top_mask
    from fishertune.fisher import relative_eps, scores_from_stats
    from fishertune.fisher.plots import sensitivity_table

    flat = torch.cat([f.reshape(-1).double() for f in stats.fisher.values()])
    qs = {f"{q:g}": float(torch.quantile(
              flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]], q))
          for q in (0.05, 0.5, 0.95, 0.999)}  # fmt: skip
    eps = relative_eps(stats.fisher, config.delta_eps)
    if "precision" in stats.extra:  # the variational F' (Eq. 14) from its precision
        from fishertune.fisher import fisher_from_precision

        shift = {
            n: fisher_from_precision(p, stats.gamma, config.tau) for n, p in stats.extra["precision_shift"].items()
        }
    else:
        shift = stats.fisher_shift
    lo = torch.cat([torch.minimum(stats.fisher[n], shift[n]).reshape(-1).double() for n in stats.fisher])
    masks = {}
    for crit in ("fim", "delta_fim"):
        masks[crit] = top_mask(scores_from_stats(stats, dataclasses.replace(config, criterion=crit)), fraction)
    rows = []
    for label, overrides in EXCHANGES.items():
        cfg = dataclasses.replace(config, criterion="dr_fim", **overrides)
        try:
            m = top_mask(scores_from_stats(stats, cfg), fraction)
        except ValueError as err:  # e.g. the gamma exchange of a diagonal estimate
            rows.append({"exchange": label, "error": str(err)})
            continue
        masks.setdefault("dr_fim", m)
        rows.append(
            {"exchange": label, "jaccard_F": jaccard(m, masks["fim"]), "jaccard_dF": jaccard(m, masks["delta_fim"])}
        )
    maps = {}
    for crit in ("fim", "delta_fim", "dr_fim"):
        _, frac, _ = sensitivity_table(stats.fisher, masks[crit])
        maps[crit] = [[None if v != v else round(float(v), 4) for v in row] for row in frac.tolist()]
    return {"quantiles_F": qs, "mean_F": float(flat.mean()), "eps": eps, "floor": stats.floor,
            "weight": stats.weight, "gamma": stats.gamma,
            "share_min_dominates": float((lo > eps + stats.floor).double().mean()),
            "share_min_above_eps": float((lo > eps).double().mean()),
            "jaccard_F_dF": jaccard(masks["fim"], masks["delta_fim"]), "exchanges": rows, "maps": maps}  # fmt: skip


def markdown(results: dict, tag: str, fraction: float) -> str:
    lines = [f"# DR-FIM on the CamVid recipe (runs/{tag}): scale, Eq. 5's denominator, Eq. 7's exchange rates",
             "", f"Top {fraction:.0%} masks of the saved statistics of each run, re-scored with "
             "`fishertune.fisher.scores_from_stats` (no new estimation). Reference: two independent random masks "
             f"overlap at Jaccard {fraction / (2 - fraction):.3f}.", "",
             "| run | F 5% / 50% / 95% / 99.9% (per-pixel unit) | eps = 1e-3 mean F | prior floor | w | "
             "min(F,F') > eps + floor | J(F, dF) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for run, r in results.items():
        q = r["quantiles_F"]
        lines.append(
            f"| {run} | {q['0.05']:.2e} / {q['0.5']:.2e} / {q['0.95']:.2e} / {q['0.999']:.2e} | {r['eps']:.2e} | "
            f"{r['floor']:.2e} | {r['weight']:.3f} | {r['share_min_dominates']:.1%} | {r['jaccard_F_dF']:.3f} |"
        )
    lines += [
        "",
        "Jaccard of the DRF mask with F's / with dF's:",
        "",
        "| exchange | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for i, label in enumerate(EXCHANGES):
        cells = []
        for r in results.values():
            row = r["exchanges"][i]
            cells.append("n/a" if "error" in row else f"{row['jaccard_F']:.3f} / {row['jaccard_dF']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    first = next(iter(results))
    lines += ["", f"Fig. 6 sensitivity map of {first}: share of each block's entries selected (rows Q, K, V, FFN).", ""]
    for crit, title in (("fim", "F"), ("delta_fim", "dF"), ("dr_fim", "DRF (default)")):
        grid = results[first]["maps"][crit]
        lines += [f"**{title}**", "", "| | " + " | ".join(str(b + 1) for b in range(len(grid[0]))) + " |",
                  "|---|" + "---|" * len(grid[0])]  # fmt: skip
        for name, row in zip(("Q", "K", "V", "FFN"), grid):
            lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.1%}" for v in row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tag", default="full_v2")
    p.add_argument(
        "--method",
        nargs="+",
        default=["dr_fim_var"],
        help="runs whose statistics to read; per seed the first that has them (runs of one seed share "
        "phase 1 and the estimation draws, so a dF run's statistics are the DRF run's)",
    )
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args(argv)

    from fishertune.fisher import EstimationConfig, load_statistics

    runs = Path(args.out_dir) / "runs" / args.tag
    recipe = json.loads((runs / "recipe.json").read_text()) if (runs / "recipe.json").is_file() else {}
    found = {}
    for method in args.method:
        for work in sorted(runs.glob(f"{method}__seed*_work")):
            seed = int(re.search(r"seed(\d+)", work.name).group(1))
            if seed not in found and (work / STATISTICS_NAME).is_file():
                found[seed] = (method, work)
    results = {}
    for seed, (method, work) in sorted(found.items()):
        run_file = runs / f"{method}__seed{seed}.json"
        run = json.loads(run_file.read_text()) if run_file.is_file() else {}
        # re-scored with every criterion and exchange below: only the run's estimator carries over
        opts = {"criterion": "dr_fim", "estimator": (run.get("options") or {}).get("estimator", "variational")}
        extra = {k: v for k, v in recipe.get("extra", {}).items() if k in EstimationConfig.__dataclass_fields__}
        label = f"seed {seed}" + ("" if method == args.method[0] else f" ({method} run)")
        results[label] = describe(
            load_statistics(work / STATISTICS_NAME), EstimationConfig(**opts, **extra), recipe["delta_max"]
        )
        print(f"{label}: done", flush=True)
    if not results:
        sys.exit(f"no statistics under {runs}/{{{','.join(args.method)}}}__seed*_work")
    out = Path(args.out_dir)
    stem = f"dg_camvid_drfim_{args.tag}" + ("" if args.method[0] == "dr_fim_var" else f"_{args.method[0]}")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(markdown(results, args.tag, recipe["delta_max"]) + "\n")
    print((out / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
