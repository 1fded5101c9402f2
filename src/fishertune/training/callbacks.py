"""One small callback per phase transition of Algorithm 1.

The callbacks decide *when*; the trainer's methods do the work (they need the trainer's
dataloaders, optimizer and accelerator, which callbacks do not own):

1. `WarmupPhaseCallback`: at train begin in phase 1, checks that no backbone parameter trains.
2. `EstimationCallback`: once `global_step` reaches T1 (at train begin when T1 = 0, else at the
   end of step T1), runs the estimator over T2 batches, selects, and switches to tuning
   (`FisherTuneTrainer.start_tuning`). For `full`/`lora` it only unfreezes the backbone.
3. `TuningScheduleCallback`: before every tuning step, sets the active fraction p(t) (Eq. 16),
   so that forward, backward and the optimizer step all see the same active entries.
4. `NonFiniteCallback`: around every optimizer step of phases 1 and 3, drops a step whose
   gradients were found non-finite after backward, and checks the updated parameters
   (`fishertune.training.nonfinite`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import TrainerCallback
from transformers.utils import logging

if TYPE_CHECKING:
    from .trainer import FisherTuneTrainer

logger = logging.get_logger(__name__)


class _PhaseCallback(TrainerCallback):
    def __init__(self, trainer: "FisherTuneTrainer") -> None:
        self.trainer = trainer


class WarmupPhaseCallback(_PhaseCallback):
    """Phase 1: the backbone is frozen and only the decoder trains."""

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        t1 = trainer.phase_lengths[0]
        if trainer.in_tuning or t1 == 0:
            return
        leaked = trainer.trainable_backbone_names()
        if leaked:
            raise RuntimeError(f"Phase 1 must train the decoder only, but backbone parameters train: {leaked[:5]}")
        logger.info(f"FisherTune phase 1: warm-up of the decoder, backbone frozen, until step {t1}.")


class EstimationCallback(_PhaseCallback):
    """Phase 1 -> 2 -> 3: estimate scores, select, and start tuning once T1 steps are done."""

    def _maybe_start(self, state) -> None:
        if not self.trainer.in_tuning and state.global_step >= self.trainer.phase_lengths[0]:
            self.trainer.start_tuning()

    def on_train_begin(self, args, state, control, **kwargs):
        self._maybe_start(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._maybe_start(state)


class TuningScheduleCallback(_PhaseCallback):
    """Phase 3: the active fraction of Eq. 16 for the coming step."""

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.in_tuning:
            self.trainer.apply_schedule(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.trainer.in_tuning:
            self.trainer.apply_schedule(state.global_step)


class NonFiniteCallback(_PhaseCallback):
    """Phases 1 and 3: no non-finite gradient is applied, no update leaves a parameter non-finite."""

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer.nonfinite.step_begin(self.trainer.model)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.nonfinite.before_update(self.trainer.model)

    def on_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        trainer.nonfinite.after_update(trainer.model, state.global_step + 1, trainer.current_phase)
