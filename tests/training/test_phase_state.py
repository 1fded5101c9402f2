"""`FisherTuneState`, the phase state whose dict is a checkpoint's `fishertune_trainer_state.json`: the payload of a
checkpoint written before the object existed reads back to the same JSON, key for key."""

from __future__ import annotations

import torch

from fishertune.training.state import FisherTuneState

#: A payload as `FisherTuneTrainer` wrote it when its phase state was loose attributes (phase 3, selected).
OLD_PAYLOAD = {
    "model_fingerprint": "ab12", "options": {"method": "sparse", "delta_max": 0.1}, "settings": {"seed": 0},
    "global_step": 5, "in_tuning": True, "phase": 3, "phase_lengths": [3, 2, 5], "active_fraction": 0.04,
    "selected": True, "num_allocated": 40, "num_active": 16, "nonfinite_skipped_steps": 1,
    "estimation_pending": False, "bad_file_skips": 2,
}  # fmt: skip


def test_an_old_checkpoint_payload_round_trips_key_for_key():
    state = FisherTuneState.from_dict(OLD_PAYLOAD)
    assert state.in_tuning and state.phase == 3 and state.active_fraction == 0.04
    assert state.bad_file_skips_resumed == 2 and state.nonfinite_skipped_steps == 1
    state.scores = {"layer": torch.zeros(2)}  # the trainer loads them from the checkpoint when `selected`
    assert state.to_dict() == OLD_PAYLOAD


def test_the_runtime_fields_stay_out_of_the_payload():
    state = FisherTuneState(scores=None, estimation_timing=object(), bad_file_skips_resumed=3)
    payload = state.to_dict()
    assert not {"scores", "estimation_timing", "bad_file_skips_resumed"} & set(payload)
    assert payload["selected"] is False and payload["phase"] == 1


def test_restore_updates_the_object_the_callbacks_hold():
    state = FisherTuneState(estimation_timing=object())
    held = state
    state.restore({**OLD_PAYLOAD, "in_tuning": False, "phase": 1, "estimation_pending": True})
    assert held.estimation_pending and not held.in_tuning and held.global_step == 5
    assert held.estimation_timing is None and held.scores is None


def test_the_phase_callbacks_need_no_trainer():
    """The callbacks decide from (args, state) and the phase state, and call the function they were given."""
    from types import SimpleNamespace

    from fishertune.training.callbacks import EstimationCallback, TuningScheduleCallback

    phase, started, scheduled = FisherTuneState(), [], []
    args = SimpleNamespace(phase_lengths=lambda max_steps: (3, 2, max_steps - 3))
    estimation = EstimationCallback(phase, lambda: started.append(True))
    schedule = TuningScheduleCallback(phase, scheduled.append)
    for step in (1, 2, 3):
        estimation.on_step_end(args, SimpleNamespace(global_step=step, max_steps=8), None)
        schedule.on_step_begin(args, SimpleNamespace(global_step=step, max_steps=8), None)
    assert started == [True] and scheduled == []  # at the end of step T1 = 3; the schedule waits for in_tuning
    phase.in_tuning = True
    estimation.on_step_end(args, SimpleNamespace(global_step=4, max_steps=8), None)
    schedule.on_step_begin(args, SimpleNamespace(global_step=4, max_steps=8), None)
    assert started == [True] and scheduled == [4]
