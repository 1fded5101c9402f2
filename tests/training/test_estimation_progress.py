"""Phase 2 shows a progress bar of its estimation batches: on the main process, off with `disable_tqdm`."""

from __future__ import annotations

import pytest
import torch.distributed

from fishertune import fisher
from fishertune.fisher import estimate as estimate_module

from ._tiny import TinySegDataset, make_trainer, tiny_model


@pytest.mark.parametrize("disable_tqdm", [False, True])
def test_trainer_shows_the_estimation_bar_unless_disable_tqdm(tmp_path, capfd, disable_tqdm):
    trainer = make_trainer(
        tmp_path, criterion="dr_fim", estimator="diagonal", fisher_type="true", disable_tqdm=disable_tqdm
    )
    trainer.train()
    err = capfd.readouterr().err
    if disable_tqdm:
        assert "Estimating" not in err and "%|" not in err  # neither the trainer's bar nor the estimation's
    else:
        assert "Estimating dr_fim (diagonal):   0%| " in err and "0/2 [" in err  # total: T2 batches


@pytest.mark.parametrize("estimator", ["diagonal", "variational"])
def test_estimate_scores_bar_counts_batches(capfd, estimator):
    import torch

    model = tiny_model()
    loader = torch.utils.data.DataLoader(TinySegDataset(n=12), batch_size=4)  # 3 batches, T2 = 5: the bar says 3
    weights = {n: p for n, p in model.named_parameters() if n.endswith("q_proj.weight")}
    config = fisher.EstimationConfig(criterion="dr_fim", estimator=estimator, num_batches=5)
    fisher.estimate_scores(model, loader, weights, config)  # default: shown on the (only, main) process
    err = capfd.readouterr().err
    assert f"Estimating dr_fim ({estimator}):   0%| " in err and "0/3 [" in err
    fisher.estimate_scores(model, loader, weights, config, disable_tqdm=True)
    assert "Estimating" not in capfd.readouterr().err


def test_the_bar_shows_on_the_main_process_only(monkeypatch):
    assert estimate_module._hide_progress(None) is False and estimate_module._hide_progress(True) is True
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    for rank, hidden in ((0, False), (1, True)):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None, rank=rank: rank)
        assert estimate_module._hide_progress(None) is hidden
        assert estimate_module._hide_progress(False) is hidden  # disable_tqdm=False never shows a second bar
        assert estimate_module._hide_progress(True) is True
