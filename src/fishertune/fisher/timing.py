"""`EstimationTiming`: where phase 2's time goes (batch arrivals, the passes, the scoring), filled in by the
estimator."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import torch


def _sync(device: Optional[torch.device]) -> None:
    # CUDA runs asynchronously: without waiting, a mark would time the queueing of the work, not the work.
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class EstimationTiming:
    """Wall-clock record of one estimation: pass it as `timing=` to `estimate_scores` (or to `estimate_statistics`
    and `scores_from_stats`), which fill it in. `FisherTuneTrainer` keeps the phase-2 one as `estimation_timing`
    and logs `estimation_seconds` / `estimation_seconds_per_batch`.

    Every mark is `time.perf_counter()`; on a CUDA device it first waits for the device (`torch.cuda.synchronize`),
    so a mark falls after the work queued before it. On CPU nothing waits. A record adds no other work.

    Attributes:
        batch_arrivals_s (`list[float]`): per batch, the seconds from the start of `estimate_statistics` until the
            estimator received the batch from the data loader (before moving it to the device): so each interval
            is the passes over the previous batch plus the loading of this one; the first one includes the setup.
        passes_s (`float`, *optional*): the seconds of `estimate_statistics`: setup, every pass over every batch
            (the variational estimator's first batch also runs the clean pass that sets gamma), the checks.
        scoring_s (`float`, *optional*): the seconds of `scores_from_stats` (the statistics into scores).
    """

    batch_arrivals_s: list[float] = field(default_factory=list)
    passes_s: Optional[float] = None
    scoring_s: Optional[float] = None
    _device: Optional[torch.device] = field(default=None, repr=False, compare=False)
    _t0: float = field(default=0.0, repr=False, compare=False)

    @property
    def num_batches(self) -> int:
        return len(self.batch_arrivals_s)

    @property
    def total_s(self) -> Optional[float]:
        """Passes plus scoring (what is measured of the two), `None` before either."""
        parts = [s for s in (self.passes_s, self.scoring_s) if s is not None]
        return sum(parts) if parts else None

    @property
    def seconds_per_batch(self) -> Optional[float]:
        """`passes_s` over the batches (the setup and the first batch's extra pass included)."""
        return self.passes_s / self.num_batches if self.passes_s is not None and self.num_batches else None

    def to_dict(self) -> dict:
        return {"batch_arrivals_s": list(self.batch_arrivals_s), "passes_s": self.passes_s,
                "scoring_s": self.scoring_s}  # fmt: skip

    # -- marks, called by the estimator -----------------------------------------------------------
    def start(self, device: torch.device) -> None:
        """Start of `estimate_statistics`: a new record (an estimation run twice keeps the last)."""
        self._device = device
        self.batch_arrivals_s.clear()
        self.passes_s = self.scoring_s = None
        _sync(device)
        self._t0 = time.perf_counter()

    def arrived(self) -> None:
        _sync(self._device)
        self.batch_arrivals_s.append(time.perf_counter() - self._t0)

    def passes_done(self) -> None:
        _sync(self._device)
        self.passes_s = time.perf_counter() - self._t0

    @contextmanager
    def scoring(self, device: Optional[torch.device]):
        """Times the block as `scoring_s` (from its start: the passes ended synchronised)."""
        t0 = time.perf_counter()
        yield
        _sync(device)
        self.scoring_s = time.perf_counter() - t0
