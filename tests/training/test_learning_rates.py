"""backbone_learning_rate / decoder_learning_rate: 0 means 0 (not learning_rate), negative is refused."""

import pytest
import torch

from fishertune.training import FisherTuneTrainingArguments

from ._tiny import make_trainer


def _decoder(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "decode_head" in n}


@pytest.mark.parametrize("name", ["backbone_learning_rate", "decoder_learning_rate"])
@pytest.mark.parametrize("value", [-1e-4, float("nan")])
def test_negative_learning_rate_is_refused(tmp_path, name, value):
    with pytest.raises(ValueError, match=f"{name} must be >= 0.*leave it unset"):
        FisherTuneTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **{name: value})


def test_zero_backbone_learning_rate_keeps_the_deltas_at_zero(tmp_path):
    trainer = make_trainer(tmp_path, backbone_learning_rate=0.0, max_steps=5)
    before = _decoder(trainer.model)
    trainer.train()
    values = [p for n, p in trainer.model.named_parameters() if "fishertune_values" in n]
    assert values and all(v.numel() and not v.any() for v in values)  # selected, trained at lr 0
    assert any(not torch.equal(p, before[n]) for n, p in _decoder(trainer.model).items())  # the decoder did train
    groups = {g["group_name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert all(lr == 0 for k, lr in groups.items() if k.startswith("backbone")), groups


def test_zero_decoder_learning_rate_keeps_the_decoder(tmp_path):
    trainer = make_trainer(tmp_path, decoder_learning_rate=0.0, max_steps=5)
    before = _decoder(trainer.model)
    trainer.train()
    after = _decoder(trainer.model)
    # running statistics of a norm layer are buffers, not parameters: only parameters must stay put
    assert all(torch.equal(after[n], before[n]) for n in before)
    values = [p for n, p in trainer.model.named_parameters() if "fishertune_values" in n]
    assert any(v.any() for v in values)  # the deltas did train
