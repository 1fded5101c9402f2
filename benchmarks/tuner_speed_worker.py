"""One measurement of `tuner_speed.py` (one method, one image size, one delta-max) in its own process.

The driver (`tuner_speed.py`) starts this script once per method and measurement and reads the JSON
object it prints on its last stdout line. Every argument is required, so an argument the driver
forgot to pass fails here instead of silently taking a default. Modes:

* ``time``    -- ``--warmup`` untimed steps, then the median (and minimum) of ``--steps`` timed steps.
* ``mem``     -- peak memory over ``--mem-steps`` steps, training-state bytes after them, and for
                 FisherTune which layers hold entries and which values-gradient path each of them ran.
* ``profile`` -- ``--warmup`` untimed steps, then one step under ``torch.profiler``: the top ops by
                 self CPU time and the wall time of the forward, backward and optimizer phases.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import time

from _common import reset_hwm, status_kib

MODELS = {
    # ViT-S/14 and ViT-L/14 shapes of DINOv2; vit-ti14: ViT-Ti's (the shape of a ViT-Ti/16 scores file, --scores).
    "vit-ti14": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "vit-s14": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "vit-l14": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
ADAPTER_MARKERS = ("lora_", "shira_", "fishertune_", "modules_to_save")
FISHERTUNE_METHODS = ("fishertune", "fishertune-dense")
LORA_R = 16


def model_config(model: str, layers: int | None) -> dict:
    """The DINOv2 dimensions of ``model``, with ``layers`` blocks if given (0 or None: the model's own)."""
    cfg = dict(MODELS[model])
    if layers:
        cfg["num_hidden_layers"] = layers
    return cfg


def build_base(args):
    import torch
    from torch import nn
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(**model_config(args.model, args.layers), image_size=args.image_size, patch_size=14)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Dinov2Model(cfg)
            self.head = nn.Linear(cfg.hidden_size, args.classes)

        def forward(self, pixel_values):
            return self.head(self.backbone(pixel_values=pixel_values).pooler_output)

    return Net().to(args.device)


def targeted_shapes(model) -> list[tuple[int, int]]:
    from torch import nn

    from fishertune.tuner import target_regex

    pat = re.compile(target_regex(model))
    return [
        (m.out_features, m.in_features)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and pat.fullmatch(n)
    ]


def shira_rank(shapes: list[tuple[int, int]], target_entries: int) -> int:
    """The SHiRA ``r`` whose entry count ``r * sum(m + n)`` is closest to ``target_entries``."""
    per_r = sum(m + n for m, n in shapes)
    lo = max(1, target_entries // per_r)
    return min((lo, lo + 1), key=lambda r: abs(r * per_r - target_entries))


def wrap(model, args):
    """The model trained by ``args.method``; FisherTune's values-gradient path is set here, per process."""
    if args.method == "full":
        model.requires_grad_(True)
        return model
    import peft

    from fishertune.tuner import target_regex

    targets = target_regex(model)  # the Eq. 3 set of the DINOv2 backbone: its q/k/v and FFN linears
    if args.method == "lora":
        cfg = peft.LoraConfig(
            r=LORA_R, lora_alpha=LORA_R, lora_dropout=0.0, target_modules=targets, modules_to_save=["head"]
        )
    elif args.method == "shira":
        shapes = targeted_shapes(model)
        r = shira_rank(shapes, round(args.delta_max * sum(m * n for m, n in shapes)))
        cfg = peft.ShiraConfig(r=r, random_seed=0, target_modules=targets, modules_to_save=["head"])
    elif args.method in FISHERTUNE_METHODS:
        import fishertune
        from fishertune.tuner import sparse_grad

        # "auto" is the library's default dispatch (`values_grad_path`); "dense" forces GEMM + gather everywhere.
        sparse_grad.set_sparse_grad_mode("dense" if args.method == "fishertune-dense" else "auto")
        # Every allocated entry is active from the start (allocate activates all), so the step trains
        # delta_max of the entries; delta_min only matters for the trainer's schedule and must not exceed it.
        cfg = fishertune.FisherTuneConfig(
            init_criterion="magnitude",
            delta_max=args.delta_max,
            delta_min=args.delta_max,
            target_modules=targets,
            modules_to_save=["head"],
        )
    else:
        raise ValueError(args.method)
    model = peft.get_peft_model(model, cfg)
    if args.method in FISHERTUNE_METHODS and args.scores:
        model.base_model.select(scores_for(model, args.scores))
    return model


def scores_for(model, path: str) -> dict:
    """A saved selection's scores (``fishertune_scores.safetensors`` of a real run) keyed by this model's targeted
    layers: matched by block index and layer name (``layers.3.mlp.fc1`` <-> ``layer.3.mlp.fc1``), shapes checked."""
    from safetensors.torch import load_file

    def key(name: str):
        m = re.search(r"layers?\.(\d+)\.(.+)$", name)
        return (int(m.group(1)), m.group(2)) if m else name

    saved = {key(k): v for k, v in load_file(path).items()}
    out = {}
    for name, weight in model.base_model.fishertune_target_weights().items():
        v = saved.get(key(name))
        if v is None or tuple(v.shape) != tuple(weight.shape):
            found = None if v is None else tuple(v.shape)
            raise SystemExit(f"--scores {path}: no score of shape {tuple(weight.shape)} for {name} (found {found})")
        out[name] = v.to(weight.device)
    return out


def adapter_bytes(model) -> int:
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


def state_bytes(model, opt, method: str) -> dict[str, int]:
    import torch

    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    optim = sum(
        v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )
    adapter = 0 if method == "full" else adapter_bytes(model)
    return {"grad_bytes": grads, "optim_bytes": optim, "adapter_bytes": adapter, "state_bytes": grads + optim + adapter}


def _path_calls(model) -> dict[str, dict[str, int]]:
    """Per FisherTune layer, the backward passes that ran each sparse values-gradient path so far (the layer counts)."""
    from fishertune.tuner import FisherTuneLayer

    return {n: m.values_grad_calls() for n, m in model.named_modules() if isinstance(m, FisherTuneLayer)}


def fishertune_report(model, calls_before: dict[str, dict[str, int]], dtype) -> dict:
    """Per targeted layer: shape, active entries, the block they span, the path the dispatch rule names and the
    path backward really ran."""
    from fishertune.tuner import FisherTuneLayer, sparse_grad

    layers = []
    for name, m in model.named_modules():
        if not isinstance(m, FisherTuneLayer):
            continue
        nnz = m.fishertune_active.get("default", 0)
        before, now = calls_before.get(name, {}), m.values_grad_calls()
        ran = next((p for p in ("sampled", "compact") if now[p] > before.get(p, 0)), "dense")
        # rows x cols spanned by the active entries, from a pattern of the report's own (the layer's cache, whose
        # bytes are reported, stays as training left it)
        block = 0
        if nnz:
            pattern = sparse_grad.SelectionPattern(m.fishertune_indices["default"], m.out_features, m.in_features)
            block = pattern.block_size(nnz)
        rule = (
            "none"
            if not nnz
            else sparse_grad.values_grad_path(
                m.get_base_layer().weight.device.type, dtype, m.out_features, m.in_features, nnz, lambda: block
            )
        )
        layers.append(
            dict(
                name=name,
                block=int(re.search(r"layer\.(\d+)\.", name).group(1)),
                shape=[m.out_features, m.in_features],
                nnz=nnz,
                block_fraction=block / (m.out_features * m.in_features),
                rule_path=rule,
                ran_path=ran if nnz else "none",
            )
        )
    tuned = [ly for ly in layers if ly["nnz"]]
    weight = sum(ly["shape"][0] * ly["shape"][1] for ly in tuned)
    return {
        "layers": layers,
        "targeted_layers": len(layers),
        "tuned_layers": len(tuned),
        **{f"{p}_layers": sum(ly["ran_path"] == p for ly in layers) for p in sparse_grad.PATHS},
        # the weight-gradient GEMM's work on the compact block, as a share of the dense GEMMs of the tuned layers
        "block_share": sum(ly["block_fraction"] * ly["shape"][0] * ly["shape"][1] for ly in tuned) / weight
        if weight
        else 0.0,
        "pattern_bytes": sum(m.selection_pattern_bytes() for m in model.modules() if isinstance(m, FisherTuneLayer)),
        "lowest_tuned_block": min((ly["block"] for ly in tuned), default=None),
    }


def measure(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]

    model = build_base(args)
    model.requires_grad_(False)
    if cuda:
        torch.cuda.synchronize()
        base_mem = torch.cuda.memory_allocated()
    else:
        base_rss = status_kib("VmRSS") * 1024

    model = wrap(model, args)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen).to(dev)
    y = torch.randint(0, args.classes, (args.batch,), generator=gen).to(dev)
    record = torch.profiler.record_function if args.mode == "profile" else None

    def phase(name):
        return record(name) if record else _Null()

    def step():
        with phase("## zero_grad"):
            opt.zero_grad(set_to_none=True)
        with phase("## forward"), torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        with phase("## backward"):
            loss.backward()
        with phase("## optimizer"):
            opt.step()
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    out = {"method": args.method, "mode": args.mode, "image_size": args.image_size, "delta_max": args.delta_max}
    out["trainable"] = sum(p.numel() for p in params)
    if args.method == "shira":
        out["shira_r"] = model.peft_config["default"].r
    from fishertune.backbones import backbone_blocks, locate

    _, family, backbone = locate(model)
    blocks = list(backbone_blocks(backbone, family))
    grad_in: dict[int, bool] = {}
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda mod, a, i=i: grad_in.__setitem__(i, bool(a[0].requires_grad)))
    gc.collect()

    if args.mode == "mem":
        calls_before = _path_calls(model) if args.method in FISHERTUNE_METHODS else {}
        if cuda:
            sync()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset = reset_hwm()
        for _ in range(args.mem_steps):
            step()
        if cuda:
            sync()
            out["peak_bytes"] = torch.cuda.max_memory_allocated() - base_mem
        else:
            import resource

            hwm = status_kib("VmHWM") * 1024 if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            out["peak_bytes"] = hwm - base_rss
            out["hwm_reset"] = reset
        out.update(state_bytes(model, opt, args.method))
        if args.method in FISHERTUNE_METHODS:
            out.update(fishertune_report(model, calls_before, amp_dtype or torch.float32))
        # The lowest block whose input needs a gradient: backward goes no further down than that block's input.
        out["blocks"] = len(blocks)
        out["grad_enters_block"] = min((i for i, g in grad_in.items() if g), default=None)
    elif args.mode == "time":
        times = []
        for i in range(args.warmup + args.steps):
            sync()
            t0 = time.perf_counter()
            loss = step()
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        times.sort()
        out["step_s"] = times[len(times) // 2]
        out["step_min_s"] = times[0]
        out["loss"] = float(loss)
    else:  # profile
        for _ in range(args.warmup):
            step()
        sync()
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=acts) as prof:
            step()
            sync()
        out["profiled_step_s"] = time.perf_counter() - t0
        avg = prof.key_averages()
        out["phases_s"] = {e.key[3:]: e.cpu_time_total / 1e6 for e in avg if e.key.startswith("## ")}
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        out["profile_table"] = avg.table(sort_by=sort, row_limit=args.profile_rows, max_name_column_width=60)
    return out


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", required=True, choices=["full", "lora", "shira", *FISHERTUNE_METHODS])
    p.add_argument("--mode", required=True, choices=["time", "mem", "profile"])
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--layers", required=True, type=int, help="0: the model's own block count")
    p.add_argument("--image-size", required=True, type=int)
    p.add_argument("--delta-max", required=True, type=float)
    for k in ("steps", "warmup", "mem-steps", "batch", "threads", "classes", "profile-rows"):
        p.add_argument(f"--{k}", required=True, type=int)
    p.add_argument("--device", required=True)
    p.add_argument("--dtype", required=True, choices=["fp32", "bf16", "fp16"])
    p.add_argument("--scores", required=True, help="FisherTune's selection: a scores .safetensors, or '' (magnitude)")
    return p


# Driver attributes forwarded to every worker (the per-run method, mode, image size and delta are added by the driver).
FORWARDED = (
    "model",
    "layers",
    "steps",
    "warmup",
    "mem_steps",
    "batch",
    "threads",
    "classes",
    "profile_rows",
    "device",
    "dtype",
    "scores",
)


def main(argv=None):
    print(json.dumps(measure(parser().parse_args(argv))))


if __name__ == "__main__":
    main()
