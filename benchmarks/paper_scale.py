"""The paper's configuration at its real size: Algorithm 1's three phases on DINOv2-L/14 + Mask2Former, 512 px.

`recipes/configs/gtav_dinov2_large_mask2former.yaml` is parsed as `recipes/train.py` parses it and run
through `FisherTuneTrainer` with the config's criterion (DR-FIM, variational, true Fisher), deltas,
optimizer, head (Mask2Former on Rein's pyramid of taps 8, 12, 16, 24, 100 queries), crop and batch.
Substituted (see `paper_scale_worker.py`): a random-init DINOv2-L/14 built from its config (hidden 1024,
24 blocks, 16 heads, MLP ratio 4, patch 14, position table for 518 px = 37x37, interpolated to the
crop's 36x36 grid), synthetic GTAV-like batches (19 classes, 255 ignored), and the step counts:
``--warmup-steps`` (T1), ``--estimation-batches`` (T2) and ``--tuning-steps`` (T3) instead of 4000 / 200 /
36000. Reference rows: full fine-tuning and Rein (the trainer's `method="full"` / `"rein"`, default
configs) for ``--tuning-steps`` steps. Each method runs in a fresh subprocess.

Reported per phase (raw numbers in the ``.json`` beside ``--out``; every derived number from them):

* seconds per step (phases 1, 3): the median of the phase's steps after its first (the first, which also
  allocates the optimizer state, is given apart); one step only: that step.
* seconds per estimation batch (phase 2) from the arrival times of the batches at the estimator: the
  first batch (which also runs the extra clean pass that sets gamma) apart; per batch = the median of the
  later intervals, or with 2 batches the time from the last arrival to the end of the passes (that batch
  plus turning the precisions into F, elementwise).
* peak memory: RSS high-water mark per phase on CPU, ``torch.cuda.max_memory_allocated`` on CUDA (absolute).
* trainable entries: phase 1 the decoder; phase 2 the entries scored; phase 3 the decoder plus the
  active sparse entries at the last step (Eq. 16 reaches delta_max at the last tuning step).
* extrapolation to the config: phase 1 = T1 x step, phase 3 = T3 x step, phase 2 = the measured phase
  (passes, scoring, selection, scores file and sensitivity plot as the config writes them, optimizer
  rebuild) + (T2 - batches run) x per batch;
  phase 2's share of phase 3's total; a baseline's run = max_steps x its step.

Usage::

    python benchmarks/paper_scale.py                                 # ViT-L/14, 512 px, batch 4, CPU fp32
    python benchmarks/paper_scale.py --device cuda                   # bf16 autocast where supported
    python benchmarks/paper_scale.py --model tiny --image-size 60x88 --batch 2 --out /tmp/ps.md   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import paper_scale_worker as W  # noqa: E402

from _common import CONFIG, device_line, parse_size, script_command, write_report  # noqa: E402

MB = 2**20
LABELS = {"full": "full fine-tuning", "rein": "Rein (default config)"}


def budget_text(cfg: dict) -> str:
    """The config's budget: a fixed count of entries (the paper's 15.21M; a reduced model tunes the share it is of
    DINOv2-L's targeted entries) or delta_max as a share."""
    if cfg.get("delta_max_count"):
        return f"{cfg['delta_max_count']:,} entries of DINOv2-L's, the same share on a reduced model"
    return f"delta_max {cfg['delta_max']}"


