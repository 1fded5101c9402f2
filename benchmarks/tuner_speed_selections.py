"""FisherTune's step cost on several real selections: paired ratios with 95% intervals, methods interleaved per step.

All models live in ONE process and take turns one training step at a time: a round is one step of every method
(in an order rotated by one each round, so no method always runs first or after the same neighbour), and
``--rounds`` rounds follow ``--warmup`` untimed ones. Background load on a shared machine then hits every method
of a round alike, and each ratio is computed per round (FisherTune's step / full fine-tuning's step of the same
round) before it is summarised: the median over rounds, with a 95% interval from a paired bootstrap over rounds
(``--boot`` resamples of the rounds, a fixed ``--seed``; `paired_ratio`). An interval that includes 1 means the
benchmark cannot tell the two apart.

Methods: full fine-tuning, LoRA r=16 (the shared references) and, per selection and ``--delta-max``, FisherTune
with three values-gradient dispatches (`fishertune.tuner.sparse_grad`): ``calibrate`` (timed per layer key at
the first backward passes; ``--warmup`` must cover them), ``auto`` (the constant rule) and ``dense`` (forced). The
model, head, loss and optimizer are `tuner_speed_worker.py`'s (random-init DINOv2-shaped backbone, ``vit-ti14``
by default, the shape of the CamVid runs' ViT-Ti/16, whose score files map onto it by block and layer name).

Selections: ``uniform`` (top delta-max by magnitude of the random weights: spread evenly, always run) and every
``--selection NAME=PATH`` (a run's ``fishertune_scores.safetensors``). The score files are made by (deterministic)::

    python benchmarks/dg_camvid.py --quick --methods dr_fim_var fim_var delta_fim_var --seeds 0 --threads 1 \\
        --out-dir benchmarks/results/.cache/selections        # quick recipe: DR-FIM, F only, dF only
    python benchmarks/dg_camvid.py --methods dr_fim_var --seeds 0 1 --threads 1 \\
        --out-dir benchmarks/results/.cache/selections        # 800-step recipe (about an hour per seed on a core)

(the scores are written when estimation ends, before the tuning phase; ``.cache`` is not in git), then::

    S=benchmarks/results/.cache/selections/runs
    python benchmarks/tuner_speed_selections.py \\
        --selection quick-dr_fim=$S/quick_v2/dr_fim_var__seed0_work/fishertune_scores.safetensors \\
        --selection quick-F=$S/quick_v2/fim_var__seed0_work/fishertune_scores.safetensors \\
        --selection quick-dF=$S/quick_v2/delta_fim_var__seed0_work/fishertune_scores.safetensors \\
        [--selection 800-dr_fim-s0=$S/full_v2/dr_fim_var__seed0_work/... --selection 800-dr_fim-s1=...]

Writes ``--out`` (markdown) and the ``.json`` beside it: ``rows`` (calibrated dispatch: one row per selection,
budget and reference ``vs`` in full / lora / dense, with ``median``, ``ci_low``, ``ci_high``), ``rows_auto``
(the same for the constant rule), the per-round step times of every method, the paths each FisherTune model ran
in its last step, and the machine load and thread count.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tuner_speed_worker as W  # noqa: E402

from _common import device_line, script_command, write_report  # noqa: E402

DISPATCHES = ("calibrate", "auto", "dense")
#: What the issue asks to compare; a selection not given on the command line is reported as not run.
EXPECTED = ("quick-dr_fim", "quick-F", "quick-dF", "uniform", "800-dr_fim-s0", "800-dr_fim-s1")
GOAL = {"full": 0.80, "lora": 1.0}  # at 5%, the upper end of the interval


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(sorted_xs: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), ``q`` in [0, 1]."""
    pos = q * (len(sorted_xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def paired_ratio(a: list[float], b: list[float], boot: int = 2000, seed: int = 0) -> dict:
    """The median over rounds of ``a[r] / b[r]`` and its 95% paired-bootstrap interval: ``boot`` resamples of the
    rounds (with replacement, `random.Random(seed)`), the 2.5% and 97.5% percentiles of their medians."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_ratio needs equally many rounds on both sides, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b)]
    rng = random.Random(seed)
    n = len(ratios)
    meds = sorted(median([ratios[rng.randrange(n)] for _ in range(n)]) for _ in range(boot))
    return {"median": median(ratios), "ci_low": percentile(meds, 0.025), "ci_high": percentile(meds, 0.975)}


def fmt(r: dict) -> str:
    flag = " (includes 1)" if r["ci_low"] <= 1.0 <= r["ci_high"] else ""
    return f"{r['median']:.2f}x [{r['ci_low']:.2f}, {r['ci_high']:.2f}]{flag}"


# ------------------------------------------------------------------------------------------------
# the interleaved run
# ------------------------------------------------------------------------------------------------
def build(args, method: str, delta: float = 0.0, scores: str = ""):
    """One model + AdamW, built as `tuner_speed_worker` builds them (same seed, so the same base weights)."""
    import torch

    ns = argparse.Namespace(model=args.model, layers=args.layers, image_size=args.image_size, device=args.device,
                            classes=args.classes, method=method, delta_max=delta, scores=scores)  # fmt: skip
    model = W.build_base(ns)
    model.requires_grad_(False)
    model = W.wrap(model, ns)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05), sum(p.numel() for p in params)


def interleave(args, selections: dict[str, str], deltas: list[float]) -> dict:
    import torch

    from fishertune.tuner import grad_calibration, sparse_grad

    torch.set_num_threads(args.threads)
    grad_calibration.reset_calibration()
    methods = {"full": build(args, "full"), "lora": build(args, "lora")}
    for sel, path in selections.items():
        for d in deltas:
            for disp in DISPATCHES:
                methods[f"{sel}|{d}|{disp}"] = build(args, "fishertune", d, path)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(args.device)
    y = torch.randint(0, args.classes, (args.batch,), generator=gen).to(args.device)
    names = list(methods)
    times = {n: [] for n in names}
    paths = {}
    load_before = os.getloadavg()
    t0 = time.time()
    for rnd in range(args.warmup + args.rounds):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            model, opt, _ = methods[name]
            sparse_grad.set_sparse_grad_mode(name.rsplit("|", 1)[1] if "|" in name else "dense")
            last = rnd == args.warmup + args.rounds - 1
            before = W._path_calls(model) if last and "|" in name else None
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if rnd >= args.warmup:
                times[name].append(time.perf_counter() - t)
            if before is not None:
                paths[name] = ran_paths(before, W._path_calls(model), model)
        print(f"round {rnd + 1}/{args.warmup + args.rounds} ({time.time() - t0:.0f} s, load "
              f"{os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)  # fmt: skip
    sparse_grad.set_sparse_grad_mode("auto")
    trainable = {n: m[2] for n, m in methods.items()}
    return {"times": times, "paths": paths, "trainable": trainable, "load_before": list(load_before),
            "load_after": list(os.getloadavg()), "seconds": time.time() - t0}  # fmt: skip


def ran_paths(before: dict, after: dict, model) -> dict[str, int]:
    """How many tuned layers ran each values-gradient path in one step (layers without entries are not counted)."""
    from fishertune.tuner import FisherTuneLayer

    out = {"sampled": 0, "compact": 0, "dense": 0}
    for name, m in model.named_modules():
        if isinstance(m, FisherTuneLayer) and m.fishertune_active.get("default", 0):
            ran = [p for p in ("sampled", "compact") if after[name][p] > before[name][p]]
            out[ran[0] if ran else "dense"] += 1
    return out


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def ratio_rows(raw: dict, selections: list[str], deltas: list[float], dispatch: str, args) -> list[dict]:
    t = raw["times"]
    rows = []
    for sel in selections:
        for d in deltas:
            ft = t[f"{sel}|{d}|{dispatch}"]
            for vs, ref in (("full", t["full"]), ("lora", t["lora"]), ("dense", t[f"{sel}|{d}|dense"])):
                rows.append(dict(selection=sel, budget=d, vs=vs, dispatch=dispatch,
                                 **paired_ratio(ft, ref, args.boot, args.seed)))  # fmt: skip
    return rows


def report(args, raw: dict, selections: dict[str, str], deltas: list[float]) -> tuple[str, dict]:
    import torch

    rows = ratio_rows(raw, list(selections), deltas, "calibrate", args)
    rows_auto = ratio_rows(raw, list(selections), deltas, "auto", args)
    get = {(r["selection"], r["budget"], r["vs"], r["dispatch"]): r for r in rows + rows_auto}
    cfg = W.model_config(args.model, args.layers)
    tokens = args.batch * ((args.image_size // 14) ** 2 + 1)
    lb, la = raw["load_before"], raw["load_after"]
    lines = [
        f"DINOv2 {args.model} shape (hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} blocks, random init) + "
        f"linear head, {args.image_size} px, batch {args.batch} ({tokens} tokens), fp32, "
        f"{device_line(args.device, args.threads)}, torch {torch.__version__}; {args.rounds} rounds after "
        f"{args.warmup} warm-up rounds, methods interleaved step by step; ratios: median over rounds of the "
        f"per-round ratio [95% paired-bootstrap interval, {args.boot} resamples, seed {args.seed}]; machine load "
        f"(1/5/15-min averages) before {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, after {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} "
        f"on {os.cpu_count()} cores; {raw['seconds']:.0f} s.",
        "",
        "| selection | budget | entries | paths calibrate (s/c/d) | paths auto (s/c/d) | calibrate / full "
        "| calibrate / LoRA | calibrate / dense | auto / full | auto / dense |",
        "|---|---:|---:|---|---|---|---|---|---|---|",
    ]
    for sel in selections:
        for d in deltas:
            p = {disp: raw["paths"][f"{sel}|{d}|{disp}"] for disp in ("calibrate", "auto")}
            pp = {k: f"{v['sampled']}/{v['compact']}/{v['dense']}" for k, v in p.items()}
            cells = [fmt(get[(sel, d, vs, disp)]) for disp, vs in
                     (("calibrate", "full"), ("calibrate", "lora"), ("calibrate", "dense"), ("auto", "full"),
                      ("auto", "dense"))]  # fmt: skip
            lines.append(f"| {sel} | {d * 100:g}% | {raw['trainable'][f'{sel}|{d}|calibrate']:,} | {pp['calibrate']} "
                         f"| {pp['auto']} | " + " | ".join(cells) + " |")  # fmt: skip
    t = raw["times"]
    lines += ["", f"Median step s: full {median(t['full']):.3f}, LoRA {median(t['lora']):.3f} "
              f"(LoRA / full {fmt(paired_ratio(t['lora'], t['full'], args.boot, args.seed))})."]  # fmt: skip
    missing = [s for s in EXPECTED if s not in selections]
    if missing:
        lines += ["", f"Not run: {', '.join(missing)} (their score files were not given; see the docstring for the "
                  "commands that make them)."]  # fmt: skip
    if 0.05 in deltas:
        for sel in selections:
            f_, l_ = get[(sel, 0.05, "full", "calibrate")], get[(sel, 0.05, "lora", "calibrate")]
            met = f_["ci_high"] <= GOAL["full"] and l_["ci_high"] <= GOAL["lora"]
            verdict = "met" if met else "NOT met"
            lines.append(f"\nGoal at 5% ({sel}): upper ends {f_['ci_high']:.3f}x full (goal <= {GOAL['full']}) "
                         f"and {l_['ci_high']:.3f}x LoRA (goal <= {GOAL['lora']}): {verdict}.")  # fmt: skip
    losers = [r for r in rows if r["vs"] == "dense" and r["ci_low"] > 1.0]
    lines.append(f"\nCalibrated dispatch intervals wholly above 1.0x dense: {len(losers)}"
                 + "".join(f"; {r['selection']} {r['budget'] * 100:g}%" for r in losers) + ".")  # fmt: skip
    data = dict(raw, rows=rows, rows_auto=rows_auto, selections=selections, not_run=missing, threads=args.threads)
    return "\n".join(lines) + "\n", data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--selection", action="append", default=[], metavar="NAME=PATH",
                   help="a run's fishertune_scores.safetensors (repeatable); 'uniform' is always run")  # fmt: skip
    p.add_argument("--delta-max", default="0.05,0.01", help="comma-separated budgets")
    p.add_argument("--model", choices=sorted(W.MODELS), default="vit-ti14")
    p.add_argument("--layers", type=int, default=0, help="blocks (0: the model's own; fewer for smoke tests)")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds (one step of every method each)")
    p.add_argument("--warmup", type=int, default=4, help="untimed rounds (>= the calibration's backward passes)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed")
    p.add_argument("--out", default=str(HERE / "results" / "tuner_speed_selections.md"))
    args = p.parse_args(argv)
    from fishertune.tuner.grad_calibration import CALIBRATION_CALLS

    if args.rounds < 2:
        p.error("--rounds must be at least 2 (an interval needs several rounds)")
    if args.warmup <= CALIBRATION_CALLS:
        p.error(f"--warmup must exceed the calibration's {CALIBRATION_CALLS} backward passes, got {args.warmup}")
    selections = {"uniform": ""}
    for item in args.selection:
        name, sep, path = item.partition("=")
        if not sep or not name or "|" in name or name in selections:
            p.error(f"--selection {item!r}: expected a new NAME=PATH (NAME without '|', not 'uniform')")
        if not Path(path).is_file():
            p.error(f"--selection {name}: no scores file {path} (see the docstring for the commands that make it)")
        selections[name] = path
    deltas = [float(v) for v in args.delta_max.split(",") if v]
    raw = interleave(args, selections, deltas)
    text, data = report(args, raw, selections, deltas)
    print(text)
    out = Path(args.out)
    command = script_command("tuner_speed_selections.py", argv)
    write_report(out, "# Tuner step cost over several selections\n\nGenerated by `benchmarks/tuner_speed_selections.py`"
                 f" (see its docstring for the protocol); command: `{command}`; raw numbers in "
                 f"`{out.with_suffix('.json').name}`.\n\n", text, dict(data, command=command))  # fmt: skip


if __name__ == "__main__":
    main()
