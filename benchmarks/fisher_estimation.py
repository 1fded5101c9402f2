"""Cost of DR-FIM estimation (phase 2) relative to full fine-tuning, on a ViT-S/14-sized DINOv2.

    python benchmarks/fisher_estimation.py --steps 3

Model: transformers Dinov2Config(hidden 384, 12 layers, 6 heads, patch 14), random init, a linear
per-patch head for 19 classes upsampled to the 224 px labels (semantic_logits), batch 8, CPU.
FisherTune wraps the Eq. 3 targets (q, k, v, fc1, fc2 of every block) for the estimation runs.

Time: seconds per batch (estimation) and per step (full fine-tuning: forward, backward, AdamW),
after one untimed warm-up batch/step. Memory: every configuration runs in its own subprocess and
reports its peak resident set size (resource.getrusage ru_maxrss, no tracemalloc) and the peak
above the RSS measured after the model and data were built; ratios are to full fine-tuning's.
The last column projects phase 2 against the tuning phase: T2 estimation batches (default 100)
over T3 = 36,000 tuning steps (Rein's 40k iterations minus a 10% warm-up, METHOD.md), with a
tuning step costed as a full fine-tuning step (a FisherTune step runs the same backward pass).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

T2_DEFAULT = 100
T3_DEFAULT = 36_000
MODES = [
    ("full FT step", None),
    ("fim / diagonal", dict(criterion="fim", estimator="diagonal")),
    ("dr_fim / diagonal", dict(criterion="dr_fim", estimator="diagonal")),
    ("fim / variational", dict(criterion="fim", estimator="variational")),
    ("dr_fim / variational", dict(criterion="dr_fim", estimator="variational")),
    (
        "dr_fim / variational (reparam)",
        dict(criterion="dr_fim", estimator="variational", variational_gradient="reparam"),
    ),
]


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(mode_index: int, steps: int, batch: int, size: int) -> dict:
    import torch
    import transformers as T
    from peft import get_peft_model
    from torch import nn

    import fishertune
    from fishertune.fisher import EstimationConfig, estimate_scores

    torch.manual_seed(0)

    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = T.Dinov2Config(
                hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=size, patch_size=14
            )
            self.backbone = T.Dinov2Model(cfg)
            self.head = nn.Linear(384, 19)

        def forward(self, pixel_values):
            h = self.backbone(pixel_values=pixel_values).last_hidden_state[:, 1:]
            g = int(h.shape[1] ** 0.5)
            return self.head(h).transpose(1, 2).reshape(h.shape[0], 19, g, g)

        def semantic_logits(self, outputs, size):
            return nn.functional.interpolate(outputs, size=size, mode="bilinear", align_corners=False)

    gen = torch.Generator().manual_seed(0)
    data = [
        {
            "pixel_values": torch.randn(batch, 3, size, size, generator=gen),
            "labels": torch.randint(0, 19, (batch, size, size), generator=gen),
        }
        for _ in range(steps + 1)
    ]
    model = Seg()
    name, kwargs = MODES[mode_index]
    if kwargs is None:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()

        def step(b):
            loss = nn.functional.cross_entropy(
                model.semantic_logits(model(b["pixel_values"]), (size, size)), b["labels"], ignore_index=255
            )
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step(data[0])
        base = _rss_kb()
        t = time.perf_counter()
        for b in data[1:]:
            step(b)
    else:
        model = get_peft_model(model, fishertune.FisherTuneConfig(modules_to_save=["head"]))
        weights = model.fishertune_target_weights()
        estimate_scores(model, data[:1], weights, EstimationConfig(num_batches=1, **kwargs))  # warm-up
        base = _rss_kb()
        t = time.perf_counter()
        estimate_scores(model, data[1:], weights, EstimationConfig(num_batches=steps, **kwargs))
    per = (time.perf_counter() - t) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"name": name, "seconds": per, "peak_kb": peak, "above_kb": peak - base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3, help="timed batches/steps per configuration")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument(
        "--t2", type=int, default=T2_DEFAULT, help="estimation batches of phase 2 (EstimationConfig.num_batches)"
    )
    p.add_argument("--t3", type=int, default=T3_DEFAULT, help="tuning steps of phase 3")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        print("RESULT " + json.dumps(child(a.child, a.steps, a.batch, a.size)))
        return
    rows = []
    for i in range(len(MODES)):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(i),
                "--steps",
                str(a.steps),
                "--batch",
                str(a.batch),
                "--size",
                str(a.size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.split("RESULT ", 1)[1]))
    ft = rows[0]
    print(
        f"DINOv2 ViT-S/14 (random init), {a.size}px, batch {a.batch}, CPU threads {os.cpu_count()}, "
        f"{a.steps} timed steps; T2={a.t2}, T3={a.t3}"
    )
    print(
        f"| {'configuration':32s} | s/batch | time / FT step | peak RSS / FT "
        "| peak above base / FT | T2 cost / T3 time |"
    )
    print(f"|{'-' * 34}|---------|----------------|---------------|----------------------|-------------------|")
    for r in rows:
        ratio = r["seconds"] / ft["seconds"]
        phase = "" if r is ft else f"{100 * a.t2 * ratio / a.t3:.2f}%"
        print(
            f"| {r['name']:32s} | {r['seconds']:7.2f} | {ratio:14.2f} | {r['peak_kb'] / ft['peak_kb']:13.2f} | "
            f"{r['above_kb'] / max(ft['above_kb'], 1):20.2f} | {phase:>17s} |"
        )


if __name__ == "__main__":
    main()