def run_worker(args, method: str) -> dict:
    cmd = [sys.executable, str(HERE / "paper_scale_worker.py"), "--method", method, "--config", str(args.config),
           "--model", args.model, "--layers", str(args.layers), "--image-size", *map(str, args.image_size),
           "--batch", str(args.batch), "--warmup-steps", str(args.warmup_steps), "--estimation-batches",
           str(args.estimation_batches), "--tuning-steps", str(args.tuning_steps), "--threads", str(args.threads),
           "--device", args.device, "--dtype", args.dtype]  # fmt: skip
    env = dict(os.environ)
    if not args.device.startswith("cuda"):
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # freed tensors leave RSS: the phase peaks are the phases' own
    res = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)  # stderr streams (long runs)
    if res.returncode != 0:
        raise SystemExit(f"worker {method} failed (rc {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def step_s(steps: list[float]) -> float:
    """A phase's seconds per step: the median after its first step (see the docstring)."""
    return statistics.median(steps[1:]) if len(steps) > 1 else steps[0]


def derive(rows: dict, cfg: dict) -> dict:
    """Every number of the tables that is not a raw measurement."""
    ph = rows["fishertune"]["phases"]
    warm, est, tune = ph["warmup"], ph["estimation"], ph["tuning"]
    arr = est["arrivals_s"]
    gaps = [b - a for a, b in zip(arr, arr[1:])]
    per_batch = statistics.median(gaps[1:]) if len(gaps) > 1 else est["stats_s"] - arr[-1]
    d = {"warmup_step_s": step_s(warm["steps_s"]), "tuning_step_s": step_s(tune["steps_s"]),
         "est_first_batch_s": gaps[0], "est_batch_s": per_batch}  # fmt: skip
    # Whatever phase 2 spent beyond its batches (hooks, scoring, selection, saving, optimizer rebuild) is fixed.
    d["est_fixed_s"] = est["phase_s"] - gaps[0] - (len(arr) - 1) * per_batch
    d["warmup_total_s"] = cfg["t1"] * d["warmup_step_s"]
    d["est_total_s"] = est["phase_s"] + (cfg["t2"] - len(arr)) * per_batch
    d["tuning_total_s"] = cfg["t3"] * d["tuning_step_s"]
    d["run_total_s"] = d["warmup_total_s"] + d["est_total_s"] + d["tuning_total_s"]
    d["est_over_tuning"] = d["est_total_s"] / d["tuning_total_s"]
    d["peak_bytes"] = max(p["peak_bytes"] for p in ph.values())
    for m, r in rows.items():
        if m != "fishertune":
            s = step_s(r["phases"]["tuning"]["steps_s"])
            d[m] = {"step_s": s, "run_total_s": cfg["max_steps"] * s, "step_over_ft": s / d["tuning_step_s"],
                    "peak_over_ft": r["phases"]["tuning"]["peak_bytes"] / tune["peak_bytes"]}  # fmt: skip
            d[m]["run_over_ft"] = d[m]["run_total_s"] / d["run_total_s"]
    return d


def phase_table(rows: dict, cfg: dict, d: dict) -> str:
    ph = rows["fishertune"]["phases"]
    n_est = len(ph["estimation"]["arrivals_s"])
    spec = [
        ("1 warm-up (decoder)", "warmup", f"{len(ph['warmup']['steps_s'])} steps", d["warmup_step_s"],
         ph["warmup"]["steps_s"][0], f"{cfg['t1']:,} steps", d["warmup_total_s"]),
        (f"2 estimation ({cfg['criterion']}, {cfg['estimator']})", "estimation", f"{n_est} batches",
         d["est_batch_s"], d["est_first_batch_s"], f"{cfg['t2']:,} batches", d["est_total_s"]),
        ("3 sparse tuning", "tuning", f"{len(ph['tuning']['steps_s'])} steps", d["tuning_step_s"],
         ph["tuning"]["steps_s"][0], f"{cfg['t3']:,} steps", d["tuning_total_s"]),
    ]  # fmt: skip
    lines = ["| phase | run here | s per step or batch | first s | peak MB | trainable entries | in the config "
             "| extrapolated s | share of the run |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, key, here, per, first, conf, total in spec:
        lines.append(
            f"| {name} | {here} | {per:.4g} | {first:.4g} | {ph[key]['peak_bytes'] / MB:.1f} "
            f"| {ph[key]['trainable']:,} | {conf} | {total:.4g} | {total / d['run_total_s']:.1%} |"
        )
    lines.append(
        f"| all | | | | {d['peak_bytes'] / MB:.1f} | | {cfg['max_steps']:,} steps + {cfg['t2']:,} batches "
        f"| {d['run_total_s']:.4g} | 100.0% |"
    )
    return "\n".join(lines) + "\n"


def reference_table(rows: dict, d: dict, cfg: dict) -> str:
    tune = rows["fishertune"]["phases"]["tuning"]
    lines = [f"| method | trainable entries | s per step | step / FisherTune phase 3 | peak MB "
             f"| peak / FisherTune phase 3 | run of {cfg['max_steps']:,} steps, s | run / FisherTune run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for m, r in rows.items():
        if m == "fishertune":
            continue
        t = r["phases"]["tuning"]
        lines.append(
            f"| {LABELS[m]} | {t['trainable']:,} | {d[m]['step_s']:.4g} | {d[m]['step_over_ft']:.2f}x "
            f"| {t['peak_bytes'] / MB:.1f} | {d[m]['peak_over_ft']:.2f}x | {d[m]['run_total_s']:.4g} "
            f"| {d[m]['run_over_ft']:.2f}x |"
        )
    lines.append(
        f"| FisherTune (phases 1-3) | {tune['trainable']:,} | {d['tuning_step_s']:.4g} | 1.00x "
        f"| {tune['peak_bytes'] / MB:.1f} | 1.00x | {d['run_total_s']:.4g} | 1.00x |"
    )
    return "\n".join(lines) + "\n"


def notes(rows: dict, cfg: dict, d: dict) -> list[str]:
    ft = rows["fishertune"]
    est = ft["phases"]["estimation"]
    rest = est["phase_s"] - est["stats_s"] - est["scores_s"]
    return [
        f"Phase 2 at the config's T2 = {cfg['t2']:,} batches: {d['est_total_s']:.4g} s = {d['est_over_tuning']:.2%} of "
        f"phase 3's {cfg['t3']:,} steps ({d['tuning_total_s']:.4g} s). Measured: passes over "
        f"{len(est['arrivals_s'])} batches {est['stats_s']:.4g} s (first batch {d['est_first_batch_s']:.4g} s, then "
        f"{d['est_batch_s']:.4g} s per batch), scoring {est['scores_s']:.4g} s, selection, scores file, sensitivity "
        f"plot and optimizer rebuild {rest:.4g} s; fixed part (not per batch) {d['est_fixed_s']:.4g} s.",
        f"Selected {ft['allocated']:,} of {est['trainable']:,} targeted entries "
        f"({ft['allocated'] / est['trainable']:.2%}; budget {budget_text(cfg)}); active at the last tuning step: "
        f"fraction {ft['active_fraction']:.4g}.",
    ]


def header(args, rows: dict) -> str:
    import torch

    ft = rows["fishertune"]
    m = W.MODELS[args.model]
    grid = m["image_size"] // m["patch_size"]
    h, w = args.image_size
    dev = device_line(args.device, ft["threads"])
    mem = (
        "torch.cuda.max_memory_allocated"
        if args.device.startswith("cuda")
        else ("RSS high-water mark (VmHWM, reset per phase)" if ft["hwm_reset"] else "ru_maxrss (not reset per phase)")
    )
    layers = args.layers or m["num_hidden_layers"]
    crop_grid = (h // m["patch_size"], w // m["patch_size"])
    table = f"{grid}x{grid}" + (" (the crop's own grid)" if crop_grid == (grid, grid) else
                                f" interpolated to {crop_grid[0]}x{crop_grid[1]}")  # fmt: skip
    return (f"DINOv2 {args.model} (hidden {m['hidden_size']}, {layers} blocks, {m['num_attention_heads']} heads, patch "
            f"{m['patch_size']}, random init; position table {table}) + Mask2Former (taps {ft['taps']}, "
            f"{ft['num_queries']} queries, "
            f"{ft['decoder_layers']} decoder layers, {ft['train_num_points']} points), {ft['params']:,} parameters; "
            f"crop {h}x{w}, batch {args.batch}, {args.dtype}, {dev}; torch {torch.__version__}; peak memory: {mem}; "
            f"1-min load average before the runs: {', '.join(f'{x:.1f}' for x in args.loads)}.\n")  # fmt: skip


def default_out(args) -> Path:
    tag = ("_tiny" if args.model == "tiny" else "") + ("_cuda" if args.device.startswith("cuda") else "")
    return HERE / "results" / f"paper_scale{tag}.md"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(CONFIG), help="the recipe YAML (default: the paper's)")
    p.add_argument("--model", choices=sorted(W.MODELS), default="vit-l14")
    p.add_argument("--layers", type=int, default=0, help="backbone blocks (0: the model's own)")
    p.add_argument("--image-size", type=parse_size, default=None, help="crop H or HxW (default: the config's)")
    p.add_argument("--batch", type=int, default=None, help="default: the config's per_device_train_batch_size")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--estimation-batches", type=int, default=2)
    p.add_argument("--tuning-steps", type=int, default=2)
    p.add_argument("--methods", default=",".join(W.METHODS), help="fishertune plus any of full,rein")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on CUDA if supported")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    p.add_argument("--out", default=None, help="markdown (default benchmarks/results/paper_scale[_tiny][_cuda].md)")
    args = p.parse_args(argv)
    if args.warmup_steps < 1 or args.tuning_steps < 1 or args.estimation_batches < 2:
        p.error("need --warmup-steps >= 1, --tuning-steps >= 1 and --estimation-batches >= 2 (per-batch timing)")
    methods = [m for m in args.methods.split(",") if m]
    if "fishertune" not in methods or any(m not in W.METHODS for m in methods):
        p.error(f"--methods must include fishertune and be among {', '.join(W.METHODS)}")
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no GPU")
    if args.dtype == "auto":
        args.dtype = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if not Path(args.config).is_file():
        p.error(f"no config file {args.config}")
    args.config = str(Path(args.config).resolve())

    # The first worker reads the config's crop, batch and phase lengths (the driver imports no transformers);
    # 0 stands for "the config's" on its command line, and the later workers get the values it reported.
    t0, rows, args.loads = time.time(), {}, []
    args.image_size, args.batch = args.image_size or [0, 0], args.batch or 0
    for m in [m for m in W.METHODS if m in methods]:
        args.loads.append(os.getloadavg()[0])
        rows[m] = run_worker(args, m)
        args.image_size, args.batch = rows[m]["image_size"], rows[m]["batch"]
        print(f"[{m}] done after {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    cfg = rows["fishertune"]["config"]
    d = derive(rows, cfg)
    text = (header(args, rows) + "\n### FisherTune, phase by phase\n\n" + phase_table(rows, cfg, d)
            + "".join(f"\n{n}\n" for n in notes(rows, cfg, d)))  # fmt: skip
    if len(rows) > 1:
        text += "\n### Reference rows\n\n" + reference_table(rows, d, cfg)
    print(text)
    out = Path(args.out) if args.out else default_out(args)
    command = script_command("paper_scale.py", argv)
    raw = dict(command=command, config=cfg, args={k: v for k, v in vars(args).items()}, rows=rows, derived=d)
    write_report(
        out,
        f"# The paper's configuration at its real size\n\nGenerated by `{command}` (see its docstring "
        f"for the method) in {time.time() - t0:.0f} s; raw numbers in `{out.with_suffix('.json').name}`.\n\n",
        text,
        raw,
    )
    return raw


if __name__ == "__main__":
    main()
