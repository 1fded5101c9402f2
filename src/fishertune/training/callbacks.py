"""One small callback per phase transition of Algorithm 1.

The callbacks decide *when*, from `(args, state, control)`, the model they are given (`model=` of every event) and
the run's `FisherTuneState`; the work that needs the trainer's dataloaders, optimizer and accelerator is done by the
function each is constructed with (the trainer's public methods):

1. `WarmupPhaseCallback`: at train begin in phase 1, checks that no backbone parameter trains.
2. `EstimationCallback`: once `global_step` reaches T1 (at train begin when T1 = 0, else at the
   end of step T1), calls `start_tuning`: the estimator over T2 batches, the selection, and the switch to
   tuning (`FisherTuneTrainer.start_tuning`). For the other methods it only unfreezes the backbone.
3. `TuningScheduleCallback`: before every tuning step, sets the active fraction p(t) (Eq. 16),
   so that forward, backward and the optimizer step all see the same active entries.
4. `NonFiniteCallback`: around every optimizer step of phases 1 and 3, drops a step whose
   gradients were found non-finite after backward, and checks the updated parameters
   (`fishertune.training.nonfinite`).
"""

from __future__ import annotations

from typing import Callable

from transformers import TrainerCallback
from transformers.utils import logging

from .nonfinite import NonFiniteGuard
from .setup import backbone_parameters
from .state import FisherTuneState

logger = logging.get_logger(__name__)


class WarmupPhaseCallback(TrainerCallback):
    """Phase 1: the backbone is frozen and only the decoder trains."""

    def __init__(self, phase: FisherTuneState) -> None:
        self.phase = phase

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        t1 = args.phase_lengths(state.max_steps)[0]
        if self.phase.in_tuning or t1 == 0:
            return
        leaked = [n for n, p in backbone_parameters(model) if p.requires_grad]
        if leaked:
            raise RuntimeError(f"Phase 1 must train the decoder only, but backbone parameters train: {leaked[:5]}")
        logger.info(f"FisherTune phase 1: warm-up of the decoder, backbone frozen, until step {t1}.")


class EstimationCallback(TrainerCallback):
    """Phase 1 -> 2 -> 3: estimate scores, select, and start tuning (`start_tuning()`) once T1 steps are done."""

    def __init__(self, phase: FisherTuneState, start_tuning: Callable[[], None]) -> None:
        self.phase, self.start_tuning = phase, start_tuning

    def _maybe_start(self, args, state) -> None:
        if not self.phase.in_tuning and state.global_step >= args.phase_lengths(state.max_steps)[0]:
            self.start_tuning()

    def on_train_begin(self, args, state, control, **kwargs):
        self._maybe_start(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        self._maybe_start(args, state)


class TuningScheduleCallback(TrainerCallback):
    """Phase 3: the active fraction of Eq. 16 for the coming step (`apply_schedule(global_step)`)."""

    def __init__(self, phase: FisherTuneState, apply_schedule: Callable[[int], None]) -> None:
        self.phase, self.apply_schedule = phase, apply_schedule

    def on_train_begin(self, args, state, control, **kwargs):
        if self.phase.in_tuning:
            self.apply_schedule(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.phase.in_tuning:
            self.apply_schedule(state.global_step)


class NonFiniteCallback(TrainerCallback):
    """Phases 1 and 3: no non-finite gradient is applied, no update leaves a parameter non-finite."""

    def __init__(self, phase: FisherTuneState, guard: NonFiniteGuard) -> None:
        self.phase, self.guard = phase, guard

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.guard.step_begin(model)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.guard.before_update(model)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.guard.after_update(model, state.global_step + 1, self.phase.phase)
