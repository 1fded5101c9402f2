"""Helpers the benchmark scripts share. `benchmarks/` is not a package: each script puts this folder on `sys.path`
(`sys.path.insert(0, HERE)`) and imports `_common`."""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The paper's recipe (DINOv2-L/14 + Mask2Former on GTAV): the default `--config` of paper_scale.py and data_path.py.
CONFIG = HERE.parent / "recipes" / "configs" / "gtav_dinov2_large_mask2former.yaml"


def parse_size(text: str) -> list[int]:
    """An `argparse` type: "H" or "HxW" (positive integers) -> [H, W]."""
    parts = [int(v) for v in text.lower().split("x")]
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"image size must read H or HxW, got {text!r}")
    return parts * (3 - len(parts))


def status_kib(field: str) -> int:
    """A `/proc/self/status` field in KiB (Linux): "VmRSS" (resident now) or "VmHWM" (its peak since the last
    `reset_hwm`)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (`/proc/self/clear_refs`); False where that file is not writable (some
    containers: callers fall back to `ru_maxrss`, the process's maximum)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def device_line(device: str, threads: int) -> str:
    """What ran the measurement, for a report's header: the CUDA device's name, or the CPU, its cores and the
    torch threads used."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0)
    import os
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), {threads} threads"


def script_command(script: str, argv) -> str:
    """The command line a report says generated it: ``python benchmarks/<script> <args>``."""
    import sys

    return " ".join([f"python benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])


def write_report(out, header: str, text: str, raw: dict) -> Path:
    """Write the markdown report (``header`` + ``text``) to ``out`` and ``raw`` to the ``.json`` beside it."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + text)
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    return out


def dinov2_problem(hidden: int, layers: int, image: int, batch: int, num_batches: int, seed: int = 0):
    """A random-init DINOv2 classifier (heads of 64, FFN 4x, 16 px patches, 19 classes) in eval mode, its Eq. 3
    weights (q, k, v, fc1, fc2) by name, and `num_batches` random batches of `batch` images with labels:
    `(model, weights, batches)`, the same for the same arguments."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    cfg = T.Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden,
        image_size=image,
        patch_size=16,
        num_labels=19,
    )
    model = T.Dinov2ForImageClassification(cfg).eval()
    targets = ("q_proj", "k_proj", "v_proj", "fc1", "fc2")
    weights = {n: m.weight for n, m in model.named_modules() if n.endswith(targets)}
    g = torch.Generator().manual_seed(seed + 1)
    batches = [
        {
            "pixel_values": torch.randn(batch, 3, image, image, generator=g),
            "labels": torch.randint(0, 19, (batch,), generator=g),
        }
        for _ in range(num_batches)
    ]
    return model, weights, batches
