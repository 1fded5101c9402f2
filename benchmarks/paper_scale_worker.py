"""One run of `paper_scale.py` (one method) in its own process: the recipe config's trainer on synthetic data.

The driver (`paper_scale.py`) reads the JSON object this prints on its last stdout line. The run is what
`recipes/train.py --config <yaml>` builds (the recipe's `parse_experiment_args`, `build_model` with the
config's head, taps and queries, `FisherTuneTrainer`) but for a random-init DINOv2 built from a config (no
downloads), synthetic data (below) and the flags' step counts. Measurement:

* Phase boundaries come from a `TrainerCallback` passed to the trainer, so it runs before the trainer's
  own phase callbacks: phase 1 ends at the end of step T1 (before `EstimationCallback` starts phase 2),
  phase 2 ends at the begin of step T1 + 1 (estimation, selection, saving the scores, optimizer rebuild).
* Step seconds: `on_step_begin` -> `on_step_end` (forward, backward, optimizer step; CUDA synchronised).
* Estimation: the trainer's `estimation_timing` (`fishertune.fisher.EstimationTiming`, CUDA synchronised
  at every mark): the arrival time of every batch at the estimator (as the loader hands it over, from the
  start of `estimate_statistics`), the seconds of `estimate_statistics` (the passes) and of
  `scores_from_stats` (the scoring); reported as `arrivals_s`, `stats_s` and `scores_s`.
* Peak memory per phase: CPU: the kernel's RSS high-water mark (`VmHWM`), reset at every phase start
  through `/proc/self/clear_refs` (else `ru_maxrss`, the process's maximum); the driver starts workers with
  `MALLOC_MMAP_THRESHOLD_=65536` so freed tensors leave RSS. CUDA: `max_memory_allocated`, reset likewise.
  Both are absolute (weights, optimizer state and activations included).

Synthetic data: images N(0, 1) (already "normalised"), labels in 19 Cityscapes classes as random blocks
of 1/16 of the short side, with the bottom eighth 255 (ignored, like the ego vehicle).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

from _common import reset_hwm, status_kib

MODELS = {
    # DINOv2-L/14 as facebook/dinov2-large (position embeddings for 518 px: a 37x37 grid).
    "vit-l14": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4, patch_size=14,
                    image_size=518, layerscale_value=1.0),
    # Same layout, tiny (tests): a 5x5 grid, so every crop the tests use interpolates the table.
    "tiny": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                 image_size=70, layerscale_value=1.0),
}  # fmt: skip
#: The tiny model's Mask2Former, reduced everywhere but in structure (as tests/models/conftest.py's).
TINY_HEAD = dict(num_queries=4, decoder_layers=3, encoder_layers=1, train_num_points=64, feature_size=32,
                 mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32,
                 num_attention_heads=2)  # fmt: skip
METHODS = ("fishertune", "full", "rein")
NUM_CLASSES, IGNORE = 19, 255


def parse_config(path: str, extra: list[str] | None = None):
    """(ExperimentArguments, FisherTuneTrainingArguments) of the YAML, as `recipes/train.py` parses it."""
    from fishertune.experiment import parse_experiment_args

    exp, targs, _ = parse_experiment_args(["--config", path, *(extra or [])])
    return exp, targs


def config_phases(path: str) -> dict:
    """The config's own run: T1, T2, T3, max_steps, batch and crop (no overrides)."""
    with tempfile.TemporaryDirectory() as tmp:
        exp, targs = parse_config(path, ["--output_dir", tmp, "--use_cpu", "True"])
    t1, t2, t3 = targs.phase_lengths(targs.max_steps)
    return dict(t1=t1, t2=t2, t3=t3, max_steps=targs.max_steps, batch=targs.per_device_train_batch_size,
                crop=list(exp.crop_size), criterion=targs.criterion, estimator=targs.estimator,
                delta_min=targs.delta_min, delta_max=targs.delta_max, delta_min_count=targs.delta_min_count,
                delta_max_count=targs.delta_max_count)  # fmt: skip


