"""Real-data domain-generalization benchmark on CamVid: FisherTune vs its baselines.

Backbone: the pretrained ViT-Tiny/16 (augreg) with the light head (BN + 1x1 conv on the patch
tokens of blocks 3, 6, 9, 12; ``--head mask2former``: the paper's Mask2Former on Rein's pyramid of the
same taps, its own results folder; 29-35 s per training step of 8 crops on one CPU core here, against
1.5 s for the light head: a GPU head). Source: CamVid day sequences 0016E5 + 0006R0 (`source_train`;
`source_val` is only reported, never used to pick anything). Targets, never seen in training:
`target_day_new_route` (Seq05VD), `target_dusk` (0001TP), and six corrupted copies of Seq05VD
(fog, frost, snow, motion blur, gaussian noise at severity 3, and a night-like darkening; see
benchmarks/camvid_corruptions.py).

Every method goes through `fishertune.training.FisherTuneTrainer` with one recipe (the probe's):
crops 224x304 from images scaled 0.5-1.0, horizontal flip, batch 8, AdamW lr 1e-4 (backbone) /
1e-3 (head), weight decay 0.05, poly(0.9) decay over the whole run, N optimizer steps. Phases:

- sparse criteria (random, fim, delta_fim, dr_fim; diagonal and variational estimators): T1 =
  10% decoder-only warm-up, T2 estimation batches (no optimizer step, not counted in N), T3 = 90%
  tuning with the active share growing from delta_min = 1% to delta_max = 5% (Eq. 16).
- full / frozen / lora / rein / vpt / adaptformer / vqt: all N steps train what the method trains (no warm-up): the
  head gets the
  same N steps everywhere, and the backbone trains for N (baselines) or 0.9 N (sparse) steps.

Evaluation: `fishertune.evaluation.evaluate_model` on the full-resolution 480x360 images in Rein's
slide mode, windows of the training crop (224x304, stride 149x203, overlaps averaged); mIoU over
CamVid's 11 classes (void ignored). `--eval-window 368 480` is the older whole-image protocol.

Each (method, seed) runs in its own subprocess and writes runs/<tag>/<method>__seed<k>.json and its
trained model (`<method>__seed<k>_work/final_model.pt`, for `--rescore-from`, see dg_camvid_eval.py);
a rerun skips finished runs (resumable). Then the runs are aggregated to
results/dg_camvid[_<tag>].{json,md,png}.

Usage::

    python benchmarks/dg_camvid.py --quick                 # 1 seed, 120 steps, every 3rd eval image (CPU)
    python benchmarks/dg_camvid.py                         # 3 seeds, 800 steps (GPU)
    python benchmarks/dg_camvid.py --methods frozen dr_fim_var --seeds 0
    python benchmarks/dg_camvid.py --aggregate-only [--quick]
    python benchmarks/dg_camvid.py --rescore-from <tag> --eval-every 1   # new protocol, same trained models
    python benchmarks/dg_camvid.py --quick --head mask2former --methods frozen dr_fim_var   # the paper's head (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dg_camvid_eval import FINAL_MODEL, rescore, save_final_model, score_all  # noqa: E402
from dg_camvid_recipe import (  # noqa: E402,F401
    ALL_METHODS,
    DEFAULT_BACKBONE,
    DEFAULT_CORRUPTIONS,
    DEFAULT_ROOT,
    DEFAULT_STRIDE,
    DEFAULT_WINDOW,
    METHODS,
    VARIANTS,
    experiment_args,
    recipe_from_args,
)
from dg_camvid_report import (  # noqa: E402, F401  (re-exported: the tests and scripts read them from dg_camvid)
    CLEAN_TARGETS,
    DISPLAY_ORDER,
    LABELS,
    SHORT,
    aggregate,
    markdown,
    recipe_tag,
    row_label,
    runs_dir,
    write_json,
)

RESULTS = HERE / "results"


# -- one run (in a subprocess) ------------------------------------------------------------------
def build_trainer(recipe: dict, method: str, seed: int, work_dir: Path, callbacks=None):
    """The recipe's FisherTuneTrainer for `method` (model, data, arguments); returns (trainer, args, mean, std)."""
    import torch

    from fishertune.data import collate_fn
    from fishertune.experiment.build import build_base_model, build_train_dataset, normalization, source_id2label
    from fishertune.training import FisherTuneTrainer, FisherTuneTrainingArguments

    exp = experiment_args(recipe)
    mean, std = normalization(exp.backbone)  # also what score_all evaluates with
    train = build_train_dataset(exp)
    model = build_base_model(exp, source_id2label(exp), seed=seed)  # `seed`: the head's init
    opts = dict(ALL_METHODS[method])
    extra = dict(recipe.get("extra") or {})
    kwargs = dict(
        output_dir=str(work_dir), max_steps=recipe["steps"], per_device_train_batch_size=recipe["batch_size"],
        learning_rate=recipe["backbone_lr"], backbone_learning_rate=recipe["backbone_lr"],
        decoder_learning_rate=recipe["decoder_lr"], weight_decay=recipe["weight_decay"],
        warmup_phase_ratio=recipe["warmup_phase_ratio"], estimation_batches=recipe["estimation_batches"],
        delta_min=recipe["delta_min"], delta_max=recipe["delta_max"], fisher_type=recipe["fisher_type"],
        lora_r=recipe["lora_r"], lora_alpha=recipe["lora_r"], seed=seed, data_seed=seed, logging_steps=10,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=recipe.get("workers", 0),
        use_cpu=not torch.cuda.is_available(), save_sensitivity_plot=True, save_estimation_statistics=True,
    )  # fmt: skip
    kwargs.update(opts)
    kwargs.update(extra)  # --extra overrides anything above (e.g. backbone_learning_rate, gamma, dsu_blocks)
    args = FisherTuneTrainingArguments(**kwargs)
    trainer = FisherTuneTrainer(
        model=model, args=args, train_dataset=train, data_collator=collate_fn, callbacks=callbacks
    )
    return trainer, args, mean, std


