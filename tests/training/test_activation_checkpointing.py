"""`activation_checkpointing=True` changes memory, not results: all three phases, every method family."""

import pytest
import torch

from ._tiny import ensure_fisher, make_trainer, model_state


@pytest.mark.parametrize(
    "method,reentrant", [("sparse", False), ("lora", False), ("vqt", False), ("sparse", True), ("lora", True)]
)
def test_checkpointed_run_ends_where_the_plain_run_does(tmp_path, method, reentrant):
    ensure_fisher()
    extra = dict(criterion="dr_fim", estimator="variational", fisher_type="true") if method == "sparse" else {}
    plain = make_trainer(tmp_path / "plain", method=method, **extra)
    plain.train()
    # A reentrant checkpoint needs the backbone's input to require grad (the frozen patch embedding's does not):
    # the trainer sets it, as transformers does for its PEFT models, instead of letting the deltas get no gradient.
    kwargs = {"activation_checkpointing_kwargs": {"use_reentrant": True}} if reentrant else {}
    ckpt = make_trainer(tmp_path / "ckpt", method=method, activation_checkpointing=True, **kwargs, **extra)
    ckpt.train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in ckpt.model.modules())
    want, got = model_state(plain.model), model_state(ckpt.model)
    assert set(got) == set(want)
    moved = [k for k in want if "fishertune_values" in k or "lora_" in k or "vqt_queries" in k]
    assert moved, "nothing of the method in the state dict"
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=k)
