"""Where a sparse values gradient of the sparse-delta layer beats the dense GEMM + gather: the constants of its rule.

`fishertune.tuner.sparse_grad` computes dL/d(values) by the dense ``(grad_out^T @ x).reshape(-1).index_select(0,
idx)`` or, where they are cheaper, by one of two sparse paths; ``--path`` picks which one this times against it:

* ``sampled``: ``torch.sparse.sampled_addmm`` on the layer's cached CSR pattern (built once, not timed), with the
  transposing copies the kernel makes. For each weight shape, token count and density (``--densities``) the
  crossover density is where ``sampled / dense`` crosses 1; a least-squares fit of
  ``crossover = A - B * (1/out + 1/in)`` over the shapes and token counts gives ``SAMPLED_CPU_A``/``_B``. A shape
  whose crossover lies outside the measured densities is left out of the fit and named.
* ``compact``: the GEMM over only the rows and columns holding a selected entry. Its cost follows the block
  fraction ``rows * cols / (out * in)``; for each shape, token count, block fraction (``--fractions``) and aspect
  (``square``: sqrt(f) of the rows x sqrt(f) of the columns; ``rows``: f of the rows; ``cols``: f of the columns,
  as fc2's DR-FIM picks) it times one selection (5% of the block's entries). The rule's ``COMPACT_CPU_MAX`` is the
  smallest crossover measured, so the compact path is taken only where it won on every shape and aspect.

The two paths of a pair are checked to agree (``assert_close``), then interleaved and repeated (``--reps``);
medians are compared, so background load hits both alike; crossovers are interpolated in log space. The report
ends with the lines to paste into `fishertune/tuner/sparse_grad.py` (on another device: its constants, which the
rule does not read yet).

Usage::

    # from the repository root; the results of the rule's constants:
    python benchmarks/grad_path_crossover.py --path sampled --threads 1 \\
        --out benchmarks/results/sparse_grad_crossover_1thread.md
    python benchmarks/grad_path_crossover.py --path compact --threads 1 \\
        --out benchmarks/results/compact_grad_crossover.md
    # CUDA, ViT-L shapes at batch 8, 448 and 512 px:
    python benchmarks/grad_path_crossover.py --path compact --device cuda --dtype bf16 \\
        --shapes 1024x1024,4096x1024,1024x4096 --tokens 8200,10376 --out benchmarks/results/gpu/compact_cuda_bf16.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from fishertune.tuner.sparse_grad import SelectionPattern, compact_values_grad, sampled_supported, sampled_values_grad

from _common import device_line, script_command, write_report

# ViT-S/14 targets: q/k/v (384x384), fc1 (1536x384), fc2 (384x1536); tokens: batch 8 at 224 and 448 px.
SHAPES = [(384, 384), (1536, 384), (384, 1536)]
TOKENS = [2056, 8200]
# Up to 50%: on some CPUs sampled/dense is 0.25-0.4 at 5% on these shapes, so the crossover lies well above 5%,
# and a grid that stopped at 10% would leave most shapes out of the fit.
DENSITIES = [0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5]
FRACTIONS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
ASPECTS = ("square", "rows", "cols")
DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}
TITLES = {"sampled": "Sampled vs dense values gradient", "compact": "Compact vs dense values gradient"}


def _time(fns: dict, reps: int, sync) -> dict:
    out = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(reps):
        for k, f in fns.items():
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            out[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in out.items()}


def crossover(xs, ratios):
    """Where sparse/dense crosses 1 (log-interpolated between the measured ``xs``); 0 if never below, inf if always."""
    if ratios[0] >= 1:
        return 0.0
    for (d0, r0), (d1, r1) in zip(zip(xs, ratios), zip(xs[1:], ratios[1:])):
        if r0 < 1 <= r1:
            t = (math.log(1) - math.log(r0)) / (math.log(r1) - math.log(r0))
            return math.exp(math.log(d0) + t * (math.log(d1) - math.log(d0)))
    return math.inf


def fit(points):
    """Least squares ``(A, B)`` of ``c = A - B * s`` over the ``(s, c)`` points whose crossover ``c`` is inside
    the measured densities (0 < c < inf); with one such point ``(c, 0.0)``, with none ``(None, None)``; with
    a single distinct ``s``, ``(mean c, 0.0)``."""
    pts = [(s, c) for s, c in points if 0 < c < math.inf]
    if not pts:
        return None, None
    if len(pts) < 2:
        return pts[0][1], 0.0
    n = len(pts)
    ms, mc = sum(s for s, _ in pts) / n, sum(c for _, c in pts) / n
    var = sum((s - ms) ** 2 for s, _ in pts)
    slope = sum((s - ms) * (c - mc) for s, c in pts) / var if var else 0.0
    return mc - slope * ms, -slope


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"384x384,1536x384"`` -> ``[(384, 384), (1536, 384)]`` (out x in)."""
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",") if s]


