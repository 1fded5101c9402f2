"""Where the compact values gradient of the sparse-delta layer beats the dense GEMM + gather.

The compact path (`fishertune.tuner.sparse_grad.compact_values_grad`) runs the weight-gradient GEMM only over
the rows and columns of the weight that hold a selected entry. Its cost follows the block fraction
``rows * cols / (out * in)``, not the density, plus gathering those columns of grad_out and x. For each weight
shape, token count, block fraction and block aspect this times both paths on one selection (5% of the block's
entries, random inside it):

* ``square``: ``sqrt(f)`` of the rows x ``sqrt(f)`` of the columns;
* ``rows``:   ``f`` of the rows, every column (a selection that picks output channels);
* ``cols``:   every row, ``f`` of the columns (a selection that picks input channels, as fc2's DR-FIM does).

The two are interleaved and repeated (``--reps``); medians are compared. The crossover fraction is where
``compact / dense`` crosses 1 (log-interpolated, `sparse_grad_crossover.crossover`). The rule takes one
constant, the smallest crossover measured (so the compact path is chosen only where it won on every shape and
aspect); the script ends with the line to paste into `fishertune/tuner/sparse_grad.py`. Each pair is checked
to agree (``assert_close``) before it is timed.

Usage::

    python benchmarks/compact_grad_crossover.py --threads 1 --out benchmarks/results/compact_grad_crossover.md
    python benchmarks/compact_grad_crossover.py --device cuda --dtype bf16 --shapes 1024x1024,4096x1024,1024x4096 \\
        --tokens 8200,10376 --out benchmarks/results/gpu/compact_grad_crossover_cuda_bf16.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from fishertune.tuner.sparse_grad import SelectionPattern, compact_values_grad
from sparse_grad_crossover import SHAPES, TOKENS, _time, crossover, parse_shapes
from _common import device_line, script_command, write_report

FRACTIONS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
ASPECTS = ("square", "rows", "cols")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def measure(go, x, idx, out_f: int, in_f: int, reps: int, sync) -> dict:
    """Median seconds of the dense and the compact values gradient at ``idx``; checks they agree first."""
    n = idx.numel()
    pattern = SelectionPattern(idx, out_f, in_f)
    pattern.block(n)  # built once per selection (and per active prefix) in the layer, so not timed here
    fns = {
        "dense": lambda: (go.t() @ x).reshape(-1).index_select(0, idx),
        "compact": lambda: compact_values_grad(go, x, pattern, n),
    }
    ref, got = fns["dense"]().float(), fns["compact"]().float()
    tol = 1e-3 if go.dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * float(ref.abs().max().clamp_min(1)))
    out = _time(fns, reps, sync)
    out["block"] = pattern.block_size(n) / (out_f * in_f)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--shapes", default=",".join(f"{o}x{i}" for o, i in SHAPES), help="weights, out x in")
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--fractions", default=",".join(map(str, FRACTIONS)), help="block fractions, ascending")
    p.add_argument("--aspects", default=",".join(ASPECTS))
    p.add_argument("--out", default="", help="also write the markdown here and the raw numbers to the .json beside it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    fractions = [float(f) for f in args.fractions.split(",")]
    if fractions != sorted(fractions) or not all(0 < f <= 1 for f in fractions):
        p.error("--fractions must be ascending, in (0, 1]")
    aspects = args.aspects.split(",")
    if any(a not in ASPECTS for a in aspects):
        p.error(f"--aspects takes {ASPECTS}")
    load0 = os.getloadavg()[0]
    gen = torch.Generator().manual_seed(0)
    rows = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        for out_f, in_f in parse_shapes(args.shapes):
            go = torch.randn(tokens, out_f, generator=gen).to(dev, dtype)
            x = torch.randn(tokens, in_f, generator=gen).to(dev, dtype)
            for aspect in aspects:
                times = []
                for f in fractions:
                    idx = block_indices(out_f, in_f, f, aspect, gen).to(dev)  # on go's device, as the layer's buffer
                    times.append(measure(go, x, idx, out_f, in_f, args.reps, sync))
                blocks = [t["block"] for t in times]
                ratios = [t["compact"] / t["dense"] for t in times]
                c = crossover(blocks, ratios)
                rows.append(dict(tokens=tokens, out=out_f, **{"in": in_f}, aspect=aspect, blocks=blocks,
                                 times=times, ratios=ratios, crossover=c))
                print(f"tokens {tokens} {out_f}x{in_f} {aspect}: "
                      + ", ".join(f"{b:.2f}: {r:.2f}" for b, r in zip(blocks, ratios)) + f" -> crossover {c:.3g}",
                      file=sys.stderr, flush=True)
    load1 = os.getloadavg()[0]
    found = [r["crossover"] for r in rows if r["crossover"] < math.inf]
    threshold = min(found) if found else None
    dev_name = device_line(dev.type, args.threads)
    lines = [
        f"{dev_name}, {args.dtype}, torch {torch.__version__}; median of {args.reps} interleaved repetitions; "
        f"1-min load average {load0:.1f} at start, {load1:.1f} at end. Cells: compact ms / dense ms (compact / dense); "
        "columns: the block fraction asked for (the measured one is in the .json).",
        "",
        "| tokens | weight (out x in) | block | " + " | ".join(f"{f:g}" for f in fractions) + " | crossover |",
        "|---:|---|---|" + "---:|" * len(fractions) + "---:|",
    ]
    for r in rows:
        cells = " | ".join(f"{t['compact'] * 1e3:.3g} / {t['dense'] * 1e3:.3g} ({q:.2f}x)"
                           for t, q in zip(r["times"], r["ratios"]))
        lines.append(f"| {r['tokens']} | {r['out']}x{r['in']} | {r['aspect']} | {cells} | {r['crossover']:.3g} |")
    lines.append("")
    if threshold is None:
        lines.append("The compact GEMM won at every measured fraction: no crossover, no constant.")
        paste = []
    else:
        lines.append(f"Smallest crossover over {len(rows)} rows: {threshold:.3g} (the rule's constant: compact "
                     "only where it won on every shape, token count and aspect measured).")
        prefix = "COMPACT_CPU_MAX" if dev.type == "cpu" else f"COMPACT_{dev.type.upper()}_MAX"
        paste = [f"{prefix} = {math.floor(threshold * 100) / 100:g}"]
        lines += ["", "Constant for fishertune/tuner/sparse_grad.py" + ("" if dev.type == "cpu" else " (record only)")
                  + ":", "", "```python", *paste, "```"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        command = script_command("compact_grad_crossover.py", argv)
        write_report(args.out, f"# Compact vs dense values gradient\n\nGenerated by `{command}`.\n\n", text,
                     dict(command=command, fractions=fractions, rows=rows, threshold=threshold, paste=paste))
    return dict(rows=rows, threshold=threshold, paste=paste)


if __name__ == "__main__":
    main()
