"""Phase 2's memory is stated before the passes and refused, naming micro_batch_size, when it does not fit."""

import logging

import pytest
from fisher_helpers import image_batches, tiny_dinov2

from fishertune.fisher import EstimationConfig, estimate_scores, memory


def _setup():
    model = tiny_dinov2()
    return model, {n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "fc2"))}


def _run(caplog, **kw):
    model, weights = _setup()
    cfg = EstimationConfig(criterion="dr_fim", num_batches=1, **kw)
    with caplog.at_level(logging.INFO, logger="fishertune.fisher.memory"):
        return estimate_scores(model, image_batches(1, b=4), weights, cfg, disable_tqdm=True)


def test_estimate_is_logged_and_printed_before_the_passes(caplog, capsys):
    model, weights = _setup()
    cfg = EstimationConfig(criterion="dr_fim", num_batches=1, micro_batch_size=2)
    with caplog.at_level(logging.INFO, logger="fishertune.fisher.memory"):
        estimate_scores(model, image_batches(1, b=4), weights, cfg, disable_tqdm=False)
    printed = capsys.readouterr()
    assert "phase 2 needs about" in printed.out + printed.err  # above the progress bar, as a user sees it
    (line,) = [r.getMessage() for r in caplog.records if "phase 2 needs about" in r.getMessage()]
    entries = sum(w.numel() for w in _setup()[1].values())
    assert f"24 B x {entries:,} targeted entries" in line  # variational with DSU: 2 fits and an fp64 sum
    assert "2 samples per pass" in line and "available on cpu" in line


def test_refused_when_it_does_not_fit_naming_the_micro_batch(caplog, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    with pytest.raises(MemoryError, match=r"Lower `micro_batch_size` \(now None; at 1 phase 2 needs about"):
        _run(caplog)
    with pytest.raises(MemoryError, match="`micro_batch_size` is already 1"):
        _run(caplog, micro_batch_size=1, accumulator_dtype="float32")
    caplog.clear()
    assert _run(caplog, memory_check="warn")  # runs, and says why it might not
    assert any(r.levelno == logging.WARNING and "phase 2 needs about" in r.getMessage() for r in caplog.records)


def test_activations_scale_with_the_micro_batch_and_entries_with_the_dtype():
    model, weights = _setup()
    batch = image_batches(1, b=4)[0]
    est = {
        mb: memory.estimate_phase2_bytes(
            model, weights, EstimationConfig(micro_batch_size=mb), batch, memory.default_log_prob_fn, True
        )
        for mb in (None, 1, 3)
    }
    assert est[None].samples_per_pass == 4 and est[1].samples_per_pass == 1 and est[3].samples_per_pass == 3
    assert est[None].activations_per_sample == est[1].activations_per_sample > 0
    assert est[None].bytes_per_entry == 24  # two precision fits and a batch's fp64 sum
    f32 = EstimationConfig(accumulator_dtype="float32", estimator="diagonal")
    assert memory.pass_bytes_per_entry(f32, True) == 8 and memory.pass_bytes_per_entry(f32, False) == 4