def paste_lines(device_type: str, a: float, b: float) -> list[str]:
    """The sampled path's constants for `fishertune/tuner/sparse_grad.py` (CPU; other devices: named for it)."""
    prefix = "SAMPLED_CPU" if device_type == "cpu" else f"SAMPLED_{device_type.upper()}"
    return [f"{prefix}_A = {a:.4g}", f"{prefix}_B = {b:.4g}"]


def block_indices(out_f: int, in_f: int, fraction: float, aspect: str, gen) -> torch.Tensor:
    """5% of the entries of a random block covering ``fraction`` of the weight (int32, random order)."""
    share = {"square": (math.sqrt(fraction),) * 2, "rows": (fraction, 1.0), "cols": (1.0, fraction)}[aspect]
    r, c = max(1, round(share[0] * out_f)), max(1, round(share[1] * in_f))
    rows = torch.randperm(out_f, generator=gen)[:r]
    cols = torch.randperm(in_f, generator=gen)[:c]
    flat = (rows[:, None] * in_f + cols[None, :]).reshape(-1)
    n = max(1, round(0.05 * flat.numel()))
    # every chosen row and column keeps an entry, so the block is exactly rows x cols
    must = torch.cat([rows * in_f + cols[torch.arange(r) % c], rows[torch.arange(c) % r] * in_f + cols]).unique()
    rest = flat[~torch.isin(flat, must)]
    extra = rest[torch.randperm(rest.numel(), generator=gen)[: max(0, n - must.numel())]]
    idx = torch.cat([must, extra])
    return idx[torch.randperm(idx.numel(), generator=gen)].to(torch.int32)


def measure(path: str, go, x, idx, out_f: int, in_f: int, reps: int, sync) -> dict:
    """Median seconds of the dense and the ``path`` values gradient at ``idx`` (compact: plus its block fraction);
    checks they agree first."""
    n = idx.numel()
    pattern = SelectionPattern(idx, out_f, in_f)
    # built once per selection (and active prefix) in the layer, so not timed here
    pattern.prefix(n) if path == "sampled" else pattern.block(n)
    sparse = sampled_values_grad if path == "sampled" else compact_values_grad
    fns = {"dense": lambda: (go.t() @ x).reshape(-1).index_select(0, idx), path: lambda: sparse(go, x, pattern, n)}
    ref, got = fns["dense"]().float(), fns[path]().float()
    tol = 1e-3 if go.dtype == torch.float32 else (1e-8 if go.dtype == torch.float64 else 5e-2)
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * float(ref.abs().max().clamp_min(1)))
    out = _time(fns, reps, sync)
    if path == "compact":
        out["block"] = pattern.block_size(n) / (out_f * in_f)
    return out