class SyntheticCityscapes:
    """`n` samples of `size` (h, w): `pixel_values` [3, h, w] N(0, 1) and block labels (see the docstring)."""

    def __init__(self, n: int, size: tuple[int, int], seed: int = 0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        h, w = self.size
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        block = max(1, min(h, w) // 16)
        grid = torch.randint(0, NUM_CLASSES, (-(-h // block), -(-w // block)), generator=g)
        labels = grid.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w].clone()
        labels[h - h // 8 :] = IGNORE
        return {"pixel_values": torch.randn(3, h, w, generator=g), "labels": labels}


def build_model(exp, model: str, layers: int, rein: bool = False):
    """The config's segmenter (head, taps, queries) on a random-init DINOv2 of `model`'s size."""
    from transformers import Dinov2Config

    from fishertune.data import id2label
    from fishertune.models import build_model as build
    from fishertune.models import default_taps

    cfg = dict(MODELS[model])
    if layers:
        cfg["num_hidden_layers"] = layers
    n = cfg["num_hidden_layers"]
    # The config's taps are DINOv2-L's (8, 12, 16, 24); a model with other depth gets the evenly spaced default.
    taps = tuple(exp.taps) if exp.taps and max(exp.taps) <= n else default_taps(n)
    kwargs = dict(TINY_HEAD) if model == "tiny" else {}
    if exp.num_queries is not None and model != "tiny":
        kwargs["num_queries"] = exp.num_queries
    seg = build(exp.head, Dinov2Config(**cfg), id2label=id2label(exp.dataset), taps=taps, **kwargs)
    if rein and model == "tiny":
        # Rein's default config links its 100 tokens to 100 queries of width 256 (the paper's head); the tiny
        # head has fewer and narrower ones, so Rein is installed here as `prepare_model` would, sized to match.
        from fishertune.baselines import ReinConfig, apply_method

        apply_method(
            seg.requires_grad_(True), ReinConfig(token_length=seg.config.num_queries, query_dims=seg.config.hidden_dim)
        )
    return seg


def scale_count_budget(targs, model: str, layers: int) -> None:
    """A fixed-count budget (the paper's 15.21M entries) on a reduced model becomes the share it is of DINOv2-L's
    targeted entries (q, k, v, fc1, fc2: 11 h^2 per block, 24 blocks), so fewer blocks tune the same share."""
    full = MODELS["vit-l14"]
    if targs.delta_max_count is None or (model == "vit-l14" and layers in (0, full["num_hidden_layers"])):
        return
    targeted = 11 * full["hidden_size"] ** 2 * full["num_hidden_layers"]
    low = targs.delta_min_count if targs.delta_min_count is not None else targs.delta_max_count // 5
    targs.delta_max, targs.delta_min = targs.delta_max_count / targeted, low / targeted
    targs.delta_max_count = targs.delta_min_count = None
    targs.budget_base = "targeted"


class Memory:
    """Peak memory since the last `reset` (see the module docstring)."""

    def __init__(self, cuda: bool):
        self.cuda, self.hwm_reset = cuda, True

    def reset(self) -> None:
        import torch

        if self.cuda:
            return torch.cuda.reset_peak_memory_stats()
        if not reset_hwm():  # not writable (some containers): ru_maxrss, the process's maximum, from here on
            self.hwm_reset = False

    def peak(self) -> int:
        import torch

        if self.cuda:
            return int(torch.cuda.max_memory_allocated())
        if self.hwm_reset:
            return status_kib("VmHWM") * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_meter(warmup_steps: int, mem: Memory, sync):
    """The phase meter (a TrainerCallback, see the module docstring)."""
    from transformers import TrainerCallback

    from fishertune.training.optimizer import SPARSE_KEY

    class PhaseMeter(TrainerCallback):
        def __init__(self):
            self.phases, self.current, self.t_phase, self.t_step = {}, None, 0.0, 0.0

        def _begin(self, name):
            sync()
            mem.reset()
            self.current, self.t_phase = name, time.perf_counter()
            self.phases[name] = {"steps_s": [], "trainable": None}

        def _end(self):
            sync()
            ph = self.phases[self.current]
            ph["phase_s"], ph["peak_bytes"] = time.perf_counter() - self.t_phase, mem.peak()

        @staticmethod
        def _trainable(model):  # the sparse values train only up to their active rank (Eq. 16)
            dense = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and SPARSE_KEY not in n)
            return dense + (model.num_active() if hasattr(model, "num_active") else 0)

        def on_train_begin(self, args, state, control, **kw):
            self._begin("warmup" if warmup_steps else "estimation")

        def on_step_begin(self, args, state, control, **kw):
            if self.current == "estimation":  # the trainer's EstimationCallback ran since the last step
                self._end()
                self._begin("tuning")
            sync()
            self.t_step = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            sync()
            ph = self.phases[self.current]
            ph["steps_s"].append(time.perf_counter() - self.t_step)
            ph["trainable"] = self._trainable(model)
            if self.current == "warmup" and state.global_step == warmup_steps:
                self._end()
                self._begin("estimation")

        def on_train_end(self, args, state, control, **kw):
            self._end()

    return PhaseMeter()


def estimation_record(trainer) -> dict:
    """Phase 2's timing as the driver reads it, from the trainer's `estimation_timing` (see the docstring)."""
    timing = trainer.estimation_timing
    return {"arrivals_s": list(timing.batch_arrivals_s), "stats_s": timing.passes_s, "scores_s": timing.scoring_s}


def measure(args) -> dict:
    import torch

    from fishertune.data import collate_fn
    from fishertune.training import FisherTuneTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fishertune = args.method == "fishertune"
    warm, est = (args.warmup_steps, args.estimation_batches) if fishertune else (0, 0)
    tmp = tempfile.TemporaryDirectory()  # the trainer writes the scores (and the sensitivity plot) here
    over = ["--output_dir", tmp.name, "--max_steps", str(warm + args.tuning_steps), "--warmup_phase_steps",
            str(warm), "--save_strategy", "no", "--logging_steps", "1000000", "--report_to", "none",
            "--disable_tqdm", "True", "--dataloader_num_workers", "0"]  # fmt: skip
    over += ["--estimation_batches", str(est)] if fishertune else ["--method", args.method]
    over += (["--bf16", "True"] if args.dtype == "bf16" else []) + ([] if cuda else ["--use_cpu", "True"])
    over += ["--per_device_train_batch_size", str(args.batch)] if args.batch else []  # 0: the config's
    exp, targs = parse_config(args.config, over)
    size = tuple(args.image_size) if min(args.image_size) > 0 else tuple(exp.crop_size)
    batch = targs.per_device_train_batch_size

    mem, t0 = Memory(cuda), time.perf_counter()
    model = build_model(exp, args.model, args.layers, rein=args.method == "rein")
    scale_count_budget(targs, args.model, args.layers)
    mc = model.config
    # "criterion": the sparse run's criterion, or the baseline's method (the key predates `method`)
    out = {"method": args.method, "criterion": targs.criterion if targs.method == "sparse" else targs.method,
           "image_size": list(size), "batch": batch,
           "mixed_precision": "bf16" if targs.bf16 else "no",
           "params": sum(p.numel() for p in model.parameters()), "taps": list(mc.taps), "num_queries": mc.num_queries,
           "decoder_layers": mc.decoder_layers, "train_num_points": mc.train_num_points,
           "threads": torch.get_num_threads()}  # fmt: skip
    data = SyntheticCityscapes(batch * (warm + args.tuning_steps + est + 2), size, seed=targs.seed)
    meter = make_meter(warm, mem, sync)
    trainer = FisherTuneTrainer(model=model, args=targs, train_dataset=data, data_collator=collate_fn,
                                callbacks=[meter])  # fmt: skip
    out["build_s"] = time.perf_counter() - t0
    out["base_bytes"] = torch.cuda.memory_allocated() if cuda else status_kib("VmRSS") * 1024
    try:
        trainer.train()
    finally:
        tmp.cleanup()
    out.update(phases=meter.phases, hwm_reset=mem.hwm_reset, config=config_phases(args.config))
    if fishertune:
        out["phases"]["estimation"].update(
            estimation_record(trainer), trainable=trainer.model.num_targeted(), batches=est
        )
        out.update(allocated=trainer.model.num_allocated(), active_fraction=trainer.active_fraction)
    else:  # T1 = T2 = 0: a baseline's "phase 2" is only its optimizer build at step 0
        out["phases"].pop("estimation", None)
    out["loss"] = float(trainer.state.log_history[-1].get("train_loss", float("nan")))
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--config", required=True)
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--layers", required=True, type=int, help="0: the model's own block count")
    p.add_argument("--image-size", required=True, type=int, nargs=2, metavar=("H", "W"), help="0 0: the config's crop")
    for k in ("batch", "warmup-steps", "estimation-batches", "tuning-steps", "threads"):
        p.add_argument(f"--{k}", required=True, type=int)
    p.add_argument("--device", required=True)
    p.add_argument("--dtype", required=True, choices=["fp32", "bf16"])
    return p


def main(argv=None):
    print(json.dumps(measure(parser().parse_args(argv))))


if __name__ == "__main__":
    main()
