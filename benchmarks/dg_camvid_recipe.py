"""The recipe of benchmarks/dg_camvid.py: its methods, defaults, and the recipe dict that names a results folder."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
# ../shared beside the checkout, as in CI and on the developers' machines.
SHARED = HERE.parent.parent / "shared"
DEFAULT_ROOT = str(SHARED / "data" / "camvid")
DEFAULT_BACKBONE = str(SHARED / "models" / "vit-tiny-patch16-224-augreg")
#: Written by gpu_pack.py into a CamVid copy that holds every k-th evaluation image only (gpu_check.sh reads it too).
PACK_MARKER = "fishertune_pack.json"

#: name -> trainer options (baselines by `method`, sparse runs by `criterion`). Order = run order within a seed.
METHODS = {
    "frozen": dict(method="frozen"),
    "full": dict(method="full"),
    "random": dict(criterion="random"),
    "dr_fim_var": dict(criterion="dr_fim", estimator="variational"),
    "fim_var": dict(criterion="fim", estimator="variational"),
    "lora": dict(method="lora"),
    "delta_fim_var": dict(criterion="delta_fim", estimator="variational"),
    "dr_fim_diag": dict(criterion="dr_fim", estimator="diagonal"),
    "fim_diag": dict(criterion="fim", estimator="diagonal"),
    "delta_fim_diag": dict(criterion="delta_fim", estimator="diagonal"),
    # fishertune.baselines with their default configs (backbone frozen; method params at the backbone lr)
    "rein": dict(method="rein"),
    "vpt": dict(method="vpt"),
    "adaptformer": dict(method="adaptformer"),
    "vqt": dict(method="vqt"),
}
#: Investigation variants (not in the default grid; pass them with --methods): other exchange rates of Eq. 7
#: (`EstimationConfig.exchange`; the default is "rank"), set through the trainer's arguments.
VARIANTS = {
    "dr_fim_q99_var": dict(criterion="dr_fim", estimator="variational", exchange="quantile", exchange_quantile=0.99),
    "dr_fim_q99_diag": dict(criterion="dr_fim", estimator="diagonal", exchange="quantile", exchange_quantile=0.99),
    "dr_fim_perbatch_var": dict(criterion="dr_fim", estimator="variational", shift_weight_reading="per_batch"),
    # Eq. 7 as printed: one (eps_mu, eps_sigma) per batch, each batch's dF weighted by its own
    # exp(-(|eps_mu| + |eps_sigma|)).
    "dr_fim_paperw_var": dict(
        criterion="dr_fim", estimator="variational", dsu_draw="scalar", shift_weight_reading="per_batch"
    ),
    "dr_fim_paperw_diag": dict(
        criterion="dr_fim", estimator="diagonal", dsu_draw="scalar", shift_weight_reading="per_batch"
    ),
    # ChildTune-D (recipes/configs/ablation_childtune_d.yaml): the empirical diagonal Fisher, one mask fixed before
    # tuning (delta_min = delta_max: no Eq. 16 ramp), at the grid's 5% budget.
    "childtune_d": dict(criterion="fim", estimator="diagonal", fisher_type="empirical", delta_min=0.05, delta_max=0.05),
    # Weight decay on W0 + delta (AdamW's full fine-tuning semantics) instead of on the delta.
    "dr_fim_wd_weight_var": dict(criterion="dr_fim", estimator="variational", sparse_weight_decay="weight"),
    # VPT's prompts start random (uniform +-0.08 on ViT-Ti) and VPT trains them with SGD at swept, large rates; at
    # the grid's AdamW 1e-4 they barely move in 800 steps. This checks the grid's row at the head's rate.
    "vpt_lr1e3": dict(method="vpt", backbone_learning_rate=1e-3),
}
ALL_METHODS = {**METHODS, **VARIANTS}
DEFAULT_CORRUPTIONS = ["fog", "frost", "snow", "motion_blur", "gaussian_noise", "dark"]
DEFAULT_WINDOW, DEFAULT_STRIDE = (224, 304), (149, 203)  # the training crop; 2x2 overlapping windows per 360x480 image


def recipe_from_args(args) -> dict:
    quick = args.quick
    steps = args.steps or (120 if quick else 800)
    return (
        {
            "mode": "quick" if quick else "full",
            # 2: DR-FIM in the per-pixel Fisher unit with a relative Eq. 5 eps, rank exchange, DSU p = 0.5.
            # Methods that use no estimator (frozen, full, lora, random, adapters) train the same model in 1 and 2.
            "dr_fim_version": 2,
            "root": args.root,
            "backbone": args.backbone,
            "model": getattr(args, "head", "light"),
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
        }
        | _packed(args.root)
        | ({"also_every": args.also_every} if getattr(args, "also_every", None) else {})
        | (
            {"eval_stride": list(args.eval_stride)}
            if getattr(args, "eval_stride", None)
            else {"eval_stride": list(DEFAULT_STRIDE)}
            if not getattr(args, "eval_window", None)
            else {}
        )
        | ({"also_scales": list(args.also_scale)} if getattr(args, "also_scale", None) else {})
    )


def _packed(root: str) -> dict:
    """A gpu_pack.py copy scores 1 in k of the original evaluation images at --eval-every 1: the recipe says so."""
    marker = Path(root) / PACK_MARKER
    return {"packed_eval_every": json.loads(marker.read_text())["eval_every"]} if marker.is_file() else {}


CAMVID_SHORT_EDGE = 360  # CamVid images are 480x360: the recipe's scale_range is a fraction of this short edge


def experiment_args(recipe: dict):
    """The recipe's model and training data as `fishertune.experiment.ExperimentArguments`.

    The CamVid runs augment as `datasets.set_transform` does (draws from torch's RNG, not keyed by sample), any
    integer short edge (no 16-step grid) and no crop re-draws: the settings the existing results were made with."""
    from fishertune.experiment import ExperimentArguments

    lo, hi = recipe["scale_range"]
    return ExperimentArguments(
        backbone=recipe["backbone"], head=recipe["model"], taps=list(recipe["taps"]), dataset="camvid",
        data_root=recipe["root"], train_split="source_train", crop_size=list(recipe["crop_size"]),
        scale_range=[int(lo * CAMVID_SHORT_EDGE), int(hi * CAMVID_SHORT_EDGE)], num_scales=None, cat_max_ratio=1.0,
        flip_prob=recipe["flip_prob"], photometric=recipe["photometric"], keyed_augmentation=False,
    )  # fmt: skip
