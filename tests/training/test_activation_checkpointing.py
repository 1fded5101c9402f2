"""`activation_checkpointing=True` changes memory, not results: all three phases, every method family."""

import pytest
import torch

from ._tiny import ensure_fisher, make_trainer, model_state


@pytest.mark.parametrize("method", ["sparse", "lora", "vqt"])
def test_checkpointed_run_ends_where_the_plain_run_does(tmp_path, method):
    ensure_fisher()
    extra = dict(criterion="dr_fim", estimator="variational", fisher_type="true") if method == "sparse" else {}
    plain = make_trainer(tmp_path / "plain", method=method, **extra)
    plain.train()
    ckpt = make_trainer(tmp_path / "ckpt", method=method, activation_checkpointing=True, **extra)
    ckpt.train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt.model.modules())
    want, got = model_state(plain.model), model_state(ckpt.model)
    assert set(got) == set(want)
    moved = [k for k in want if "fishertune_values" in k or "lora_" in k or "vqt_queries" in k]
    assert moved, "nothing of the method in the state dict"
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=k)


def test_reentrant_checkpointing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="use_reentrant=True leaves the sparse deltas"):
        make_trainer(tmp_path, activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": True})
