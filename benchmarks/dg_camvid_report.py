"""Tables and chart of benchmarks/dg_camvid.py: per-recipe run folders, mean ± std over seeds, markdown, PNG.

`aggregate(recipe, out_root)` reads every `runs/<tag>/<method>__seed<k>.json` of one recipe and writes
`results/dg_camvid[_<tag>].{json,md,png}`; `python benchmarks/dg_camvid.py --aggregate-only` calls it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dg_camvid_recipe import DEFAULT_BACKBONE

LABELS = {
    "frozen": "frozen backbone", "full": "full fine-tuning", "lora": "LoRA (r=8)", "random": "random 5%",
    "rein": "Rein (default config)", "vpt": "VPT-deep (150 prompts)",
    "vpt_lr1e3": "VPT-deep (150 prompts), prompt lr 1e-3", "adaptformer": "AdaptFormer (bottleneck 64)",
    "vqt": "VQT (10 queries per block)",
    "fim_var": "F 5% (variational)", "delta_fim_var": "dF 5% (variational)",
    "dr_fim_var": "DRF 5% (variational) = FisherTune",
    "fim_diag": "F 5% (diagonal)", "delta_fim_diag": "dF 5% (diagonal)", "dr_fim_diag": "DRF 5% (diagonal)",
    "dr_fim_q99_var": "DRF 5%, quantile-0.99 exchange (var.)",
    "dr_fim_q99_diag": "DRF 5%, quantile-0.99 exchange (diag.)",
    "dr_fim_perbatch_var": "DRF 5%, per-batch weight (var.)",
    "dr_fim_paperw_var": "DRF 5%, Eq. 7 weight per batch draw (var.)",
    "dr_fim_paperw_diag": "DRF 5%, Eq. 7 weight per batch draw (diag.)",
    "dr_fim_wd_weight_var": "DRF 5% (variational), decay on W0 + delta",
    "childtune_d": "ChildTune-D 5% (empirical F, fixed mask)",
}  # fmt: skip
#: Row order of the tables and bars: baselines, then Table 4's criteria (random < F < dF < DRF) per estimator.
DISPLAY_ORDER = [
    "frozen",
    "full",
    "lora",
    "rein",
    "vpt",
    "vpt_lr1e3",
    "adaptformer",
    "vqt",
    "random",
    "fim_var",
    "delta_fim_var",
    "dr_fim_var",
    "dr_fim_q99_var",
    "dr_fim_perbatch_var",
    "dr_fim_paperw_var",
    "dr_fim_wd_weight_var",
    "fim_diag",
    "delta_fim_diag",
    "dr_fim_diag",
    "dr_fim_q99_diag",
    "dr_fim_paperw_diag",
    "childtune_d",
]
CLEAN_TARGETS = ("target_day_new_route", "target_dusk")
SHORT = {"source_val": "src val", "target_day_new_route": "Seq05VD", "target_dusk": "dusk", "target_fog": "fog",
         "target_frost": "frost", "target_snow": "snow", "target_motion_blur": "motion",
         "target_gaussian_noise": "noise",
         "target_dark": "dark"}  # fmt: skip


def row_label(method: str, recipe: dict) -> str:
    """`LABELS[method]` with the budget this recipe trained at: `--extra '{"delta_max": 0.1}'` labels "10%", not
    "5%"."""
    budget = (recipe.get("extra") or {}).get("delta_max", recipe.get("delta_max", 0.05))
    return LABELS[method].replace("5%", f"{100 * budget:g}%")


def portable_path(path: str) -> str:
    """`.../shared/data/camvid` -> `shared/data/camvid`: the checkout-independent name of a ../shared path."""
    parts = Path(path).parts
    if "shared" not in parts:
        return str(path)
    i = len(parts) - 1 - parts[::-1].index("shared")
    return "/".join(parts[i:])


#: Recipe keys that never change a result (and so never name a folder).
BOOKKEEPING_KEYS = ("command", "default", "workers")


def recipe_identity(recipe: dict, drop=()) -> dict:
    """What a recipe is, wherever it runs: without bookkeeping (and `drop`) keys, with portable ../shared paths."""
    key = {k: v for k, v in recipe.items() if k not in BOOKKEEPING_KEYS and k not in drop}
    # The folder must not depend on where the checkout lives: CI's ../shared is not the developers'.
    return key | {k: portable_path(key[k]) for k in ("root", "backbone") if k in key}


def recipe_tag(recipe: dict) -> str:
    """`quick` / `full` for the default recipes, else `<mode>_<steps>steps_<hash>` (never mixes recipes)."""
    import hashlib

    digest = hashlib.sha1(json.dumps(recipe_identity(recipe), sort_keys=True).encode()).hexdigest()[:6]
    if recipe.get("default"):  # version 1 (before the per-pixel DR-FIM units) kept the bare mode name
        version = recipe.get("dr_fim_version", 1)
        return recipe["mode"] if version == 1 else f"{recipe['mode']}_v{version}"
    return f"{recipe['mode']}_{recipe['steps']}steps_{digest}"


def write_json(path: Path, obj) -> None:
    """Atomically: a killed run leaves no half file, and two processes writing one file leave one whole version."""
    import os

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def runs_dir(recipe: dict, out_root: Path) -> Path:
    return out_root / "runs" / recipe_tag(recipe)


# -- aggregation --------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def aggregate(recipe: dict, out_root: Path) -> dict | None:
    out = runs_dir(recipe, out_root)
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*__seed*.json"))]
    if not runs:
        print(f"no finished runs in {out}")
        return None
    targets = [t for t in runs[0]["metrics"] if t != "source_val"]
    corr = [t for t in targets if t not in CLEAN_TARGETS]
    table = {}
    for method in DISPLAY_ORDER:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        per = {}
        cols = {"source_val": [r["metrics"]["source_val"]["mIoU"] for r in rs]}
        for t in targets:
            cols[t] = [r["metrics"][t]["mIoU"] for r in rs]
        cols["mean_clean_targets"] = [
            sum(r["metrics"][t]["mIoU"] for t in CLEAN_TARGETS) / len(CLEAN_TARGETS) for r in rs
        ]
        if corr:
            cols["mean_corrupted"] = [sum(r["metrics"][t]["mIoU"] for t in corr) / len(corr) for r in rs]
        cols["mean_targets"] = [sum(r["metrics"][t]["mIoU"] for t in targets) / len(targets) for r in rs]
        for k, vals in cols.items():
            m, s = _mean_std(vals)
            per[k] = {"mean": m, "std": s, "values": vals}
        table[method] = {"label": row_label(method, recipe), "seeds": [r["seed"] for r in rs], "mIoU": per,
                         "trainable_backbone_entries": rs[0].get("trainable_backbone_entries"),
                         "train_seconds": sum(r["train_seconds"] for r in rs) / len(rs),
                         "selection_share": (rs[0].get("selection") or {}).get("per_block"),
                         "selected_share": {k.split("/")[-1]: v for k, v in (rs[0].get("selection") or {}).items()
                                            if k.startswith("selected_share/")}}  # fmt: skip
    summary = {"recipe": recipe, "targets": targets, "machine": runs[0]["machine"], "methods": table,
               "num_runs": len(runs), "command": recipe.get("command"),
               "commands": (out / "commands.log").read_text().splitlines() if (out / "commands.log").is_file() else [],
               "machines": sorted({json.dumps(r["machine"], sort_keys=True) for r in runs})}  # fmt: skip
    tag = recipe_tag(recipe)
    stem = "dg_camvid" + ("" if tag == "full" else f"_{tag}")
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    (out_root / f"{stem}.md").write_text(markdown(summary))
    try:
        plot(summary, out_root / f"{stem}.png")
    except Exception as err:  # a plot must not lose the tables
        print(f"plot failed: {err}")
    return summary


def _fmt(cell: dict) -> str:
    return f"{cell['mean']:.1f}" + (f" ± {cell['std']:.1f}" if cell["std"] is not None else "")


def _protocol_line(r: dict) -> str:
    every = r.get("eval_every", 1) * r.get("packed_eval_every", 1)
    images = "every evaluation image" if every == 1 else f"1 in {every} evaluation images"
    if r.get("packed_eval_every"):
        images += f" (a gpu_pack.py copy holding 1 in {r['packed_eval_every']})"
    win = r.get("eval_window") or [368, 480]
    stride = r.get("eval_stride") or win
    how = (
        f"sliding windows {win[0]}x{win[1]}, stride {stride[0]}x{stride[1]}"
        if stride != win
        else f"windows {win[0]}x{win[1]} without overlap" + (" (the whole padded image)" if win == [368, 480] else "")
    )
    return f"Scored on {images}, {how}."


def _backbone_label(recipe: dict) -> str:
    name = Path(recipe["backbone"]).name
    return "ViT-Tiny/16 augreg" if name == Path(DEFAULT_BACKBONE).name else name


def markdown(summary: dict) -> str:
    r, targets = summary["recipe"], summary["targets"]
    cols = ["source_val", *targets, "mean_clean_targets"]
    if "mean_corrupted" in next(iter(summary["methods"].values()))["mIoU"]:
        cols.append("mean_corrupted")
    cols.append("mean_targets")
    head = {"mean_clean_targets": "mean clean", "mean_corrupted": "mean corr.", "mean_targets": "**mean targets**"}
    lines = [
        f"CamVid DG, {_backbone_label(r)} + {r.get('model', 'light')} head, {r['steps']} steps, "
        f"batch {r['batch_size']}, "
        f"mode `{r['mode']}`; mIoU (%), mean ± std over seeds (n per row). "
        "Targets are never used for training or selection.",
        _protocol_line(r),
        *(
            [f"Training-argument overrides of this recipe (`--extra`): `{json.dumps(r['extra'], sort_keys=True)}`."]
            if r.get("extra")
            else []
        ),
        "",
        "| method | n | " + " | ".join(head.get(c, SHORT.get(c, c)) for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for method, row in summary["methods"].items():
        cells = [_fmt(row["mIoU"][c]) for c in cols]
        lines.append(f"| {row['label']} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", _machines_line(summary)]
    return "\n".join(lines) + "\n"


def _machines_line(summary: dict) -> str:
    """Every machine the runs came from: a grid resumed elsewhere must not print only its first run's."""
    machines = [json.loads(x) for x in summary.get("machines", [])] or [summary["machine"]]
    threads: dict[tuple, set] = {}  # (device, CPUs, torch) -> thread counts its runs used
    for m in machines:
        threads.setdefault((m.get("gpu") or m.get("cpu"), m.get("cpu_count"), m.get("torch")), set()).add(
            m.get("torch_threads")
        )
    parts = [f"{device} ({cpus} CPUs, torch {torch}, "
             f"{' or '.join(map(str, sorted(t - {None}) or ['?']))} threads per run)"
             for (device, cpus, torch), t in threads.items()]  # fmt: skip
    return (
        ("Machine: " if len(parts) == 1 else "Machines (runs of this table came from each): ") + "; ".join(parts) + "."
    )


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["source_val", *CLEAN_TARGETS]
    if "mean_corrupted" in next(iter(summary["methods"].values()))["mIoU"]:
        groups.append("mean_corrupted")
    groups.append("mean_targets")
    names = {"mean_corrupted": "mean corrupted", "mean_targets": "mean all targets"}
    methods = list(summary["methods"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(min(14, max(8, 1.2 * len(groups) + 0.15 * len(methods) * len(groups))), 5))
    cmap = plt.get_cmap("tab10")
    for i, method in enumerate(methods):
        row = summary["methods"][method]["mIoU"]
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ys = [row[g]["mean"] for g in groups]
        err = [row[g]["std"] or 0.0 for g in groups]
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=summary["methods"][method]["label"], color=cmap(i % 10))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([names.get(g, SHORT.get(g, g)) for g in groups])
    lo = min(summary["methods"][m]["mIoU"][g]["mean"] for m in methods for g in groups)
    hi = max(summary["methods"][m]["mIoU"][g]["mean"] for m in methods for g in groups)
    ax.set_ylim(max(0, lo - 8), hi + 2)
    ax.set_ylabel("mIoU (%)")
    r = summary["recipe"]
    n = max(len(summary["methods"][m]["seeds"]) for m in methods)
    ax.set_title(f"CamVid DG, ViT-Tiny/16, {r['steps']} steps, {n} seed(s){' (quick)' if r['mode'] == 'quick' else ''}")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