def _sampled(args, parser, dev, dtype, sync, gen) -> tuple[list, list, dict]:
    densities = [float(d) for d in args.densities.split(",")]
    if densities != sorted(densities):
        parser.error("--densities must be ascending")
    rows, points = [], []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        for out_f, in_f in parse_shapes(args.shapes):
            go = torch.randn(tokens, out_f, generator=gen).to(dev, dtype)
            x = torch.randn(tokens, in_f, generator=gen).to(dev, dtype)
            times = []
            for d in densities:
                # int32, in no particular order: like the layer's `fishertune_indices` (global-rank order)
                idx = torch.randperm(out_f * in_f, generator=gen)[: max(1, round(d * out_f * in_f))]
                times.append(measure("sampled", go, x, idx.to(dev, torch.int32), out_f, in_f, args.reps, sync))
            ratios = [t["sampled"] / t["dense"] for t in times]
            c = crossover(densities, ratios)
            points.append((1 / out_f + 1 / in_f, c))
            rows.append(dict(tokens=tokens, out=out_f, **{"in": in_f}, times=times, ratios=ratios, crossover=c))
            print(f"tokens {tokens} {out_f}x{in_f}: " + ", ".join(f"{d:g}: {r:.2f}" for d, r in zip(densities, ratios))
                  + f" -> crossover {c:.4g}", file=sys.stderr, flush=True)  # fmt: skip
    a, b = fit(points)
    lines = ["| tokens | weight (out x in) | " + " | ".join(f"{d:g}" for d in densities) + " | crossover density |",
             "|---:|---|" + "---:|" * len(densities) + "---:|"]  # fmt: skip
    for r in rows:
        cells = " | ".join(f"{t['sampled'] * 1e3:.3g} / {t['dense'] * 1e3:.3g} ({q:.2f}x)"
                           for t, q in zip(r["times"], r["ratios"]))  # fmt: skip
        lines.append(f"| {r['tokens']} | {r['out']}x{r['in']} | {cells} | {r['crossover']:.4g} |")
    censored = [f"{r['out']}x{r['in']} at {r['tokens']} tokens" for r in rows if not 0 < r["crossover"] < math.inf]
    lines.append("")
    if censored:
        span = f"{densities[0]:g}-{densities[-1]:g}"
        lines.append(f"Left out of the fit (crossover outside the measured densities {span}; "
                     f"widen --densities): {', '.join(censored)}.")  # fmt: skip
    if a is None:
        lines.append("No crossover inside the measured densities: no constants fitted.")
        paste = []
    else:
        lines.append(f"fit over {len(rows) - len(censored)} crossovers: crossover = {a:.4g} - {b:.4g} * (1/out + 1/in)")
        paste = paste_lines(dev.type, a, b)
    return lines, paste, dict(densities=densities, rows=rows, fit=dict(a=a, b=b), a=a, b=b)


