"""Step time, peak memory and training-state bytes of FisherTune vs full fine-tuning, LoRA and SHiRA.

One run trains the same randomly initialised DINOv2 backbone (ViT-S/14 by default) plus a linear
classification head with each method, at every ``--image-size`` (224 and 448 px) and every
``--delta-max`` (5% and 1%), and prints one markdown table of ratios to full fine-tuning and LoRA per
image size:

* ``full``       -- every parameter trainable (backbone + head).
* ``lora``       -- PEFT LoRA, r=16 on q/k/v/fc1/fc2 of every block.
* ``shira``      -- PEFT SHiRA (random sparse mask) on the same linears, ``r`` chosen so that its
                    entry count is as close as possible to FisherTune's (one row per delta-max).
* ``fishertune`` -- FisherTune, top delta-max of the same linears, all active: by magnitude (random init, so
                    spread uniformly over every weight: the worst case of the sparse paths) or, with ``--scores``,
                    by the scores a real estimation saved (``fishertune_scores.safetensors``; ``--model vit-ti14``
                    for a ViT-Ti/16 run, matched by block and layer name). The values gradient takes the path
                    `fishertune.tuner.sparse_grad.values_grad_path` picks per layer (sampled product, compact
                    GEMM over the entries' rows x cols, or dense GEMM + gather; the row counts each).
* ``fishertune-dense`` -- the same with the dense GEMM + gather forced in every layer
                    (``set_sparse_grad_mode("dense")``): the gain of the dispatch, in the same run.
                    The peak-memory run records which path each layer's backward really ran; the driver
                    stops if a ``fishertune-dense`` layer ran a sparse path, or if a ``fishertune`` layer's
                    path differs from what `values_grad_path` says.

The head (``Linear(hidden, --classes)`` on the pooled CLS token, cross-entropy loss) is the same for
all methods and trained in full (``modules_to_save=["head"]`` for the PEFT methods). The optimizer is
AdamW with weight decay 0.05 over the trainable parameters.

Measurement (each method in FRESH subprocesses, so nothing leaks between methods):

* Step time: ``--warmup`` untimed steps, then ``--steps`` timed steps (zero_grad, forward, loss,
  backward, optimizer step; CUDA is synchronised). This is repeated for ``--rounds`` rounds that
  interleave the methods, and the lowest per-round median step is reported (robust to background
  load drifting during the run). Timing runs use the default allocator settings. The 1-minute load
  average is recorded before every timing run; the table gives its range, so a reader can see how
  much other work shared the machine.
* Peak memory: a second subprocess per method. On CPU it runs with ``MALLOC_MMAP_THRESHOLD_=65536``
  (every tensor of >=64 KiB is its own mmap, so freed memory goes back to the OS and RSS follows
  the live set instead of glibc's cached heap), records RSS after the frozen base model is built
  (``baseline``), builds the adapter, resets the kernel's RSS high-water mark
  (``/proc/self/clear_refs`` <- 5; falls back to ``ru_maxrss`` if that is not writable, which
  also catches one-off setup peaks such as the magnitude selection) and trains ``--mem-steps``
  steps. ``peak = VmHWM - baseline``: adapter tensors + gradients + optimizer state + activations
  + transient buffers; the frozen weights and the Python/torch runtime are excluded. On CUDA it
  is ``torch.cuda.max_memory_allocated() - memory_allocated(baseline)`` with the peak statistics
  reset after the adapter is built.
* Training-state bytes, exact from the tensors after a step: ``.grad`` of every trainable
  parameter + every tensor in the optimizer state (incl. AdamW's ``step``) + adapter tensors
  (every parameter/buffer the PEFT method adds: LoRA A/B, SHiRA values and its int32 index
  tensors, FisherTune values/indices/ranks/shape, and the trainable ``modules_to_save`` copy of
  the head). For full fine-tuning the trained weights are the model itself, so its adapter term is 0.
* ``--profile [METHODS]`` (default method ``fishertune``): one more subprocess per listed method, image
  size and delta-max runs ``--warmup`` steps and then one step under ``torch.profiler``; the output
  gets the wall time of its forward / backward / optimizer phases and the top ``--profile-rows`` ops by
  self CPU time (self CUDA time on CUDA). ``--profile-only`` skips the tables and prints only that.

Step ratios here are one draw (the lowest of a few per-process medians); `tuner_speed_selections.py` gives them
as medians with 95% intervals from methods interleaved step by step in one process.

The worker (one method, one measurement) is `tuner_speed_worker.py`. Raw numbers of every row go to
the ``.json`` beside ``--out``; every ratio in the tables is computed from them.

Usage::

    python benchmarks/tuner_speed.py                    # ViT-S/14, 224 + 448 px, 5% + 1%, batch 8, CPU, fp32
    python benchmarks/tuner_speed.py --model vit-l14 --image-size 512 --delta-max 0.05 --device cuda --dtype bf16 \
        --out benchmarks/results/tuner_speed_vitl_cuda.md
    python benchmarks/tuner_speed.py --profile-only --image-size 224 --delta-max 0.05   # where a step's time goes
    # a real DR-FIM selection (5%, CamVid, ViT-Ti/16): the scores file of `dg_camvid.py --methods dr_fim_var`
    python benchmarks/tuner_speed.py --model vit-ti14 --scores <run>_work/fishertune_scores.safetensors \
        --delta-max 0.05 --out benchmarks/results/tuner_speed_drfim.md

Results are printed and written to ``--out`` (default ``benchmarks/results/tuner_speed.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tuner_speed_worker as W  # noqa: E402

from _common import device_line, script_command, write_report  # noqa: E402

METHODS = ("full", "lora", "shira", "fishertune", "fishertune-dense")
PER_DELTA = ("shira", "fishertune", "fishertune-dense")  # one row per --delta-max
MB = 2**20


# ------------------------------------------------------------------------------------------------
# running the workers
# ------------------------------------------------------------------------------------------------
def worker_cmd(args, method: str, mode: str, image_size: int, delta_max: float) -> list[str]:
    """The command line of one worker; every argument it requires comes from ``args`` (see W.FORWARDED)."""
    cmd = [sys.executable, str(HERE / "tuner_speed_worker.py"), "--method", method, "--mode", mode]
    cmd += ["--image-size", str(image_size), "--delta-max", repr(float(delta_max))]
    for k in W.FORWARDED:
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    return cmd


def run_worker(args, method: str, mode: str, image_size: int, delta_max: float) -> dict:
    env = dict(os.environ)
    env.pop("FISHERTUNE_SPARSE_GRAD", None)  # the method decides the path (see W.wrap)
    if mode == "mem" and args.device == "cpu":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    res = subprocess.run(worker_cmd(args, method, mode, image_size, delta_max), env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(
            f"worker {method}/{mode} at {image_size} px, delta_max {delta_max} failed (rc {res.returncode})"
        )
    return json.loads(res.stdout.strip().splitlines()[-1])


def check_grad_paths(method: str, r: dict) -> None:
    """Stop if FisherTune's backward did not take the path its row claims (see the module docstring)."""
    if method not in W.FISHERTUNE_METHODS:
        return
    if method == "fishertune-dense" and (r["sampled_layers"] or r["compact_layers"]):
        raise SystemExit(
            f"fishertune-dense: {r['sampled_layers']} layers ran the sampled kernel and {r['compact_layers']} the "
            "compact GEMM although dense was forced"
        )
    if method == "fishertune-dense":
        return
    wrong = [ly["name"] for ly in r["layers"] if ly["rule_path"] != ly["ran_path"]]
    if wrong:
        raise SystemExit(f"{method}: backward's values-gradient path differs from values_grad_path in {wrong}")


