"""fishertune.outputs: one spelling per written file, agreeing with the libraries that read them."""

from __future__ import annotations

import transformers.trainer

from fishertune import outputs


def test_trainer_state_name_is_transformers_own():
    assert outputs.TRAINER_STATE_NAME == transformers.trainer.TRAINER_STATE_NAME


def test_every_name_is_distinct():
    names = {k: v for k, v in vars(outputs).items() if k.isupper() and isinstance(v, str)}
    assert len(set(names.values())) == len(names), names
