"""What the sparse criteria of benchmarks/dg_camvid.py selected: shares and overlaps of the 5% masks.

Reads the scores each sparse run saved (runs/<tag>/<method>__seed<k>_work/fishertune_scores.safetensors),
takes the global top `delta_max` of each (the final selection; the active sets of Eq. 16 are its
prefixes), and writes results/dg_camvid_selection[_<tag>].md with, per run, the share of the
selection per weight kind (q, k, v, fc1, fc2) and per block, and the Jaccard overlap of the masks
of every pair of criteria of one seed. If F and DRF pick nearly the same entries, they cannot
differ much in mIoU, whatever the estimator does.

    python benchmarks/dg_camvid_selection.py [--tag full_v2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from pathlib import Path

import torch

from fishertune.outputs import SCORES_NAME

HERE = Path(__file__).resolve().parent


def top_mask(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    k = max(1, int(round(fraction * flat.numel())))
    thresh = torch.topk(flat, k).values.min()
    return {n: (s.float() >= thresh) for n, s in scores.items()}


def kind_and_block(name: str) -> tuple[str, str]:
    kind = name.rsplit(".", 1)[-1]
    m = re.search(r"\.(?:layer|layers|blocks)\.(\d+)\.", name)
    return kind, (m.group(1) if m else "?")


def main(argv=None) -> None:
    from fishertune.fisher import load_scores

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tag", default="full_v2", help="the recipe folder under results/runs/")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args(argv)
    runs = Path(args.out_dir) / "runs" / args.tag
    recipe = json.loads((runs / "recipe.json").read_text())
    frac = recipe["delta_max"]
    masks, lines = {}, [f"# Selections of the sparse runs in runs/{args.tag} (top {frac:.0%} of targeted entries)", ""]
    rows = []
    for f in sorted(runs.glob(f"*__seed*_work/{SCORES_NAME}")):
        method, seed = f.parent.name[: -len("_work")].split("__seed")
        scores = load_scores(str(f))
        mask = top_mask(scores, frac)
        masks[(method, int(seed))] = mask
        total = sum(int(m.sum()) for m in mask.values())
        by_kind, by_block = {}, {}
        for name, m in mask.items():
            kind, block = kind_and_block(name)
            by_kind[kind] = by_kind.get(kind, 0) + int(m.sum())
            by_block[block] = by_block.get(block, 0) + int(m.sum())
        rows.append((method, seed, {k: v / total for k, v in sorted(by_kind.items())},
                     {k: v / total for k, v in sorted(
                         by_block.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 99)}))  # fmt: skip
    if not rows:
        print(f"no saved scores in {runs}")
        return
    kinds = sorted({k for r in rows for k in r[2]})
    blocks = list(rows[0][3])
    lines += ["Share of the selection per weight kind:", "", "| run | " + " | ".join(kinds) + " |",
              "|---|" + "---|" * len(kinds)]  # fmt: skip
    for method, seed, bk, _ in rows:
        lines.append(f"| {method} s{seed} | " + " | ".join(f"{100 * bk.get(k, 0):.1f}%" for k in kinds) + " |")
    lines += ["", "Share of the selection per block (0-based):", "", "| run | " + " | ".join(blocks) + " |",
              "|---|" + "---|" * len(blocks)]  # fmt: skip
    for method, seed, _, bb in rows:
        lines.append(f"| {method} s{seed} | " + " | ".join(f"{100 * bb.get(b, 0):.0f}" for b in blocks) + " |")
    lines += ["", "Jaccard overlap of the final masks (same seed):", ""]
    for (a, sa), (b, sb) in itertools.combinations(sorted(masks), 2):
        if sa != sb:
            continue
        inter = sum(int((masks[(a, sa)][n] & masks[(b, sb)][n]).sum()) for n in masks[(a, sa)])
        union = sum(int((masks[(a, sa)][n] | masks[(b, sb)][n]).sum()) for n in masks[(a, sa)])
        lines.append(f"- {a} vs {b} (seed {sa}): {inter / max(union, 1):.3f}")
    stem = "dg_camvid_selection" + ("" if args.tag == "full" else f"_{args.tag}")
    out = Path(args.out_dir) / f"{stem}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
