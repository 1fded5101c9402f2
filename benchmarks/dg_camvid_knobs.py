"""Can gamma, the Eq. 7/15 form and the DSU placement/strength change what FisherTune selects on CamVid?

A selection-only study (no tuning, no target data): the recipe of benchmarks/dg_camvid.py is trained
through phase 1 (T1 = 10% of the steps, head only, one seed), then DR-FIM is estimated once per
setting on that same warmed-up model, from the same T2 source batches (same data order and DSU draws),
and the top `delta_max` of each is compared with the default FisherTune selection and with F's:
Jaccard overlap, share per weight kind and per block. A setting that leaves the mask unchanged
cannot change the mIoU; one that moves it is worth a training run (selected on source val only).

    python benchmarks/dg_camvid_knobs.py [--steps 800] [--estimation-batches 100] [--threads 1]

Writes results/dg_camvid_knobs.{md,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: name -> EstimationConfig overrides; "drf" is the package default (criterion dr_fim, rank exchange).
SETTINGS = {
    "drf": {},
    "F": {"criterion": "fim"},
    "dF": {"criterion": "delta_fim"},
    "drf exchange quantile 0.99": {"exchange": "quantile", "exchange_quantile": 0.99},
    "drf exchange gamma (printed Eq. 15)": {"exchange": "gamma"},
    "drf exchange sum (literal Eq. 7)": {"exchange": "sum"},
    "drf DSU blocks 1-4": {"dsu_blocks": [0, 1, 2, 3]},
    "drf DSU blocks 9-12": {"dsu_blocks": [8, 9, 10, 11]},
    "drf DSU p = 1.0": {"dsu_p": 1.0},
}


class StopAfterSelection:
    """Ends training at the first step of phase 3 (the selection has been made by then)."""

    def __new__(cls, t1: int):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= t1:  # phase 2 runs in this step's on_step_end; no tuning step follows
                    control.should_training_stop = True

        return _Stop()


def jaccard(a: dict, b: dict) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / max(union, 1)


def shares(mask: dict) -> tuple[dict, dict]:
    from dg_camvid_selection import kind_and_block

    total = max(sum(int(m.sum()) for m in mask.values()), 1)
    kinds, thirds = {}, {}
    for name, m in mask.items():
        kind, block = kind_and_block(name)
        group = "1-4" if int(block) < 4 else "5-8" if int(block) < 8 else "9-12"
        kinds[kind] = kinds.get(kind, 0) + int(m.sum()) / total
        thirds[group] = thirds.get(group, 0) + int(m.sum()) / total
    return kinds, thirds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=800, help="the recipe's N (T1 = 10%% of it)")
    p.add_argument("--estimation-batches", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import dg_camvid
    from dg_camvid_selection import top_mask

    import fishertune.fisher as fisher

    ns = argparse.Namespace(quick=False, steps=args.steps, estimation_batches=args.estimation_batches, eval_every=None,
                            fisher_type="true", corruptions=dg_camvid.DEFAULT_CORRUPTIONS, extra=None,
                            root=dg_camvid.DEFAULT_ROOT, backbone=dg_camvid.DEFAULT_BACKBONE)  # fmt: skip
    recipe = dg_camvid.recipe_from_args(ns)
    t1 = int(round(recipe["warmup_phase_ratio"] * recipe["steps"]))
    work = Path(args.out_dir) / "runs" / "knobs_work"
    trainer, targs, _, _ = dg_camvid.build_trainer(recipe, "dr_fim_var", args.seed, work, callbacks=[StopAfterSelection(t1)])
    t0 = time.time()
    trainer.train()  # phase 1 on the head, then the default estimation and selection
    print(f"phase 1 + default selection: {time.time() - t0:.0f}s", flush=True)
    config = targs.estimation_config(recipe["estimation_batches"])
    weights = trainer.model.fishertune_target_weights()
    masks, rows = {}, []
    for name, overrides in SETTINGS.items():
        t0 = time.time()
        with torch.random.fork_rng():  # the trainer's own estimation stream: same batches and draws for all
            torch.manual_seed(targs.seed)
            scores = fisher.estimate_scores(trainer.model, trainer.get_train_dataloader(), weights,
                                            dataclasses.replace(config, **overrides))  # fmt: skip
        trainer.model.zero_grad(set_to_none=True)
        masks[name] = top_mask(scores, recipe["delta_max"])
        kinds, thirds = shares(masks[name])
        rows.append({"setting": name, "overrides": overrides, "seconds": time.time() - t0, "kinds": kinds,
                     "blocks": thirds})  # fmt: skip
        print(f"{name}: {time.time() - t0:.0f}s", flush=True)
    for row in rows:
        row["jaccard_drf"] = jaccard(masks[row["setting"]], masks["drf"])
        row["jaccard_F"] = jaccard(masks[row["setting"]], masks["F"])
    kinds = sorted({k for r in rows for k in r["kinds"]})
    lines = [
        f"# What the DR-FIM knobs select (CamVid, ViT-Tiny/16, seed {args.seed}, after T1 = {t1} head-only steps, "
        f"T2 = {recipe['estimation_batches']} batches, top {recipe['delta_max']:.0%})",
        "",
        "Command: `python benchmarks/dg_camvid_knobs.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip() + "`. "
        "Every setting is estimated on the same warmed-up model from the same batches and DSU draws. "
        f"Reference: two independent random masks of share d overlap at Jaccard d/(2-d) = "
        f"{recipe['delta_max'] / (2 - recipe['delta_max']):.3f}.",
        "",
        "| setting | Jaccard vs DRF | Jaccard vs F | " + " | ".join(kinds) + " | blocks 1-4 | 5-8 | 9-12 |",
        "|---|---|---|" + "---|" * (len(kinds) + 3),
    ]
    for r in rows:
        cells = [f"{r['kinds'].get(k, 0):.0%}" for k in kinds] + [f"{r['blocks'].get(g, 0):.0%}" for g in ("1-4", "5-8", "9-12")]
        lines.append(f"| {r['setting']} | {r['jaccard_drf']:.3f} | {r['jaccard_F']:.3f} | " + " | ".join(cells) + " |")
    out = Path(args.out_dir)
    (out / "dg_camvid_knobs.md").write_text("\n".join(lines) + "\n")
    (out / "dg_camvid_knobs.json").write_text(json.dumps({"recipe": recipe, "seed": args.seed, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