def _compact(args, parser, dev, dtype, sync, gen) -> tuple[list, list, dict]:
    fractions = [float(f) for f in args.fractions.split(",")]
    if fractions != sorted(fractions) or not all(0 < f <= 1 for f in fractions):
        parser.error("--fractions must be ascending, in (0, 1]")
    aspects = args.aspects.split(",")
    if any(a not in ASPECTS for a in aspects):
        parser.error(f"--aspects takes {ASPECTS}")
    rows = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        for out_f, in_f in parse_shapes(args.shapes):
            go = torch.randn(tokens, out_f, generator=gen).to(dev, dtype)
            x = torch.randn(tokens, in_f, generator=gen).to(dev, dtype)
            for aspect in aspects:
                times = [measure("compact", go, x, block_indices(out_f, in_f, f, aspect, gen).to(dev), out_f, in_f,
                                 args.reps, sync) for f in fractions]  # fmt: skip
                blocks = [t["block"] for t in times]
                ratios = [t["compact"] / t["dense"] for t in times]
                c = crossover(blocks, ratios)
                rows.append(dict(tokens=tokens, out=out_f, **{"in": in_f}, aspect=aspect, blocks=blocks,
                                 times=times, ratios=ratios, crossover=c))  # fmt: skip
                print(f"tokens {tokens} {out_f}x{in_f} {aspect}: "
                      + ", ".join(f"{b:.2f}: {r:.2f}" for b, r in zip(blocks, ratios)) + f" -> crossover {c:.3g}",
                      file=sys.stderr, flush=True)  # fmt: skip
    found = [r["crossover"] for r in rows if r["crossover"] < math.inf]
    threshold = min(found) if found else None
    lines = ["Columns: the block fraction asked for (the measured one is in the .json).", "",
             "| tokens | weight (out x in) | block | " + " | ".join(f"{f:g}" for f in fractions) + " | crossover |",
             "|---:|---|---|" + "---:|" * len(fractions) + "---:|"]  # fmt: skip
    for r in rows:
        cells = " | ".join(f"{t['compact'] * 1e3:.3g} / {t['dense'] * 1e3:.3g} ({q:.2f}x)"
                           for t, q in zip(r["times"], r["ratios"]))  # fmt: skip
        lines.append(f"| {r['tokens']} | {r['out']}x{r['in']} | {r['aspect']} | {cells} | {r['crossover']:.3g} |")
    lines.append("")
    if threshold is None:
        lines.append("The compact GEMM won at every measured fraction: no crossover, no constant.")
        paste = []
    else:
        lines.append(f"Smallest crossover over {len(rows)} rows: {threshold:.3g} (the rule's constant: compact "
                     "only where it won on every shape, token count and aspect measured).")  # fmt: skip
        prefix = "COMPACT_CPU_MAX" if dev.type == "cpu" else f"COMPACT_{dev.type.upper()}_MAX"
        paste = [f"{prefix} = {math.floor(threshold * 100) / 100:g}"]
    return lines, paste, dict(fractions=fractions, rows=rows, threshold=threshold)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--path", choices=list(TITLES), required=True, help="the sparse path timed against the dense one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="sampled_addmm: fp32/fp64 only on CPU")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--shapes", default=",".join(f"{o}x{i}" for o, i in SHAPES), help="weights, out x in")
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--densities", default=",".join(map(str, DENSITIES)), help="sampled: densities, ascending")
    p.add_argument("--fractions", default=",".join(map(str, FRACTIONS)), help="compact: block fractions, ascending")
    p.add_argument("--aspects", default=",".join(ASPECTS), help="compact: block aspects")
    p.add_argument("--out", default="", help="also write the markdown here and the raw numbers to the .json beside it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.path == "sampled" and not sampled_supported(dev.type, dtype):
        p.error(f"torch.sparse.sampled_addmm has no {args.dtype} kernel on {dev.type}")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    load0 = os.getloadavg()[0]
    run = _sampled if args.path == "sampled" else _compact
    table, paste, raw = run(args, p, dev, dtype, sync, torch.Generator().manual_seed(0))
    load1 = os.getloadavg()[0]
    lines = [f"{device_line(dev.type, args.threads)}, {args.dtype}, torch {torch.__version__}; median of {args.reps} "
             f"interleaved repetitions; 1-min load average {load0:.1f} at start, {load1:.1f} at end. Cells: "
             f"{args.path} ms / dense ms ({args.path} / dense).", "", *table]  # fmt: skip
    if paste:
        where = "fishertune/tuner/sparse_grad.py" if dev.type == "cpu" else "sparse_grad.py (no rule reads them yet)"
        lines += ["", f"Constants for {where}:", "", "```python", *paste, "```"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        command = script_command("grad_path_crossover.py", argv)
        write_report(args.out, f"# {TITLES[args.path]}\n\nGenerated by `{command}`.\n\n", text,
                     dict(command=command, path=args.path, paste=paste, **{k: v for k, v in raw.items()
                                                                            if k not in ("a", "b")}))  # fmt: skip
    return dict(paste=paste, **raw)


if __name__ == "__main__":
    main()