# ------------------------------------------------------------------------------------------------
# tables (every number in them comes from the raw rows written to the .json)
# ------------------------------------------------------------------------------------------------
def pct(d: float) -> str:
    """0.05 -> "5%", 0.005 -> "0.5%" (``:.0%`` would print "0%")."""
    return f"{d * 100:g}%"


def ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}x" if b > 0 else "n/a"


def row_name(method: str, r: dict, delta) -> str:
    if method == "full":
        return "full fine-tuning"
    if method == "lora":
        return f"LoRA r={W.LORA_R}"
    if method == "shira":
        return f"SHiRA r={r['shira_r']} ({pct(delta)})"
    if method == "fishertune":
        paths = ", ".join(f"{r[p + '_layers']} {p}" for p in ("sampled", "compact", "dense"))
        return f"FisherTune {pct(delta)} ({paths} of {r['tuned_layers']} layers)"
    return f"FisherTune {pct(delta)}, dense grads forced"


def table(rows: dict, order: list) -> str:
    full, lora = rows[("full", None)], rows[("lora", None)]
    lines = [
        "| method | trainable entries | step time s | step / full | step / LoRA | peak MB | peak / full | peak / LoRA "
        "| state MB | state / full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in order:
        r = rows[key]
        lines.append(
            f"| {row_name(key[0], r, key[1])} | {r['trainable']:,} | {r['step_s']:.4g} "
            f"| {ratio(r['step_s'], full['step_s'])} "
            f"| {ratio(r['step_s'], lora['step_s'])} | {r['peak_bytes'] / MB:.1f} "
            f"| {ratio(r['peak_bytes'], full['peak_bytes'])} "
            f"| {ratio(r['peak_bytes'], lora['peak_bytes'])} | {r['state_bytes'] / MB:.2f} "
            f"| {ratio(r['state_bytes'], full['state_bytes'], 3)} |"
        )
    return "\n".join(lines) + "\n"


def detail_table(rows: dict, order: list) -> str:
    lines = [
        "| method | grads MB | optimizer MB | adapter tensors MB | per-round median step s |",
        "|---|---:|---:|---:|---|",
    ]
    for key in order:
        r = rows[key]
        lines.append(
            f"| {row_name(key[0], r, key[1])} | {r['grad_bytes'] / MB:.2f} | {r['optim_bytes'] / MB:.2f} "
            f"| {r['adapter_bytes'] / MB:.2f} | {', '.join(f'{t:.4g}' for t in r['round_medians'])} |"
        )
    return "\n".join(lines) + "\n"


def notes(rows: dict, deltas: list) -> list[str]:
    out = []
    for d in deltas:
        if ("shira", d) in rows and ("fishertune", d) in rows:
            s_, f_ = rows[("shira", d)]["trainable"], rows[("fishertune", d)]["trainable"]
            out.append(
                f"At {pct(d)}, SHiRA r={rows[('shira', d)]['shira_r']} trains {s_:,} entries vs FisherTune's {f_:,} "
                f"({(s_ - f_) / f_:+.2%}), head included in both."
            )
        if ("fishertune", d) in rows and ("fishertune-dense", d) in rows:
            a, b = rows[("fishertune", d)], rows[("fishertune-dense", d)]
            out.append(
                f"At {pct(d)}, FisherTune's step with the dispatched values gradient ({a['sampled_layers']} sampled, "
                f"{a['compact_layers']} compact of {a['tuned_layers']} layers; the entries' blocks span "
                f"{a['block_share']:.0%} of the tuned weights) is {ratio(a['step_s'], b['step_s'])} its step "
                "with dense "
                f"gradients forced (same run); its selection patterns take {a['pattern_bytes'] / MB:.2f} MB (not "
                "training state)."
            )
        ft = rows.get(("fishertune", d))
        if ft is not None:
            low, enters, n = ft["lowest_tuned_block"], ft["grad_enters_block"], ft["blocks"]
            # Block `low`'s input needs no gradient, block low+1's does (it reads a tuned block's output).
            expected = None if low is None or low + 1 >= n else low + 1
            out.append(
                f"At {pct(d)}, {ft['tuned_layers']}/{ft['targeted_layers']} targeted layers hold entries; lowest tuned "
                f"block {low} of {n}; the lowest block whose input needs a gradient is {enters} (expected {expected}: "
                "backward stops at the lowest tuned block's input"
                f"{'' if enters == expected else ' -- NOT as expected'})."
            )
    return out


def model_line(args, image_size: int) -> str:
    cfg = W.model_config(args.model, args.layers)
    tokens = args.batch * ((image_size // 14) ** 2 + 1)
    selection = f"selection by the scores of `{Path(args.scores).name}`" if args.scores else "selection by magnitude"
    return (
        f"DINOv2 {args.model} (hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, random init; FisherTune "
        f"{selection}), {image_size} px, batch {args.batch} ({tokens} tokens), {args.dtype}, "
        f"{device_line(args.device, args.threads)}"
    )


# ------------------------------------------------------------------------------------------------
# one image size
# ------------------------------------------------------------------------------------------------
def section(args, image_size: int, deltas: list, methods: list) -> tuple[str, list[dict]]:
    """The markdown of one image size and its raw rows."""
    import torch

    order = [(m, None) for m in methods if m not in PER_DELTA]
    order += [(m, d) for d in deltas for m in methods if m in PER_DELTA]
    rows, loads = {}, []
    t0 = time.time()
    for key in order:
        r = run_worker(args, key[0], "mem", image_size, key[1] if key[1] is not None else deltas[0])
        check_grad_paths(key[0], r)
        rows[key] = dict(r, round_medians=[])
        print(
            f"[{image_size}px {key}] peak {r['peak_bytes'] / MB:.1f} MB  state {r['state_bytes'] / MB:.2f} MB",
            file=sys.stderr,
        )
    # Timing runs go round-robin over the methods, `--rounds` times; a method's step time is the
    # lowest of its per-round medians, which damps drift in background load on a shared machine.
    for rnd in range(args.rounds):
        for key in order:
            loads.append(os.getloadavg()[0])
            r = run_worker(args, key[0], "time", image_size, key[1] if key[1] is not None else deltas[0])
            rows[key]["round_medians"].append(r["step_s"])
            rows[key]["loss"] = r["loss"]
            print(
                f"[{image_size}px round {rnd}] {key}: median step {r['step_s']:.3f}s (load {loads[-1]:.1f})",
                file=sys.stderr,
            )
    loads.append(os.getloadavg()[0])
    for r in rows.values():
        r["step_s"] = min(r["round_medians"])

    hdr = (
        f"### {image_size} px\n\n{model_line(args, image_size)}; AdamW(wd=0.05); step time = lowest over {args.rounds} "
        f"interleaved rounds of the median of {args.steps} steps after {args.warmup} warm-up; "
        f"torch {torch.__version__}; "
        f"machine load (1-min load average before each timing run, {os.cpu_count()} cores): "
        f"{min(loads):.1f}-{max(loads):.1f}, "
        f"median {sorted(loads)[len(loads) // 2]:.1f}; {time.time() - t0:.0f} s.\n"
    )
    text = (
        hdr
        + "\n"
        + table(rows, order)
        + "".join(f"\n{n}\n" for n in notes(rows, deltas))
        + "\n"
        + detail_table(rows, order)
    )
    raw = [
        dict(rows[k], method=k[0], delta_max=k[1], image_size=image_size, row=row_name(k[0], rows[k], k[1]))
        for k in order
    ]
    return text, raw


def profile_section(args, image_size: int, delta: float, method: str) -> tuple[str, dict]:
    r = run_worker(args, method, "profile", image_size, delta)
    phases = ", ".join(f"{k} {v:.3f} s" for k, v in r["phases_s"].items())
    name = method if method not in PER_DELTA else f"{method} {pct(delta)}"
    text = (
        f"### Profile of one {name} step, {image_size} px\n\n{model_line(args, image_size)}; "
        f"one step after {args.warmup} "
        f"warm-up, {r['profiled_step_s']:.3f} s under the profiler; phases: {phases}. "
        f"Top {args.profile_rows} ops by self "
        f"{'CUDA' if args.device.startswith('cuda') else 'CPU'} time:\n\n```\n{r['profile_table'].rstrip()}\n```\n"
    )
    return text, dict(r, image_size=image_size, delta_max=delta)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(W.MODELS), default="vit-s14")
    p.add_argument(
        "--layers", type=int, default=0, help="blocks of the backbone (0: the model's own; fewer for smoke tests)"
    )
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--steps", type=int, default=5, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per method")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds over all methods")
    p.add_argument("--mem-steps", type=int, default=2, help="steps of the peak-memory run")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", default="224,448", help="comma-separated; one table each")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype (weights stay fp32)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument(
        "--scores",
        default="",
        help="FisherTune's selection from a real run's fishertune_scores.safetensors (same block count and layer "
        "shapes as --model, e.g. vit-ti14 for a ViT-Ti/16 run); default: top delta-max by magnitude",
    )
    p.add_argument("--delta-max", default="0.05,0.01", help="comma-separated; SHiRA and FisherTune rows for each")
    p.add_argument(
        "--profile",
        nargs="?",
        const="fishertune",
        default="",
        metavar="METHODS",
        help="also profile one step of these methods (comma-separated; default fishertune) at every size and delta",
    )
    p.add_argument("--profile-only", action="store_true", help="only the profiles (of --profile, default fishertune)")
    p.add_argument("--profile-rows", type=int, default=25, help="ops listed per profile")
    p.add_argument(
        "--out",
        default=str(HERE / "results" / "tuner_speed.md"),
        help="markdown; the raw rows go to the .json beside it",
    )
    args = p.parse_args(argv)

    if args.rounds < 1 or args.steps < 1:
        p.error("--rounds and --steps must be at least 1")
    methods = [m for m in args.methods.split(",") if m]
    profiled = [m for m in (args.profile or ("fishertune" if args.profile_only else "")).split(",") if m]
    for m in methods + profiled:
        if m not in METHODS:
            p.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    methods = [m for m in METHODS if m in methods or m in ("full", "lora")]  # the ratios need full and LoRA
    sizes = [int(v) for v in args.image_size.split(",") if v]
    deltas = [float(v) for v in args.delta_max.split(",") if v]
    t0 = time.time()
    texts, raw = [], {"rows": [], "profiles": []}
    for size in sizes:
        if not args.profile_only:
            text, rows = section(args, size, deltas, methods)
            texts.append(text)
            raw["rows"] += rows
        for m in profiled:
            for d in deltas if m in PER_DELTA else deltas[:1]:
                text, prof = profile_section(args, size, d, m)
                texts.append(text)
                raw["profiles"].append(prof)
    text = "\n".join(texts)
    print(text)
    print(f"(total {time.time() - t0:.0f}s)", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        command = script_command("tuner_speed.py", argv)
        write_report(
            out,
            "# Tuner speed benchmark\n\nGenerated by `benchmarks/tuner_speed.py` (see its docstring for "
            f"the method); command: `{command}`; raw numbers in `{out.with_suffix('.json').name}`.\n\n",
            text,
            dict(raw, command=command),
        )


if __name__ == "__main__":
    main()
