"""Step time, peak memory and training-state bytes of FisherTune vs full fine-tuning, LoRA and SHiRA.

One run trains the same randomly initialised DINOv2 backbone (ViT-S/14 by default) plus a linear
classification head with four methods and prints a markdown table of ratios to full fine-tuning:

* ``full``       -- every parameter trainable (backbone + head).
* ``lora``       -- PEFT LoRA, r=16 on q/k/v/fc1/fc2 of every block.
* ``shira``      -- PEFT SHiRA (random sparse mask) on the same linears, ``r`` chosen so that its
                    entry count is as close as possible to FisherTune's.
* ``fishertune`` -- FisherTune, top ``--delta-max`` (5%) of the same linears by magnitude, all active.

The head (``Linear(hidden, --classes)`` on the pooled CLS token, cross-entropy loss) is the same for
all methods and trained in full (``modules_to_save=["head"]`` for the PEFT methods). The optimizer is
AdamW with weight decay 0.05 over the trainable parameters.

Measurement (each method in FRESH subprocesses, so nothing leaks between methods):

* Step time: ``--warmup`` untimed steps, then ``--steps`` timed steps (zero_grad, forward, loss,
  backward, optimizer step; CUDA is synchronised). This is repeated for ``--rounds`` rounds that
  interleave the methods, and the lowest per-round median step is reported (robust to background
  load drifting during the run). Timing runs use the default allocator settings.
* Peak memory: a second subprocess per method. On CPU it runs with ``MALLOC_MMAP_THRESHOLD_=65536``
  (every tensor of >=64 KiB is its own mmap, so freed memory goes back to the OS and RSS follows
  the live set instead of glibc's cached heap), records RSS after the frozen base model is built
  (``baseline``), builds the adapter, resets the kernel's RSS high-water mark
  (``/proc/self/clear_refs`` <- 5; falls back to ``ru_maxrss`` if that is not writable, which
  also catches one-off setup peaks such as the magnitude selection) and trains ``--mem-steps``
  steps. ``peak = VmHWM - baseline``: adapter tensors + gradients + optimizer state + activations
  + transient buffers; the frozen weights and the Python/torch runtime are excluded. On CUDA it
  is ``torch.cuda.max_memory_allocated() - memory_allocated(baseline)`` with the peak statistics
  reset after the adapter is built.
* Training-state bytes, exact from the tensors after a step: ``.grad`` of every trainable
  parameter + every tensor in the optimizer state (incl. AdamW's ``step``) + adapter tensors
  (every parameter/buffer the PEFT method adds: LoRA A/B, SHiRA values and its int32 index
  tensors, FisherTune values/indices/ranks/shape, and the trainable ``modules_to_save`` copy of
  the head). For full fine-tuning the trained weights are the model itself, so its adapter term is 0.

Usage::

    python benchmarks/tuner_speed.py                    # ViT-S/14, 224 px, batch 8, CPU, fp32
    python benchmarks/tuner_speed.py --model vit-l14 --image-size 512 --device cuda --dtype bf16 \
        --out benchmarks/results/tuner_speed_vitl_cuda.md

Results are printed and written to ``--out`` (default ``benchmarks/results/tuner_speed.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

METHODS = ("full", "lora", "shira", "fishertune")
MODELS = {
    # ViT-S/14 and ViT-L/14 shapes of DINOv2.
    "vit-s14": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vit-l14": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
TARGET_REGEX = r"backbone\.encoder\.layer\.\d+\.(attention\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2))"
ADAPTER_MARKERS = ("lora_", "shira_", "fishertune_", "modules_to_save")


# ------------------------------------------------------------------------------------------------
# worker: one method, one measurement, in its own process
# ------------------------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _build_base(args):
    import torch
    from torch import nn
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(**MODELS[args.model], image_size=args.image_size, patch_size=14)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Dinov2Model(cfg)
            self.head = nn.Linear(cfg.hidden_size, args.classes)

        def forward(self, pixel_values):
            return self.head(self.backbone(pixel_values=pixel_values).pooler_output)

    return Net().to(args.device)


def _entries_per_layer(model) -> list[tuple[int, int]]:
    from torch import nn

    pat = re.compile(TARGET_REGEX)
    return [(m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, nn.Linear) and pat.fullmatch(n)]


def shira_rank(shapes: list[tuple[int, int]], target_entries: int) -> int:
    """The SHiRA ``r`` whose entry count ``r * sum(m + n)`` is closest to ``target_entries``."""
    per_r = sum(m + n for m, n in shapes)
    lo = max(1, target_entries // per_r)
    return min((lo, lo + 1), key=lambda r: abs(r * per_r - target_entries))


def _wrap(model, args):
    if args.method == "full":
        model.requires_grad_(True)
        return model
    import peft

    if args.method == "lora":
        cfg = peft.LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGET_REGEX, modules_to_save=["head"])
    elif args.method == "shira":
        shapes = _entries_per_layer(model)
        total = sum(m * n for m, n in shapes)
        r = shira_rank(shapes, round(args.delta_max * total))
        cfg = peft.ShiraConfig(r=r, random_seed=0, target_modules=TARGET_REGEX, modules_to_save=["head"])
    elif args.method == "fishertune":
        import fishertune

        cfg = fishertune.FisherTuneConfig(
            init_criterion="magnitude", delta_max=args.delta_max, target_modules=TARGET_REGEX, modules_to_save=["head"]
        )
    else:
        raise ValueError(args.method)
    return peft.get_peft_model(model, cfg)


def _adapter_bytes(model) -> int:
    """Bytes of every tensor the PEFT method added (parameters, buffers, SHiRA's index dict)."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()

    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if any(k in name for k in ADAPTER_MARKERS):  # the frozen `original_module` of the head is not matched
            add(t)
    for m in model.modules():
        for t in getattr(m, "shira_indices", {}).values():  # a plain dict, not registered as buffers
            add(t)
    return total


def _state_bytes(model, opt, method: str) -> dict[str, int]:
    import torch

    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    optim = sum(
        v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )
    adapter = 0 if method == "full" else _adapter_bytes(model)
    return {"grad_bytes": grads, "optim_bytes": optim, "adapter_bytes": adapter, "state_bytes": grads + optim + adapter}


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    model = _build_base(args)
    model.requires_grad_(False)
    if cuda:
        torch.cuda.synchronize()
        base_mem = torch.cuda.memory_allocated()
    else:
        base_rss = _rss_kib("VmRSS") * 1024

    model = _wrap(model, args)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(dev)
    y = torch.randint(0, args.classes, (args.batch,), generator=gen).to(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        return loss

    out = {"method": args.method, "trainable": trainable, "mode": args.mode}
    if args.method == "shira":
        out["shira_r"] = model.peft_config["default"].r
    import gc

    gc.collect()
    if args.mode == "mem":
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset = _reset_hwm()
        for _ in range(args.mem_steps):
            step()
        if cuda:
            torch.cuda.synchronize()
            out["peak_bytes"] = torch.cuda.max_memory_allocated() - base_mem
        else:
            import resource

            hwm = _rss_kib("VmHWM") * 1024 if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            out["peak_bytes"] = hwm - base_rss
            out["hwm_reset"] = reset
        out.update(_state_bytes(model, opt, args.method))
    else:
        times = []
        for i in range(args.warmup + args.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = step()
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        times.sort()
        out["step_s"] = times[len(times) // 2]
        out["step_min_s"] = times[0]
        out["loss"] = float(loss)
    return out


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
def _run(args, method: str, mode: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--method", method, "--mode", mode]
    for k in ("model", "steps", "warmup", "mem_steps", "batch", "image_size", "device", "dtype", "threads", "classes", "delta_max"):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    env = dict(os.environ)
    if mode == "mem" and args.device == "cpu":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"worker {method}/{mode} failed (rc {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _table(rows: dict[str, dict], args) -> str:
    full, lora = rows["full"], rows.get("lora")
    mb = 1024**2
    head = (
        "| method | trainable entries | step time s | step / full | step / LoRA | peak MB | peak / full | peak / LoRA "
        "| state MB | state / full |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for m in METHODS:
        if m not in rows:
            continue
        r = rows[m]
        name = {"full": "full fine-tuning", "lora": "LoRA r=16", "shira": f"SHiRA r={r.get('shira_r')}", "fishertune": f"FisherTune {args.delta_max:.0%}"}[m]
        lines.append(
            f"| {name} | {r['trainable']:,} | {r['step_s']:.3f} | {r['step_s'] / full['step_s']:.2f}x "
            f"| {r['step_s'] / lora['step_s']:.2f}x | {r['peak_bytes'] / mb:.1f} | {r['peak_bytes'] / full['peak_bytes']:.2f}x "
            f"| {r['peak_bytes'] / lora['peak_bytes']:.2f}x | {r['state_bytes'] / mb:.1f} | {r['state_bytes'] / full['state_bytes']:.3f}x |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="vit-s14")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--steps", type=int, default=5, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per method")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds over all methods")
    p.add_argument("--mem-steps", type=int, default=2, help="steps of the peak-memory run")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype (weights stay fp32)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--delta-max", type=float, default=0.05)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tuner_speed.md"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["time", "mem"], default="time", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return

    methods = [m for m in args.methods.split(",") if m]
    for req in ("full", "lora"):
        if req not in methods:
            methods.insert(0, req)
    methods = [m for m in METHODS if m in methods]
    rows = {}
    t0 = time.time()
    load0 = os.getloadavg()[0]
    mem = {}
    for m in methods:
        mem[m] = _run(args, m, "mem")
        print(f"[{m}] peak {mem[m]['peak_bytes'] / 2**20:.1f} MB  state {mem[m]['state_bytes'] / 2**20:.2f} MB", file=sys.stderr)
    # Timing runs go round-robin over the methods, `--rounds` times; a method's step time is the
    # lowest of its per-round medians, which damps drift in background load on a shared machine.
    for rnd in range(args.rounds):
        for m in methods:
            r = _run(args, m, "time")
            if m in rows:
                rows[m]["step_s"] = min(rows[m]["step_s"], r["step_s"])
                rows[m]["round_medians"].append(r["step_s"])
            else:
                rows[m] = dict(r, round_medians=[r["step_s"]])
            print(f"[round {rnd}] {m}: median step {r['step_s']:.3f}s", file=sys.stderr)
    for m in methods:
        rows[m].update({k: v for k, v in mem[m].items() if k not in rows[m]})
    load1 = os.getloadavg()[0]

    import torch

    dev = args.device
    if dev.startswith("cuda"):
        dev_name = torch.cuda.get_device_name(0)
    else:
        dev_name = f"CPU ({platform.processor() or platform.machine()}), {args.threads} threads"
    cfg = MODELS[args.model]
    hdr = (
        f"DINOv2 {args.model} (hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, random init), "
        f"{args.image_size} px, batch {args.batch}, {args.dtype}, {dev_name}; AdamW(wd=0.05); "
        f"step time = lowest over {args.rounds} interleaved rounds of the median of {args.steps} steps after "
        f"{args.warmup} warm-up; torch {torch.__version__}; 1-min load average {load0:.1f} at start, {load1:.1f} at end.\n"
    )
    notes = []
    if "shira" in rows and "fishertune" in rows:
        s, f = rows["shira"]["trainable"], rows["fishertune"]["trainable"]
        notes.append(f"SHiRA r={rows['shira']['shira_r']} trains {s:,} entries vs FisherTune's {f:,} ({(s - f) / f:+.2%}), head included in both.")
    table = _table(rows, args)
    detail = "\n| method | grads MB | optimizer MB | adapter tensors MB | per-round median step s |\n|---|---:|---:|---:|---|\n" + "\n".join(
        f"| {m} | {r['grad_bytes'] / 2**20:.2f} | {r['optim_bytes'] / 2**20:.2f} | {r['adapter_bytes'] / 2**20:.2f} "
        f"| {', '.join(f'{t:.3f}' for t in r['round_medians'])} |"
        for m, r in rows.items()
    ) + "\n"
    text = hdr + "\n" + table + "".join(f"\n{n}\n" for n in notes) + detail
    print(text)
    print(f"(total {time.time() - t0:.0f}s)", file=sys.stderr)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write("# Tuner speed benchmark\n\nGenerated by `benchmarks/tuner_speed.py` (see its docstring for the method).\n\n" + text)


if __name__ == "__main__":
    main()
