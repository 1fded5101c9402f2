"""Where the sampled values gradient of the sparse-delta layer beats the dense GEMM + gather.

For each weight shape, token count and density this times the two ways `SparseDeltaLinear.backward`
can compute dL/d(values) (see `fishertune.tuner.sparse_grad`):

* dense:   ``(grad_out^T @ x).reshape(-1).index_select(0, idx)``
* sampled: ``torch.sparse.sampled_addmm`` on the layer's cached CSR pattern (built once, not timed),
           including the transposing copies the kernel makes of both operands.

The two are interleaved and repeated (``--reps``), and the median of each is reported, so background
load hits both alike. The crossover density is where ``sampled / dense`` crosses 1, interpolated in
log-density between the measured densities. A least-squares fit of

    crossover = A - B * (1/out + 1/in)

over the measured shapes and token counts (the rule does not look at the token count) gives the
constants of `use_sampled_grad`; the script ends with the two lines to paste into
`fishertune/tuner/sparse_grad.py` (``SAMPLED_CPU_A = ...``, ``SAMPLED_CPU_B = ...``). A shape whose crossover
lies outside the measured densities is left out of the fit and named. On CUDA the same lines are
printed as ``SAMPLED_CUDA_*`` for the record: the layer has no CUDA rule yet (CUDA stays dense unless
forced). Before timing, each pair is checked to agree (``assert_close``).

Usage::

    # CPU, fp32, ViT-S shapes, 224 + 448 px:
    python benchmarks/sparse_grad_crossover.py --out benchmarks/results/sparse_grad_crossover.md
    # CUDA, ViT-L shapes, batch 8 at 448 px (8200 tokens) and 512 px (10376 tokens):
    python benchmarks/sparse_grad_crossover.py --device cuda --dtype fp32 --shapes 1024x1024,4096x1024,1024x4096 \
        --tokens 8200,10376 --out benchmarks/results/sparse_grad_crossover_cuda.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from fishertune.tuner.sparse_grad import SelectionPattern, sampled_supported, sampled_values_grad
from _common import device_line, script_command, write_report

# ViT-S/14 targets: q/k/v (384x384), fc1 (1536x384), fc2 (384x1536); tokens: batch 8 at 224 px (8 * 257)
# and at 448 px (8 * 1025).
SHAPES = [(384, 384), (1536, 384), (384, 1536)]
TOKENS = [2056, 8200]
# Up to 50%: on some CPUs sampled/dense is 0.25-0.4 at 5% on these shapes, so the
# crossover lies well above 5%, and a grid that stopped at 10% would leave most shapes out of the fit.
DENSITIES = [0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5]


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


def crossover(densities, ratios):
    """The density where sampled/dense crosses 1 (log-interpolated); 0 if never below, inf if always."""
    if ratios[0] >= 1:
        return 0.0
    for (d0, r0), (d1, r1) in zip(zip(densities, ratios), zip(densities[1:], ratios[1:])):
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


def measure(go, x, idx, out_f: int, in_f: int, reps: int, sync) -> dict:
    """Median seconds of the dense and the sampled values gradient at ``idx``; checks they agree first."""
    n = idx.numel()
    pattern = SelectionPattern(idx, out_f, in_f)
    pattern.prefix(n)  # built once per selection in the layer, so not timed here
    fns = {
        "dense": lambda: (go.t() @ x).reshape(-1).index_select(0, idx),
        "sampled": lambda: sampled_values_grad(go, x, pattern, n),
    }
    ref, got = fns["dense"](), fns["sampled"]()
    tol = 1e-3 if go.dtype == torch.float32 else 1e-8
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol * float(ref.abs().max().clamp_min(1)))
    return _time(fns, reps, sync)


def paste_lines(device_type: str, a: float, b: float) -> list[str]:
    """The constants to paste into `fishertune/tuner/sparse_grad.py` (CPU); on other devices, for the record only."""
    prefix = "SAMPLED_CPU" if device_type == "cpu" else f"SAMPLED_{device_type.upper()}"
    return [f"{prefix}_A = {a:.4g}", f"{prefix}_B = {b:.4g}"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype", choices=["fp32", "fp64"], default="fp32", help="sampled_addmm has no bf16/fp16 kernel on CPU"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument(
        "--shapes", default=",".join(f"{o}x{i}" for o, i in SHAPES), help="weights, out x in, comma-separated"
    )
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--densities", default=",".join(map(str, DENSITIES)), help="ascending")
    p.add_argument("--out", default="", help="also write the markdown here and the raw numbers to the .json beside it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp64": torch.float64}[args.dtype]
    if not sampled_supported(dev.type, dtype):
        p.error(f"torch.sparse.sampled_addmm has no {args.dtype} kernel on {dev.type}")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    densities = [float(d) for d in args.densities.split(",")]
    if densities != sorted(densities):
        p.error("--densities must be ascending")
    load0 = os.getloadavg()[0]
    gen = torch.Generator().manual_seed(0)
    rows, points = [], []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        for out_f, in_f in parse_shapes(args.shapes):
            go = torch.randn(tokens, out_f, generator=gen).to(dev, dtype)
            x = torch.randn(tokens, in_f, generator=gen).to(dev, dtype)
            ratios, times = [], []
            for d in densities:
                n = max(1, round(d * out_f * in_f))
                # int32, in no particular order: like the layer's `fishertune_indices` (global-rank order)
                idx = torch.randperm(out_f * in_f, generator=gen)[:n].to(dev, torch.int32)
                t = measure(go, x, idx, out_f, in_f, args.reps, sync)
                ratios.append(t["sampled"] / t["dense"])
                times.append(t)
            c = crossover(densities, ratios)
            points.append((1 / out_f + 1 / in_f, c))
            rows.append(dict(tokens=tokens, out=out_f, **{"in": in_f}, times=times, ratios=ratios, crossover=c))
            print(
                f"tokens {tokens} {out_f}x{in_f}: "
                + ", ".join(f"{d:g}: {r:.2f}" for d, r in zip(densities, ratios))
                + f" -> crossover {c:.4g}",
                file=sys.stderr,
                flush=True,
            )
    a, b = fit(points)
    load1 = os.getloadavg()[0]
    dev_name = device_line(dev.type, args.threads)
    lines = [
        f"{dev_name}, {args.dtype}, torch {torch.__version__}; median of {args.reps} interleaved repetitions; "
        f"1-min load average {load0:.1f} at start, {load1:.1f} at end. Cells: sampled ms / dense ms (sampled / dense).",
        "",
        "| tokens | weight (out x in) | " + " | ".join(f"{d:g}" for d in densities) + " | crossover density |",
        "|---:|---|" + "---:|" * len(densities) + "---:|",
    ]
    for r in rows:
        cells = " | ".join(
            f"{t['sampled'] * 1e3:.3g} / {t['dense'] * 1e3:.3g} ({q:.2f}x)" for t, q in zip(r["times"], r["ratios"])
        )
        lines.append(f"| {r['tokens']} | {r['out']}x{r['in']} | {cells} | {r['crossover']:.4g} |")
    censored = [f"{r['out']}x{r['in']} at {r['tokens']} tokens" for r in rows if not 0 < r["crossover"] < math.inf]
    lines.append("")
    if censored:
        lines.append(
            f"Left out of the fit (crossover outside the measured densities {densities[0]:g}-{densities[-1]:g}; "
            f"widen --densities): {', '.join(censored)}."
        )
    if a is None:
        lines.append("No crossover inside the measured densities: no constants fitted.")
        paste = []
    else:
        lines.append(f"fit over {len(rows) - len(censored)} crossovers: crossover = {a:.4g} - {b:.4g} * (1/out + 1/in)")
        paste = paste_lines(dev.type, a, b)
        where = (
            "fishertune/tuner/sparse_grad.py"
            if dev.type == "cpu"
            else "the record (sparse_grad.py has no rule for this device yet)"
        )
        lines += ["", f"Constants for {where}:", "", "```python", *paste, "```"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        command = script_command("sparse_grad_crossover.py", argv)
        write_report(args.out, f"# Sampled vs dense values gradient\n\nGenerated by `{command}`.\n\n", text,
                     dict(command=command, densities=densities, rows=rows, fit=dict(a=a, b=b), paste=paste))
    return dict(rows=rows, a=a, b=b, paste=paste)


if __name__ == "__main__":
    main()
