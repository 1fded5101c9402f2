"""Phase 2's memory model (`fishertune.fisher.memory`) against measured peaks, one subprocess per size.

Each size runs `estimate_scores` (DR-FIM, variational, T2 batches) on a randomly initialised DINOv2 classifier of
that width and depth with q/k/v/fc1/fc2 of every block targeted, and compares the estimate logged before the passes
with the peak RSS above the RSS before phase 2 (VmHWM after `/proc/self/clear_refs`). CPU, Linux.

    python benchmarks/phase2_memory.py            # three sizes, a table (a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

from _common import HERE, dinov2_problem, reset_hwm, status_kib

#: name -> (hidden, layers, image px, batch, micro_batch_size)
SIZES = {
    "ViT-Ti b4": (192, 6, 224, 4, None),
    "ViT-Ti b4 mb1": (192, 6, 224, 4, 1),
    "ViT-S b4 mb2": (384, 6, 224, 4, 2),
}
_MIB = 2.0**20


def worker(hidden: int, layers: int, image: int, batch: int, micro) -> dict:
    import torch

    from fishertune.fisher import EstimationConfig, estimate_scores, memory
    from fishertune.fisher.likelihood import default_log_prob_fn

    torch.set_num_threads(2)
    model, weights, batches = dinov2_problem(hidden, layers, image, batch, num_batches=2)
    config = EstimationConfig(num_batches=2, micro_batch_size=micro, dsu_p=1.0)
    for p in model.parameters():  # the estimation's flags, so that the estimate saves what the passes save
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    est = memory.estimate_phase2_bytes(model, weights, config, batches[0], default_log_prob_fn, True)
    gc.collect()
    base = status_kib("VmRSS")
    if not reset_hwm():
        raise SystemExit("/proc/self/clear_refs is not writable: no peak to compare with")
    estimate_scores(model, batches, weights, config, disable_tqdm=True)
    peak = status_kib("VmHWM") - base
    return {
        "entries": est.entries,
        "bytes_per_entry": est.bytes_per_entry,
        "activations_mib": est.samples_per_pass * est.activations_per_sample / _MIB,
        "estimate_mib": est.total / _MIB,
        "measured_mib": peak / 1024.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*json.loads(args.worker))))
        return
    print("| size | targeted entries | B/entry | activations (MiB) | estimate (MiB) | measured peak (MiB) | est/meas |")
    print("|---|---|---|---|---|---|---|")
    for name, size in SIZES.items():
        out = (
            subprocess.run(
                [sys.executable, str(HERE / "phase2_memory.py"), "--worker", json.dumps(size)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        r = json.loads(out)
        print(
            f"| {name} | {r['entries']:,} | {r['bytes_per_entry']} | {r['activations_mib']:.0f} | "
            f"{r['estimate_mib']:.0f} | {r['measured_mib']:.0f} | {r['estimate_mib'] / r['measured_mib']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
