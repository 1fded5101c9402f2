"""FisherTuneTrainer: Algorithm 1 (warm-up, estimation, tuning) on top of `transformers.Trainer`.

Phase state. The phase of Algorithm 1, the active fraction, the scores and the counters a resume continues live in
one `FisherTuneState` (`trainer.fishertune_state`; `in_tuning`, `scores`, `active_fraction`, `estimation_timing` read
it). The callbacks read it, with `(args, state, control)`, and call the trainer's public methods; phase 2 is a
function (`estimation.estimate_and_select`) whose result the trainer keeps and logs.

Optimizer rebuild. The sparse deltas only exist once the selection is made (end of phase 2), so phase 1 runs with an
optimizer over the decoder alone. `start_tuning` then builds a new optimizer from the phase-3 trainable set (same
group layout as any phase-3 build), carries the decoder's AdamW state over from the old one, and creates a new LR
scheduler fast-forwarded to the current step: the LR curve of the run is one schedule over `max_steps`.

Resume. `_save_checkpoint` adds the state's dict (phase, active fraction, whether scores exist, a fingerprint of the
model and the settings that change the model, data or optimisation: FisherTune options, `RESUME_SETTINGS`,
`run_settings`) and the scores to each checkpoint (the selection is in the adapter weights), staged and renamed so
that a checkpoint is complete or absent (`fishertune.training.checkpoints`). On `train(resume_from_checkpoint=...)`
(`True`: the newest complete checkpoint), `_load_from_checkpoint` refuses a changed setting that
`allow_changed_settings` does not name, restores the state and loads the adapter (which re-allocates the selection)
before the Trainer creates the optimizer, so the optimizer has the checkpoint's groups when its state is loaded; an
allowed change of a learning rate or of AdamW's settings is applied over the loaded optimizer state.

Multi-process. Parameters that appear or unfreeze after the model was wrapped in DDP (the deltas, a LoRA or backbone
unfrozen after warm-up) are not in DDP's reducer; `training_step` averages their gradients over processes at each
optimizer step. Deltas are always excluded from DDP, so a resumed run syncs them the same way. The scores are
broadcast from rank 0 before selection.

Bad files. A `BadSampleError` from the training data (phase 1 or 3, at the batch fetch, or phase 2, in the
estimator's loader) is agreed over ranks, so every rank stops at the same batch; all save one checkpoint of the last
completed step (at phase 2: step T1, marked `estimation_pending`, so that a resumed run estimates again) and raise
naming the file (the agreement and the error: `fishertune.training.bad_files`).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

from transformers import Trainer
from transformers.utils import logging

from ..data.keyed import BadSampleError
from ..outputs import SCORES_NAME
from . import bad_files, checkpoints, estimation, hub_push
from .arguments import FisherTuneTrainingArguments
from .callbacks import EstimationCallback, NonFiniteCallback, TuningScheduleCallback, WarmupPhaseCallback
from .methods import get_method, prepare_model
from .nonfinite import NonFiniteGuard
from .optimizer import SPARSE_KEY, average_gradients, build_optimizer, carry_moments, fast_forward
from .setup import backbone_parameters, is_fishertune
from .state import (
    FisherTuneState,
    check_allowed_names,
    check_compatible,
    describe_changes,
    model_fingerprint,
    read_state,
    write_state,
)

logger = logging.get_logger(__name__)


class FisherTuneTrainer(Trainer):
    """[`~transformers.Trainer`] running FisherTune's Algorithm 1, or a baseline, by `args.method`.

    Pass the plain segmentation model (with `backbone` and `decoder_modules`); the trainer wraps it
    as the method needs (see `fishertune.training.methods.prepare_model`). A FisherTune or other
    PeftModel is accepted as is. The optimizer is always built here (AdamW with Rein's groups), so
    `optimizers` and `optimizer_cls_and_kwargs` are not accepted. `run_settings` (a JSON-able dict, e.g. the
    dataset, split, backbone and head of a recipe run) is saved with each checkpoint and compared on resume like
    the training arguments.
    """

    def __init__(self, model=None, args: FisherTuneTrainingArguments = None, run_settings: Optional[dict] = None,
                 **kwargs):  # fmt: skip
        if not isinstance(args, FisherTuneTrainingArguments):
            raise TypeError("FisherTuneTrainer needs `args=FisherTuneTrainingArguments(...)`.")
        if kwargs.get("optimizers", (None, None)) != (None, None) or kwargs.get("optimizer_cls_and_kwargs"):
            raise ValueError(
                "FisherTuneTrainer builds (and at phase 3 rebuilds) its own optimizer and scheduler; drop `optimizers` "
                "/ `optimizer_cls_and_kwargs` and use backbone_learning_rate, decoder_learning_rate, weight_decay."
            )
        model = prepare_model(model, args)
        super().__init__(model=model, args=args, **kwargs)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise NotImplementedError(
                "FisherTuneTrainer runs on one process or DDP (accelerate launch --multi_gpu); DeepSpeed and FSDP "
                "would need their own optimizer rebuild at phase 3."
            )
        # Segmentation models return a per-batch mean loss. Trainer would otherwise take `**kwargs` in
        # forward as "accepts num_items_in_batch" and multiply the loss by the number of processes.
        self.model_accepts_loss_kwargs = False
        self.sparse = get_method(args.method).is_sparse  # FisherTune: phase 2 selects the entries tuned in phase 3
        if self.sparse and not is_fishertune(self.model):
            raise ValueError(f"method={args.method!r} needs a FisherTune PeftModel.")
        self.fishertune_state = FisherTuneState()  # the callbacks hold it: updated in place, never replaced
        self._fingerprint = model_fingerprint(self.model)
        # What the method tunes in the backbone (sparse deltas are added by name once they exist).
        self._tuned_names = {n for n, p in backbone_parameters(self.model) if p.requires_grad}
        self._ddp_synced = None
        self._late_params = []
        self.run_settings = dict(run_settings or {})
        check_allowed_names(args.allow_changed_settings, self._expected_state())
        self._changed_settings = {}  # allowed differences from the checkpoint resumed
        self._checkpoint_staging = None  # set while a checkpoint is staged
        checkpoints.check_supported(args)
        # fp16's grad scaler skips steps with inf gradients itself; the loss is still checked.
        self.nonfinite = NonFiniteGuard(
            args.nonfinite_policy, args.nonfinite_max_skips, check_grads=self.accelerator.scaler is None
        )
        phase = self.fishertune_state
        for cb in (
            WarmupPhaseCallback(phase),
            EstimationCallback(phase, self.start_tuning),
            TuningScheduleCallback(phase, self.apply_schedule),
            NonFiniteCallback(phase, self.nonfinite),
            hub_push.HubPushCallback(self),
        ):
            self.add_callback(cb)

    # -- the phase state, read through ------------------------------------------------------------
    @property
    def in_tuning(self) -> bool:
        """Phase 3 has started."""
        return self.fishertune_state.in_tuning

    @property
    def scores(self) -> Optional[dict]:
        """Phase 2's scores per targeted layer (None before phase 2, or for a method without one)."""
        return self.fishertune_state.scores

    @property
    def active_fraction(self) -> Optional[float]:
        """The active share p(t) of Eq. 16 set for the current tuning step."""
        return self.fishertune_state.active_fraction

    @property
    def estimation_timing(self):
        """Phase 2's `fishertune.fisher.EstimationTiming` (batch arrivals, passes, scoring) once it ran in this
        process; its totals are logged with the phase-2 entry as estimation_seconds / estimation_seconds_per_batch."""
        return self.fishertune_state.estimation_timing

    # -- phases -----------------------------------------------------------------------------------
    @property
    def phase_lengths(self) -> tuple[int, int, int]:
        """(T1, T2, T3) of the current run (needs the Trainer's `state.max_steps`)."""
        return self.args.phase_lengths(self.state.max_steps)

    def _backbone_params(self):
        return backbone_parameters(self.model)

    def trainable_backbone_names(self) -> list[str]:
        return [n for n, p in self._backbone_params() if p.requires_grad]

    def _apply_phase_trainability(self) -> None:
        for name, p in self._backbone_params():
            p.requires_grad_(self.in_tuning and (name in self._tuned_names or SPARSE_KEY in name))

    def start_tuning(self) -> None:
        """End of phase 1: estimate and select (method "sparse"), unfreeze, rebuild the optimizer."""
        if self.sparse:
            try:  # phase 2: scores, selection, files
                result = estimation.estimate_and_select(
                    self.model, self.args, self.get_train_dataloader, self.train_dataset, self.phase_lengths[1]
                )
            except BadSampleError as err:  # raised on every rank at the same batch (bad_files.AgreedLoader)
                self.model.zero_grad(set_to_none=True)
                self._stop_on_bad_file(err, " in phase 2 (estimation; it runs again when resumed)", pending=True)
            self.fishertune_state.scores, self.fishertune_state.estimation_timing = result.scores, result.timing
            # Logging resets the Trainer's should_log flag, which the step's own loss log still needs.
            should_log = self.control.should_log
            self.log(result.log_entry())
            self.control.should_log = should_log
        self.fishertune_state.in_tuning = True
        self._rebuild_optimizer()
        self.apply_schedule(self.state.global_step)
        logger.info(f"FisherTune phase 3: tuning from step {self.state.global_step} to {self.state.max_steps}.")

    def apply_schedule(self, global_step: int) -> None:
        """Eq. 16 for tuning step t = global_step - T1 of T3 (p reaches delta_max at the last step)."""
        if not self.sparse:
            return
        t1, _, t3 = self.phase_lengths
        self.fishertune_state.active_fraction = self.model.set_schedule_step(global_step - t1, max(t3 - 1, 0))

    # -- optimizer and scheduler ------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        self._apply_phase_trainability()
        model = self.model
        if self._ddp_synced is None:  # first build: accelerate wraps the model in DDP right after this
            sparse = [n for n, _ in model.named_parameters() if SPARSE_KEY in n]
            if sparse:
                model._ddp_params_and_buffers_to_ignore = sparse
            self._ddp_synced = {id(p) for n, p in model.named_parameters() if p.requires_grad and SPARSE_KEY not in n}
        self.optimizer = build_optimizer(model, {id(p) for _, p in self._backbone_params()}, self.args)
        self._late_params = [
            p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in self._ddp_synced
        ]
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        fresh = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        step = self.state.global_step if self.state is not None else 0
        if fresh and step > 0:  # a scheduler rebuilt mid-run continues the run's single LR curve at the current step
            fast_forward(scheduler, step)
        return scheduler

    def _rebuild_optimizer(self) -> None:
        old = self.optimizer
        self.optimizer, self.lr_scheduler = None, None
        new = self.create_optimizer()
        carry_moments(old, new)  # the decoder keeps its AdamW moments across the phase change
        if old in self.accelerator._optimizers:
            self.accelerator._optimizers.remove(old)
        self.optimizer = self.accelerator.prepare_optimizer(new)
        self.create_scheduler(num_training_steps=self.state.max_steps)
        self.callback_handler.optimizer, self.callback_handler.lr_scheduler = self.optimizer, self.lr_scheduler

    def _run_epoch(self, model, epoch, *args, **kwargs):
        # Keyed augmentations (fishertune.data.KeyedTrainingDataset) need the epoch; accelerate forwards it to the
        # sampler only, and not at all through the loader that skips a resumed epoch's first batches.
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)
        return super()._run_epoch(model, epoch, *args, **kwargs)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        fetch = functools.partial(super().get_batch_samples, epoch_iterator, num_batches, device)
        batches, err = bad_files.fetch_agreed(fetch, self.args.world_size)
        if err is not None:  # fetched before the step: the model is at the end of the last step, a consistent point
            self._stop_on_bad_file(err)
        return batches

    def _stop_on_bad_file(self, err: BadSampleError, during: str = "", pending: bool = False):
        """Save a checkpoint of the last completed step (even with save_strategy='no': the run ends here, and its
        steps are work a rerun would repeat; `pending`: phase 2 runs again on resume), wait for every rank's files,
        then raise naming the file."""
        step = self.state.global_step
        if step:
            self.fishertune_state.estimation_pending = pending
            try:
                self._save_checkpoint(self.model_wrapped, trial=None)
            finally:
                self.fishertune_state.estimation_pending = False
            bad_files.wait_for_all(self.args.world_size)
        raise bad_files.stopped(err, step, self.args.output_dir, during) from err

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._late_params and self.args.world_size > 1 and self.accelerator.sync_gradients:
            average_gradients(self._late_params)
        self.nonfinite.after_backward(self.model, loss, self.state.global_step + 1, self.current_phase)
        return loss

    @property
    def bad_file_skips(self) -> int:
        """Unreadable training samples replaced so far (bad_file_policy='skip'), over the loader's workers and the
        runs this one resumed (per process; logged and saved as `bad_file_skips`)."""
        return self.fishertune_state.bad_file_skips_resumed + int(getattr(self.train_dataset, "skip_count", 0))

    @property
    def current_phase(self) -> int:
        """1 (warm-up) or 3 (tuning): the phase of the step being taken."""
        return self.fishertune_state.phase

    # -- logging ----------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time=None) -> None:
        # A copy: `evaluate()` returns the dict it logs, which must hold its metrics only.
        logs = dict(logs)
        # Describes the last completed step: step T1 itself was still a warm-up step.
        if self.nonfinite.skipped:
            logs["nonfinite_skipped_steps"] = float(self.nonfinite.skipped)
        if self.bad_file_skips:
            logs["bad_file_skips"] = float(self.bad_file_skips)
        if "phase" not in logs and self.state.max_steps:
            warmup = self.state.global_step <= self.phase_lengths[0] and self.phase_lengths[0] > 0
            logs["phase"] = 1.0 if warmup else 3.0
            if warmup:
                logs["trainable_backbone_entries"] = 0.0
            elif self.sparse:
                logs["active_fraction"] = float(self.active_fraction)
                logs["trainable_backbone_entries"] = float(self.model.num_active())
            else:
                logs["trainable_backbone_entries"] = float(
                    sum(p.numel() for _, p in self._backbone_params() if p.requires_grad)
                )
        super().log(logs, start_time)

    # -- Hub (fishertune.training.hub_push) -------------------------------------------------------
    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """Upload the model, its image processor, a model card and (adapters) the base to `args.hub_model_id`
        (the base to `<hub_model_id>-base`), so that the repo id alone loads it; nothing else of `output_dir`.
        Runs to completion (`blocking` is accepted for transformers' signature). Returns the `CommitInfo`."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        return hub_push.push_to_hub(
            self,
            commit_message or "End of training",
            token=token,
            revision=revision,
            private=private,
            model_name=kwargs.get("model_name"),
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # transformers pushes from inside its checkpoint write, before the FisherTune state is in it (and with
        # every file of output_dir): HubPushCallback.on_save pushes the complete checkpoint instead.
        return

    # -- checkpoints ------------------------------------------------------------------------------
    def _expected_state(self) -> dict:
        return {
            "model_fingerprint": self._fingerprint,
            "options": self.args.fishertune_options(),
            "settings": {**self.args.resume_settings(), **self.run_settings},
        }

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if self.args.should_save:
            checkpoints.remove_stale(self.args.output_dir)
        if resume_from_checkpoint is True:  # transformers would take the newest folder, complete or not
            resume_from_checkpoint = checkpoints.last_checkpoint(self.args.output_dir)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _get_output_dir(self, trial) -> str:
        return self._checkpoint_staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        def save(staging: str) -> None:
            self._checkpoint_staging = staging
            try:
                super(FisherTuneTrainer, self)._save_checkpoint(model, trial)
            finally:
                self._checkpoint_staging = None

        checkpoints.save_staged(
            self.args, self.state, self._get_output_dir(trial=trial), save, self._write_fishertune_state
        )

    def _write_fishertune_state(self, ckpt: str) -> None:
        ft = self.fishertune_state  # the counts and counters as of this save
        for key, value in self._expected_state().items():
            setattr(ft, key, value)
        ft.global_step, ft.phase_lengths = self.state.global_step, list(self.phase_lengths)
        ft.num_allocated = self.model.num_allocated() if self.sparse else None
        ft.num_active = self.model.num_active() if self.sparse else None
        ft.nonfinite_skipped_steps, ft.bad_file_skips = self.nonfinite.skipped, self.bad_file_skips
        scores_file = os.path.join(self.args.output_dir, SCORES_NAME) if ft.selected else None
        write_state(ckpt, ft.to_dict(), scores_file)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        saved = read_state(resume_from_checkpoint)
        self._changed_settings = check_compatible(
            saved, self._expected_state(), resume_from_checkpoint, self.args.allow_changed_settings
        )
        if self._changed_settings:
            logger.warning(
                f"Resuming from {resume_from_checkpoint} with changed settings (allow_changed_settings): "
                f"{describe_changes(self._changed_settings)}; the run uses the new values."
            )
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        ft = self.fishertune_state
        ft.restore(saved)
        self.nonfinite.skipped = ft.nonfinite_skipped_steps  # the bound holds for the whole run
        if ft.estimation_pending:  # EstimationCallback.on_train_begin runs phase 2 at this step (T1)
            logger.info(f"{resume_from_checkpoint} was saved before phase 2 finished: the estimation runs again.")
            ft.estimation_pending = False
        if saved.get("selected"):
            from .. import fisher

            ft.scores = fisher.load_scores(os.path.join(resume_from_checkpoint, SCORES_NAME))
            if self.model.num_allocated() != saved["num_allocated"]:
                raise ValueError(
                    f"{resume_from_checkpoint} selected {saved['num_allocated']} entries but "
                    f"{self.model.num_allocated()} were restored: its adapter weights do not match its state."
                )
        self._apply_phase_trainability()
        self.optimizer, self.lr_scheduler = None, None  # built by the Trainer for the restored phase

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        # After an allowed change of settings, this run's learning rates and AdamW settings go over the loaded ones.
        fresh = checkpoints.optimizer_settings(self.optimizer) if checkpoint and self._changed_settings else []
        super()._load_optimizer_and_scheduler(checkpoint)
        checkpoints.reapply_settings(self.optimizer, self.lr_scheduler, fresh)