def run_one(recipe: dict, method: str, seed: int, out_file: Path, threads: int | None) -> dict:
    import torch

    from fishertune.outputs import SELECTION_NAME

    if threads:
        torch.set_num_threads(threads)
    t_start = time.time()
    work_dir = out_file.parent / f"{out_file.stem}_work"
    trainer, args, mean, std = build_trainer(recipe, method, seed, work_dir)
    opts = dict(ALL_METHODS[method])
    t0 = time.time()
    trainer.train()
    train_s = time.time() - t0
    t1, t2, t3 = args.phase_lengths(recipe["steps"])
    selection = None
    if (work_dir / SELECTION_NAME).is_file():
        sel = json.loads((work_dir / SELECTION_NAME).read_text())
        selection = {k: v for k, v in sel.items() if k != "per_layer"}
        blocks: dict[str, int] = {}
        for name, n in sel.get("per_layer", {}).items():
            parts = name.split(".")
            blk = next((p for a, p in zip(parts, parts[1:]) if a in ("layer", "layers", "blocks")), "?")
            blocks[blk] = blocks.get(blk, 0) + n
        selection["per_block"] = blocks

    try:  # lets a protocol change re-score instead of retrain; the scores below matter more than the file
        final_model = str(save_final_model(trainer.model, work_dir))
    except Exception as err:  # noqa: BLE001
        print(f"WARNING: could not save the trained model ({type(err).__name__}: {err}); it cannot be re-scored")
        final_model = None
    compact, extra, eval_s = score_all(trainer.model, recipe, mean, std)
    history = [{k: v for k, v in h.items() if k in ("step", "loss", "learning_rate", "phase", "active_fraction",
                                                    "trainable_backbone_entries", "grad_norm")}
               for h in trainer.state.log_history if "loss" in h]  # fmt: skip
    result = {
        "method": method, "seed": seed, "options": opts, "recipe": recipe, "phases": {"T1": t1, "T2": t2, "T3": t3},
        "metrics": compact, **extra, "final_model": final_model,
        "selection": selection, "train_seconds": train_s, "eval_seconds": eval_s,
        "total_seconds": time.time() - t_start, "machine": machine(), "log_history": history,
        "trainable_backbone_entries": history[-1].get("trainable_backbone_entries") if history else None,
    }  # fmt: skip
    write_json(out_file, result)
    return result


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}  # fmt: skip
    try:
        info["cpu"] = next(s.split(":", 1)[1].strip() for s in open("/proc/cpuinfo") if s.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# -- the grid -----------------------------------------------------------------------------------
def run_grid(args, recipe: dict) -> None:
    out = runs_dir(recipe, Path(args.out_dir))
    out.mkdir(parents=True, exist_ok=True)
    recipe_file = out / "recipe.json"
    write_json(recipe_file, recipe)  # atomic: grids of one recipe run side by side and once interleaved this file
    with open(out / "commands.log", "a") as f:  # every invocation that added runs to this folder
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\t{recipe['command']}\n")
    grid = [(m, s) for s in args.seeds for m in args.methods]
    if args.rescore_from:
        _rescore_grid(args, recipe, out, grid)
        return
    for i, (method, seed) in enumerate(grid):
        out_file = out / f"{method}__seed{seed}.json"
        if out_file.is_file():
            print(f"[{i + 1}/{len(grid)}] {method} seed {seed}: done, skipped", flush=True)
            continue
        print(f"[{i + 1}/{len(grid)}] {method} seed {seed}: running ({time.strftime('%H:%M:%S')})", flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_run", method, "--_seed", str(seed),
               "--_recipe", str(recipe_file), "--_out", str(out_file)]  # fmt: skip
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        log = out / f"{method}__seed{seed}.log"
        t0 = time.time()
        with open(log, "w") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0 or not out_file.is_file():
            print(f"    FAILED (rc={rc}) after {time.time() - t0:.0f}s; see {log}", flush=True)
            if args.stop_on_error:
                sys.exit(rc or 1)
            continue
        r = json.loads(out_file.read_text())
        mi = {SHORT.get(t, t): round(v["mIoU"], 1) for t, v in r["metrics"].items()}
        print(f"    {time.time() - t0:.0f}s (train {r['train_seconds']:.0f}s, eval {r['eval_seconds']:.0f}s): {mi}",
              flush=True)  # fmt: skip
        aggregate(recipe, Path(args.out_dir))


def _rescore_grid(args, recipe: dict, out: Path, grid: list) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    source = Path(args.out_dir) / "runs" / args.rescore_from
    for i, (method, seed) in enumerate(grid):
        out_file = out / f"{method}__seed{seed}.json"
        if out_file.is_file():
            print(f"[{i + 1}/{len(grid)}] {method} seed {seed}: done, skipped", flush=True)
        elif not (source / f"{method}__seed{seed}.json").is_file():
            print(f"[{i + 1}/{len(grid)}] {method} seed {seed}: not in {source}, skipped", flush=True)
        elif not (source / f"{method}__seed{seed}_work" / FINAL_MODEL).is_file():
            # Runs from before models were saved: skip them so one gap does not stop the rest of the grid.
            print(f"[{i + 1}/{len(grid)}] {method} seed {seed}: no saved model in {source} (a run from before "
                  "models were saved), skipped; train it with this protocol instead", flush=True)  # fmt: skip
        else:
            r = rescore(source, recipe, method, seed, out_file)
            print(f"[{i + 1}/{len(grid)}] {method} seed {seed}: re-scored in {r['eval_seconds']:.0f}s: "
                  f"{ {SHORT.get(t, t): round(v['mIoU'], 1) for t, v in r['metrics'].items()} }",
                  flush=True)  # fmt: skip
    aggregate(recipe, Path(args.out_dir))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="1 seed, 120 steps, 16 estimation batches, every 3rd eval image"
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 800, quick 120)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=list(ALL_METHODS),
        help=f"default: the grid {list(METHODS)}; variants: {list(VARIANTS)}",
    )
    p.add_argument("--estimation-batches", type=int, default=None, help="T2 (default 100, quick 16)")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every k-th image (default 1, quick 3)")
    p.add_argument("--fisher-type", default="true", choices=["true", "empirical"])
    p.add_argument(
        "--also-every",
        type=int,
        default=None,
        help="also score each model on every k-th image (reported as metrics_every<k>; floor checks)",
    )
    p.add_argument(
        "--also-scale",
        type=float,
        nargs="+",
        default=None,
        metavar="F",
        help="also score each model on images resized by F of 480x360 (metrics_scale<F>; floor checks)",
    )
    p.add_argument(
        "--eval-window",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="sliding-window size (default 224 304, the training crop; 368 480: the whole padded image)",
    )
    p.add_argument(
        "--eval-stride",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="default 149 203 for the default window (2x2 windows per image), else the window",
    )
    p.add_argument("--corruptions", nargs="+", default=list(DEFAULT_CORRUPTIONS))
    p.add_argument("--extra", type=json.loads, default=None, help="JSON dict of extra FisherTuneTrainingArguments")
    p.add_argument(
        "--head",
        default="light",
        help="segmentation head: light (the grid's) or mask2former (the paper's; ~100 queries, slower)",
    )
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    p.add_argument("--workers", type=int, default=0, help="training DataLoader workers (GPU machines: 4-8)")
    p.add_argument("--aggregate-only", action="store_true")
    p.add_argument(
        "--rescore-from",
        metavar="TAG",
        default=None,
        help="score the saved models of runs/TAG (same training recipe) with this command's protocol",
    )
    p.add_argument("--stop-on-error", action="store_true")
    p.add_argument("--_run", help=argparse.SUPPRESS)
    p.add_argument("--_seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_recipe", help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._run:
        recipe = json.loads(Path(args._recipe).read_text())
        run_one(recipe, args._run, args._seed, Path(args._out), args.threads)
        return
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    recipe = recipe_from_args(args)
    try:  # an unknown head fails here, as a usage error, not in every run
        experiment_args(recipe)
    except ValueError as err:
        p.error(str(err))
    recipe["command"] = "python benchmarks/dg_camvid.py " + " ".join(sys.argv[1:] if argv is None else argv)
    recipe["default"] = not (args.steps or args.estimation_batches or args.eval_every or args.extra
                             or args.fisher_type != "true"
                             or args.also_every or args.also_scale or args.eval_window or args.eval_stride
                             or args.head != "light" or args.root != DEFAULT_ROOT or args.backbone != DEFAULT_BACKBONE
                             or list(args.corruptions) != DEFAULT_CORRUPTIONS)  # fmt: skip
    if args.aggregate_only:
        summary = aggregate(recipe, Path(args.out_dir))
        if summary:
            print(markdown(summary))
        return
    run_grid(args, recipe)
    summary = aggregate(recipe, Path(args.out_dir))
    if summary:
        print(markdown(summary))


if __name__ == "__main__":
    main()
