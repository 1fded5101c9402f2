"""The recipe of benchmarks/dg_camvid.py: its methods, defaults, and the recipe dict that names a results folder."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
# ../shared beside the checkout, as in CI and on the developers' machines.
SHARED = HERE.parent.parent / "shared"
DEFAULT_ROOT = str(SHARED / "data" / "camvid")
DEFAULT_BACKBONE = str(SHARED / "models" / "vit-tiny-patch16-224-augreg")

#: name -> trainer options. Order = run order within a seed (the most informative first).
METHODS = {
    "frozen": dict(criterion="frozen"),
    "full": dict(criterion="full"),
    "random": dict(criterion="random"),
    "dr_fim_var": dict(criterion="dr_fim", estimator="variational"),
    "fim_var": dict(criterion="fim", estimator="variational"),
    "lora": dict(criterion="lora"),
    "delta_fim_var": dict(criterion="delta_fim", estimator="variational"),
    "dr_fim_diag": dict(criterion="dr_fim", estimator="diagonal"),
    "fim_diag": dict(criterion="fim", estimator="diagonal"),
    "delta_fim_diag": dict(criterion="delta_fim", estimator="diagonal"),
    # fishertune.baselines with their default configs (backbone frozen; method params at the backbone lr)
    "rein": dict(criterion="rein"),
    "vpt": dict(criterion="vpt"),
    "adaptformer": dict(criterion="adaptformer"),
    "vqt": dict(criterion="vqt"),
}
#: Investigation variants (not in the default grid; pass them with --methods). `combine="normalized"`:
#: DRF = F / mean(F) + w * dF / mean(dF), with w = exp(-2 sqrt(2/pi)) (the expected `abs_mean` weight of
#: Eq. 7 for eps ~ N(0, 1)). The package's "balanced" Eq. 7/15 adds F (~1e-9..1e-5 here) to the
#: dimensionless ratio dF (~0.01..100), so its ranking equals dF's; "literal" scales dF by gamma, so it
#: equals F's. This variant puts both terms on one scale (see dg_camvid_selection.py).
VARIANTS = {
    "dr_fim_norm_var": dict(criterion="dr_fim", estimator="variational", combine="normalized"),
    "dr_fim_norm_diag": dict(criterion="dr_fim", estimator="diagonal", combine="normalized"),
}
ALL_METHODS = {**METHODS, **VARIANTS}
DEFAULT_CORRUPTIONS = ["fog", "frost", "snow", "motion_blur", "gaussian_noise", "dark"]
DEFAULT_WINDOW, DEFAULT_STRIDE = (224, 304), (149, 203)  # the training crop; 2x2 overlapping windows per 360x480 image


def recipe_from_args(args) -> dict:
    quick = args.quick
    steps = args.steps or (120 if quick else 800)
    return {
        "mode": "quick" if quick else "full",
        "root": args.root,
        "backbone": args.backbone,
        "model": "light",
        "taps": [3, 6, 9, 12],
        "steps": steps,
        "batch_size": 8,
        "crop_size": [224, 304],
        "scale_range": [0.5, 1.0],
        "flip_prob": 0.5,
        "photometric": False,
        "backbone_lr": 1e-4,
        "decoder_lr": 1e-3,
        "weight_decay": 0.05,
        "lr_schedule": "poly 0.9 to 0 over all steps",
        "warmup_phase_ratio": 0.1,
        "estimation_batches": args.estimation_batches or (16 if quick else 100),
        "delta_min": 0.01,
        "delta_max": 0.05,
        "fisher_type": args.fisher_type,
        "lora_r": 8,
        "corruptions": list(args.corruptions),
        "severity": 3,
        "corruption_seed": 0,
        # Rein's protocol: slide windows of the training crop size. One whole 368x480 window gives the ViT a
        # 23x30 token grid it never saw in training (14x19) and costs the frozen backbone 6 target-mean points
        # (README, floor check); `--eval-window 368 480` is that protocol.
        "eval_window": list(args.eval_window) if getattr(args, "eval_window", None) else list(DEFAULT_WINDOW),
        # quick: every 3rd image of every evaluation set (the corrupted sets keep the same Seq05VD frames)
        "eval_every": args.eval_every or (3 if quick else 1),
        "extra": dict(args.extra or {}),
        # DataLoader workers for training (0 on the 2-core CPU; ~4-8 on a GPU machine). Changes the random
        # crop stream, not the recipe, so it does not change the results folder.
        "workers": getattr(args, "workers", 0),
    } | ({"also_every": args.also_every} if getattr(args, "also_every", None) else {}) | (
        {"eval_stride": list(args.eval_stride)} if getattr(args, "eval_stride", None)
        else {"eval_stride": list(DEFAULT_STRIDE)} if not getattr(args, "eval_window", None) else {}) | (
        {"also_scales": list(args.also_scale)} if getattr(args, "also_scale", None) else {})


@contextlib.contextmanager
def normalized_drf():
    """Within the block, `fishertune.fisher.estimate_scores` returns the scale-normalized DRF for criterion dr_fim.

    Scoped, so the next run in the same process (the tests', a notebook's) gets the package's estimator back.
    """
    import dataclasses

    import torch

    import fishertune.fisher as fisher

    original = fisher.estimate_scores
    weight = math.exp(-2 * math.sqrt(2 / math.pi))

    def estimate_scores(model, dataloader, weights, config, *a, **kw):
        if config.criterion != "dr_fim":
            return original(model, dataloader, weights, config, *a, **kw)
        parts = {}
        for crit in ("fim", "delta_fim"):
            torch.manual_seed(config.seed)  # both passes read the same batches
            parts[crit] = original(model, dataloader, weights, dataclasses.replace(config, criterion=crit), *a, **kw)
        mean = {c: torch.cat([v.reshape(-1).double() for v in p.values()]).mean().item() or 1.0 for c, p in parts.items()}
        return {n: (parts["fim"][n].double() / mean["fim"] + weight * parts["delta_fim"][n].double() / mean["delta_fim"]).float()
                for n in parts["fim"]}  # fmt: skip

    fisher.estimate_scores = estimate_scores
    try:
        yield
    finally:
        fisher.estimate_scores = original
