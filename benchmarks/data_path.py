"""The data path at the paper's size: GTAV-shaped training images through the recipe's loader, one
Cityscapes-shaped image through its sliding-window evaluation.

Training side: a generated tree in GTAV's official layout (``images/NNNNN.png`` RGB and ``labels/NNNNN.png``
palette PNGs whose indices are Cityscapes label ids, 1914x1052 like GTAV's frames) is read by
`fishertune.data.load_dataset("gtav", ...)` and wrapped by the recipe's own `experiment.build.build_train_dataset`
with the config's augmentation (Rein's: short edge 256-1024 in 16 steps, 512x512 crop with the 0.75 category
ratio, flip, photometric distortion, normalisation; keyed draws). Reported:

* seconds per sample in one process (the median over the samples after the first): what one DataLoader worker
  delivers, as images per second;
* a `torch.utils.data.DataLoader` with the config's batch and 1..``--max-workers`` workers: images per second;
* the workers a GPU needs to keep up: ceil(batch x steps/s / images per second per worker), for the step rates
  of ``--step-rates`` (a GPU's measured rate, from `benchmarks/gpu_check.sh`, can be passed there).

Evaluation side: one 1024x2048 image and its label, as a Cityscapes file is, through the recipe's evaluation
transform for `cityscapes` (Rein's protocol resizes it to 1024x512, keeping the ratio) and
`evaluation.slide_inference` with the config's window and stride on the config's model (Mask2Former on
Rein's pyramid, random-init DINOv2-L/14 of `paper_scale_worker.py`): windows per image and seconds per window
(each window's forward timed, the median over the windows after the first).

Images are generated, not downloaded: label maps are blocks of Cityscapes ids (the GTAV ids the loader maps,
plus unlabeled 0), images a colour per class with shading and noise (the mean PNG size is reported: decoding
cost depends on it; GTAV's own PNGs are compressed game frames).

Usage::

    python benchmarks/data_path.py                        # 24 images, DINOv2-L/14 evaluation, CPU
    python benchmarks/data_path.py --images 4 --image-size 105x191 --eval-size 128x256 --model tiny --out /tmp/dp.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import paper_scale_worker as W  # noqa: E402

from _common import CONFIG, parse_size  # noqa: E402

#: Cityscapes label ids drawn into the labels: the 19 evaluated classes (GTAV_EVAL_IDS) and 0 (unlabeled -> 255).
LABEL_IDS = (0, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def scene(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [h, w, 3], Cityscapes ids uint8 [h, w]): blocks of classes, a colour per class, shading, noise."""
    h, w = size
    rng = np.random.default_rng(seed)
    block = max(1, min(h, w) // 12)
    grid = rng.choice(LABEL_IDS, size=(-(-h // block), -(-w // block)))
    ids = grid.repeat(block, 0).repeat(block, 1)[:h, :w].astype(np.uint8)
    palette = np.random.default_rng(1234).integers(0, 256, (256, 3))
    shade = np.linspace(0.6, 1.2, h)[:, None, None]
    img = palette[ids] * shade + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), ids


def make_gtav_tree(root: Path, n: int, size: tuple[int, int]) -> float:
    """Write `n` image/label pairs in GTAV's layout under `root`; returns the mean image PNG size in bytes."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    sizes = []
    for i in range(n):
        img, ids = scene(size, seed=i)
        path = root / "images" / f"{i + 1:05d}.png"
        Image.fromarray(img).save(path)
        label = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())  # GTAV: ids as palette indices
        label.putpalette([v for k in range(256) for v in ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256)])
        label.save(root / "labels" / f"{i + 1:05d}.png")
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes))


def loader_throughput(train, batch: int, workers: int, n: int) -> float:
    """Images per second of a DataLoader over the first `n` samples (after its first batch, which starts workers)."""
    import torch

    from fishertune.data import collate_fn

    subset = torch.utils.data.Subset(train, range(n))
    dl = torch.utils.data.DataLoader(subset, batch_size=batch, num_workers=workers, collate_fn=collate_fn)
    it = iter(dl)
    next(it)
    t0, seen = time.perf_counter(), 0
    for b in it:
        seen += len(b["pixel_values"])
    return seen / (time.perf_counter() - t0) if seen else float("nan")


def measure_training(args, exp, root: Path) -> dict:
    from fishertune.experiment.build import build_train_dataset

    t0 = time.perf_counter()
    train = build_train_dataset(exp, seed=0)
    index_s = time.perf_counter() - t0
    per_sample = []
    for i in range(len(train)):
        t = time.perf_counter()
        sample = train[i]
        per_sample.append(time.perf_counter() - t)
    crop = list(sample["pixel_values"].shape[-2:])
    s = statistics.median(per_sample[1:]) if len(per_sample) > 1 else per_sample[0]
    loaders = {w: loader_throughput(train, args.batch, w, len(train)) for w in range(1, args.max_workers + 1)}
    return {"samples": len(train), "index_s": index_s, "sample_s": per_sample, "per_worker_s": s,
            "per_worker_ips": 1.0 / s, "crop": crop, "loader_ips": loaders}  # fmt: skip


def measure_eval(args, exp) -> dict:
    import torch
    from PIL import Image

    from fishertune.evaluation.inference import slide_inference
    from fishertune.experiment.build import eval_transform

    img, ids = scene(args.eval_size, seed=10_000)
    example = eval_transform(exp, "cityscapes").sample(Image.fromarray(img), Image.fromarray(ids))
    pixel_values = example[0][None]
    model = W.build_model(exp, args.model, 0).eval()
    times, start = [], []
    # Each window's forward, timed by the module's own hooks (semantic_logits, an upsampling, is outside it).
    pre = model.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))
    post = model.register_forward_hook(lambda *_: times.append(time.perf_counter() - start[-1]))
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = slide_inference(model, pixel_values, model.config.num_labels, exp.eval_crop_size, exp.eval_stride)
    total = time.perf_counter() - t0
    pre.remove()
    post.remove()
    return {"image": list(args.eval_size), "resized": list(pixel_values.shape[-2:]), "window": exp.eval_crop_size,
            "stride": exp.eval_stride, "windows": len(times), "window_s": times, "image_s": total,
            "per_window_s": statistics.median(times[1:]) if len(times) > 1 else times[0],
            "finite": bool(torch.isfinite(logits).all())}  # fmt: skip


def workers_needed(batch: int, steps_per_s: float, per_worker_ips: float) -> int:
    return math.ceil(batch * steps_per_s / per_worker_ips)


def markdown(raw: dict) -> str:
    t, e, m = raw["train"], raw["eval"], raw["machine"]
    lines = [
        f"# Data path at the paper's size ({m['cpu']}, {m['threads']} torch threads, torch {m['torch']})",
        "",
        f"Training: {t['samples']} generated GTAV-shaped pairs ({raw['image_size'][1]}x{raw['image_size'][0]} "
        f"PNG, mean {raw['png_bytes'] / 2**20:.2f} MiB) read by the `gtav` loader with the config's augmentation "
        f"(crops {t['crop'][0]}x{t['crop'][1]}); indexing the tree took {t['index_s']:.2f} s.",
        "",
        "| reader | images/s |",
        "|---|---|",
        f"| one process (per worker: median {t['per_worker_s'] * 1000:.0f} ms per sample) "
        f"| {t['per_worker_ips']:.2f} |",
    ]
    lines += [
        f"| DataLoader, {w} worker(s), batch {raw['batch']} | {ips:.2f} |"
        for w, ips in t["loader_ips"].items()
        if ips == ips
    ]  # NaN: a single batch, nothing timed after the first
    lines += [
        "",
        f"Workers a GPU needs at batch {raw['batch']} (ceil(batch x steps/s / {t['per_worker_ips']:.2f})):",
        "",
        "| GPU steps/s | images/s | workers |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r:g} | {raw['batch'] * r:g} | {workers_needed(raw['batch'], r, t['per_worker_ips'])} |"
        for r in raw["step_rates"]
    ]
    lines += [
        "",
        f"Evaluation: one {e['image'][0]}x{e['image'][1]} Cityscapes-shaped image, resized by the cityscapes "
        f"evaluation transform to {e['resized'][0]}x{e['resized'][1]}, slide windows {e['window']} stride "
        f"{e['stride']}, {raw['model']} + the config's head:",
        "",
        "| windows per image | s per window | s per image |",
        "|---|---|---|",
        f"| {e['windows']} | {e['per_window_s']:.3f} | {e['image_s']:.2f} |",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--images", type=int, default=24, help="generated training pairs")
    p.add_argument("--image-size", type=parse_size, default=(1052, 1914), help="HxW of the GTAV-shaped images")
    p.add_argument("--eval-size", type=parse_size, default=(1024, 2048), help="HxW of the Cityscapes-shaped image")
    p.add_argument("--model", choices=sorted(W.MODELS), default="vit-l14")
    p.add_argument("--max-workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--step-rates", type=float, nargs="+", default=[1, 2, 4, 8], help="GPU optimizer steps per second")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(HERE / "results" / "data_path.md"))
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the config names a Hub backbone; its processor is not needed here
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "gtav"
        png_bytes = make_gtav_tree(root, args.images, args.image_size)
        exp, targs = W.parse_config(args.config, ["--data_root", str(root), "--output_dir", str(Path(tmp) / "out"),
                                                  "--use_cpu", "True"])  # fmt: skip
        args.batch = targs.per_device_train_batch_size
        train = measure_training(args, exp, root)
    raw = {"config": str(args.config), "image_size": list(args.image_size), "png_bytes": png_bytes,
           "batch": args.batch, "step_rates": args.step_rates, "model": args.model, "train": train,
           "eval": measure_eval(args, exp),
           "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "cpu_count": os.cpu_count()}}  # fmt: skip
    try:
        raw["machine"]["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(raw))
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print(markdown(raw))


if __name__ == "__main__":
    main()
