"""Phase 2's memory, stated before the passes start and refused when the device cannot hold it.

Model (bytes beyond what the model itself already holds):

    passes  = N * b_pass + m * a + t + r              scoring = N * b_score + r
    peak    = max(passes, scoring)

N targeted entries; b_pass the state kept per entry during the passes: the variational estimator's precision
fits (fp32 log-variance and running sum of s, 8 B per fit: clean and, with DSU, perturbed) plus one batch's sum of
per-sample squares (`accumulator_dtype`: 8 or 4 B; each tensor is released as its fp32 F is made); the diagonal
estimator's sums, one per pass kind (the default `shift_weight_reading="mean"`).
b_score = 36 B: F, F' and the two precisions (4 B each), dF
and the percentile ranks at the scoring's peak (measured at ViT-L width). a: the activations autograd saves
for the backward of ONE sample, measured by a forward of one sample of the first batch under
`torch.autograd.graph.saved_tensors_hooks` (so it is exact for the model at hand, whatever its head); m: samples
per forward/backward (`micro_batch_size`, else the batch); t: the transient [chunk, out, in] fp32 products of the
per-sample squares; r: a constant working set of the runtime (allocator, autograd engine, the no-grad forward that
records DSU's statistics for micro-batches). Checked against measured peaks at three sizes in
benchmarks/phase2_memory.py (results/phase2_memory.md: 0.93-1.12x of the measured peak on CPU; not yet on CUDA).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .config import EstimationConfig
from .diagonal import _CHUNK_ELEMENTS
from .likelihood import LogProbFn, batch_nll, default_log_prob_fn  # noqa: F401  (the default for callers)
from .passes import micro_batches

logger = logging.getLogger(__name__)

_SCORE_BYTES = 36  # per entry at the scoring's peak (docs/ARCHITECTURE.md, phase 2)
_RUNTIME_BYTES = 48 * 2**20  # r of the module docstring, fitted in benchmarks/phase2_memory.py
_GIB = 2.0**30


def _size(n: float) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB / 10 else f"{n / 2**20:.1f} MiB"


@dataclass
class Phase2Memory:
    """The estimate of `estimate_phase2_bytes`, in bytes."""

    entries: int
    bytes_per_entry: int
    activations_per_sample: int
    samples_per_pass: int
    transient: int

    @property
    def passes(self) -> int:
        return (
            self.entries * self.bytes_per_entry
            + self.samples_per_pass * self.activations_per_sample
            + self.transient
            + _RUNTIME_BYTES
        )

    @property
    def scoring(self) -> int:
        return self.entries * _SCORE_BYTES + _RUNTIME_BYTES

    @property
    def total(self) -> int:
        return max(self.passes, self.scoring)

    def describe(self) -> str:
        return (
            f"phase 2 needs about {_size(self.total)}: passes {_size(self.passes)} "
            f"({self.bytes_per_entry} B x {self.entries:,} targeted entries + activations "
            f"{_size(self.activations_per_sample)}/sample x {self.samples_per_pass} samples per pass), "
            f"scoring {_size(self.scoring)} ({_SCORE_BYTES} B per entry)"
        )


def pass_bytes_per_entry(config: EstimationConfig, perturbed: bool) -> int:
    """b_pass of the module docstring: the state the passes keep per targeted entry."""
    acc = 8 if config.accumulator_dtype == "float64" else 4
    if config.estimator == "variational":  # a batch's sum is released as its fp32 F is made: never both whole
        return 8 * (2 if perturbed else 1) + max(acc, 4)
    return acc * (2 if perturbed else 1)


def saved_activation_bytes(model: nn.Module, sample: Mapping, config: EstimationConfig, log_prob_fn: LogProbFn) -> int:
    """Bytes autograd saves for the backward of a forward (and loss) of ``sample``, each storage counted once.
    Call it with the estimation's requires_grad flags set: only what the targeted weights' gradients need is saved."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        seen[(s.device.type, s.data_ptr())] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        nll, _, _ = batch_nll(
            model,
            sample,
            log_prob_fn,
            config.fisher_type,
            torch.Generator().manual_seed(0),
            0,
            sample["pixel_values"].shape[0],
        )
    del nll
    return int(sum(seen.values()))


def estimate_phase2_bytes(
    model: nn.Module,
    weights: Mapping[str, nn.Parameter],
    config: EstimationConfig,
    sample_batch: Mapping,
    log_prob_fn: LogProbFn,
    perturbed: bool,
) -> Phase2Memory:
    """The `Phase2Memory` of estimating ``weights`` with ``config`` on batches like ``sample_batch`` (on the device)."""
    batch = sample_batch["pixel_values"].shape[0]
    m = min(batch, config.micro_batch_size or batch)
    _, one = next(micro_batches(sample_batch, 1))
    per_sample = saved_activation_bytes(model, one, config, log_prob_fn)
    largest = max(w.numel() for w in weights.values())
    transient = 2 * 4 * min(m * largest, max(_CHUNK_ELEMENTS, largest))  # the product and its square, fp32
    return Phase2Memory(
        entries=sum(w.numel() for w in weights.values()),
        bytes_per_entry=pass_bytes_per_entry(config, perturbed),
        activations_per_sample=per_sample,
        samples_per_pass=m,
        transient=transient,
    )


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory phase 2 can still take on ``device``: CUDA's free memory plus what its caching allocator holds unused;
    on CPU the kernel's MemAvailable. None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            import psutil
        except ImportError:
            return None
        return int(psutil.virtual_memory().available)
    return None


def check_phase2_memory(
    model: nn.Module,
    weights: Mapping[str, nn.Parameter],
    config: EstimationConfig,
    sample_batch: Mapping,
    log_prob_fn: LogProbFn,
    perturbed: bool,
    show: Optional[Callable[[str], None]] = None,
) -> Phase2Memory:
    """Log phase 2's estimated memory (and pass the line to ``show``, e.g. to print it) and, with
    ``config.memory_check="refuse"``, raise `MemoryError` naming ``micro_batch_size`` when the device has less
    available. Each process checks its own device."""
    estimate = estimate_phase2_bytes(model, weights, config, sample_batch, log_prob_fn, perturbed)
    device = next(iter(weights.values())).device
    free = available_bytes(device)
    line = f"Estimation: {estimate.describe()}; available on {device}: {'unknown' if free is None else _size(free)}."
    logger.info(line)
    if show is not None:
        show(line)
    if free is None or estimate.total <= free or config.memory_check == "off":
        return estimate
    one = max(estimate.passes - (estimate.samples_per_pass - 1) * estimate.activations_per_sample, estimate.scoring)
    hint = (
        f"Lower `micro_batch_size` (now {config.micro_batch_size}; at 1 phase 2 needs about {_size(one)})"
        if estimate.samples_per_pass > 1
        else "`micro_batch_size` is already 1"
    )
    if config.accumulator_dtype == "float64":
        hint += ", set `accumulator_dtype: float32` (4 B less per entry)"
    message = (
        f"{estimate.describe()}, but {device} has {_size(free)} available. {hint}, or target fewer "
        "weights; `memory_check: warn` runs it anyway."
    )
    if config.memory_check == "warn":
        logger.warning(message)
        return estimate
    raise MemoryError(message)
