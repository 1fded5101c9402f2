"""Paired-by-seed differences between the methods of one benchmarks/dg_camvid.py recipe.

With 3 seeds the spread between seeds (0.3-0.5 mIoU) is as large as the gaps between methods, but
runs of one seed share their data order, crops and head initialization, so the per-seed
difference of two methods is the sharper measure. For every pair this prints the difference of
the target-mean mIoU per shared seed, its mean, and the one-sample t statistic of the differences
(df = seeds - 1; |t| > 4.3 is p < 0.05 two-sided at df 2), and writes
results/dg_camvid_paired[_<tag>].md.

    python benchmarks/dg_camvid_paired.py [--tag full_v2] [--pairs random:dr_fim_var ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The comparisons the README reads: FisherTune against its baselines, then the paper's Table 4 steps.
DEFAULT_PAIRS = ["random:dr_fim_var", "dr_fim_var:fim_var", "random:fim_var", "dr_fim_var:lora", "random:lora",
                 "lora:frozen", "dr_fim_var:frozen", "random:frozen", "dr_fim_var:full", "delta_fim_var:dr_fim_var",
                 "dr_fim_diag:dr_fim_var", "dr_fim_diag:fim_diag", "delta_fim_diag:fim_diag",
                 "dr_fim_diag:delta_fim_diag", "fim_diag:random", "dr_fim_diag:random", "fim_diag:fim_var",
                 "dr_fim_diag:full", "random:full", "full:frozen"]  # fmt: skip


def target_means(runs_dir: Path) -> dict[str, dict[int, float]]:
    """{method: {seed: mean mIoU over the target sets}} of every finished run in `runs_dir`."""
    out: dict[str, dict[int, float]] = {}
    for path in sorted(runs_dir.glob("*__seed*.json")):
        run = json.loads(path.read_text())
        targets = [t for t in run["metrics"] if t.startswith("target_")]
        if not targets:
            raise ValueError(f"{path}: no target_* metrics; is this a dg_camvid run file?")
        out.setdefault(run["method"], {})[run["seed"]] = sum(run["metrics"][t]["mIoU"] for t in targets) / len(targets)
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """Per-seed a - b over the seeds both have, their mean, and the paired t (None below 2 seeds or at zero spread)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = sum(diffs) / len(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    t = mean / (sd / math.sqrt(len(diffs))) if sd > 0 else None
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "t": t}


def markdown(tag: str, means: dict, pairs: list[str]) -> str:
    command = f"python benchmarks/dg_camvid_paired.py --tag {tag}"
    if list(pairs) != DEFAULT_PAIRS:  # the command that remakes this file
        command += " --pairs " + " ".join(pairs)
    lines = [f"Paired target-mean mIoU differences, recipe `{tag}` (`{command}`).",
             "", "| a - b | seeds | per seed | mean | paired t |", "|---|---|---|---|---|"]  # fmt: skip
    for pair in pairs:
        a, b = pair.split(":")
        if a not in means or b not in means:
            continue
        p = paired(means[a], means[b])
        if p is None:
            continue
        t = "n/a" if p["t"] is None else f"{p['t']:.1f}"
        per = ", ".join(f"{d:+.2f}" for d in p["diffs"])
        lines.append(f"| {a} - {b} | {' '.join(map(str, p['seeds']))} | {per} | {p['mean']:+.2f} | {t} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tag", default="full_v2", help="the recipe folder under results/runs/")
    p.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS, metavar="A:B", help="method pairs, a - b")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    args = p.parse_args(argv)
    for pair in args.pairs:
        if pair.count(":") != 1:
            p.error(f"--pairs {pair!r}: write each pair as METHOD_A:METHOD_B")
    runs_dir = Path(args.out_dir) / "runs" / args.tag
    if not runs_dir.is_dir():
        p.error(f"{runs_dir} does not exist: pass the tag of a folder under {runs_dir.parent}")
    text = markdown(args.tag, target_means(runs_dir), args.pairs)
    stem = "dg_camvid_paired" + ("" if args.tag == "full" else f"_{args.tag}")
    (Path(args.out_dir) / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
