"""`fishertune.fisher.EstimationTiming`: the estimator records when each batch arrived and how long the passes and
the scoring took; `FisherTuneTrainer` keeps phase 2's as `estimation_timing` and logs its totals."""

from __future__ import annotations

import time

import pytest
import torch

from fishertune import fisher

from ._tiny import TinySegDataset, make_trainer, tiny_model

DELAY = 0.05  # seconds the slow loader waits before each batch


class SlowLoader:
    """A DataLoader that takes DELAY seconds to produce each batch (what arrivals must show)."""

    def __init__(self, n: int = 12, batch_size: int = 4):
        self.loader = torch.utils.data.DataLoader(TinySegDataset(n=n), batch_size=batch_size)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            time.sleep(DELAY)
            yield batch


def _setup(estimator: str, num_batches: int = 5):
    model = tiny_model()
    weights = {n: p for n, p in model.named_parameters() if n.endswith("q_proj.weight")}
    return model, weights, fisher.EstimationConfig(criterion="dr_fim", estimator=estimator, num_batches=num_batches)


@pytest.mark.parametrize("estimator", ["diagonal", "variational"])
def test_estimate_scores_records_arrivals_passes_and_scoring(estimator):
    model, weights, config = _setup(estimator)
    untimed = fisher.estimate_scores(model, SlowLoader(), weights, config, disable_tqdm=True)
    model, weights, config = _setup(estimator)  # a fresh model: a second estimation on one model differs
    timing = fisher.EstimationTiming()
    scores = fisher.estimate_scores(model, SlowLoader(), weights, config, disable_tqdm=True, timing=timing)
    assert all(torch.equal(scores[n], untimed[n]) for n in scores)  # recording changes nothing
    arrivals = timing.batch_arrivals_s
    assert timing.num_batches == 3  # the loader has 3 of the 5 asked for
    assert arrivals[0] >= DELAY and all(b - a >= DELAY for a, b in zip(arrivals, arrivals[1:]))
    assert timing.passes_s > arrivals[-1] and timing.scoring_s > 0
    assert timing.total_s == pytest.approx(timing.passes_s + timing.scoring_s)
    assert timing.seconds_per_batch == pytest.approx(timing.passes_s / 3)
    assert timing.to_dict() == {"batch_arrivals_s": arrivals, "passes_s": timing.passes_s,
                                "scoring_s": timing.scoring_s}  # fmt: skip


def test_statistics_and_scoring_separately_and_a_second_run_starts_afresh():
    model, weights, config = _setup("diagonal", num_batches=2)
    timing = fisher.EstimationTiming()
    stats = fisher.estimate_statistics(model, SlowLoader(), weights, config, disable_tqdm=True, timing=timing)
    assert timing.num_batches == 2 and timing.passes_s is not None and timing.scoring_s is None
    fisher.scores_from_stats(stats, config, timing=timing)
    assert timing.scoring_s is not None
    fisher.estimate_statistics(model, SlowLoader(n=4), weights, config, disable_tqdm=True, timing=timing)
    assert timing.num_batches == 1 and timing.scoring_s is None  # the record of the last estimation only


def test_a_data_free_criterion_leaves_it_empty():
    model, weights, _ = _setup("diagonal")
    timing = fisher.EstimationTiming()
    fisher.estimate_scores(model, SlowLoader(), weights, fisher.EstimationConfig(criterion="random"), timing=timing)
    assert timing.num_batches == 0 and timing.total_s is None and timing.seconds_per_batch is None


@pytest.mark.parametrize("save_statistics", [False, True])
def test_trainer_logs_the_estimation_seconds(tmp_path, save_statistics):
    trainer = make_trainer(
        tmp_path,
        criterion="dr_fim",
        estimator="diagonal",
        fisher_type="true",
        save_estimation_statistics=save_statistics,
    )
    assert trainer.estimation_timing is None
    trainer.train()
    timing = trainer.estimation_timing
    assert timing.num_batches == 2 and timing.passes_s > 0 and timing.scoring_s > 0  # T2 = 2
    (entry,) = [h for h in trainer.state.log_history if h.get("phase") == 2.0 and "estimation_batches" in h]
    assert entry["estimation_seconds"] == pytest.approx(timing.total_s)
    assert entry["estimation_seconds_per_batch"] == pytest.approx(timing.passes_s / 2)


def test_trainer_logs_no_seconds_for_random(tmp_path):
    trainer = make_trainer(tmp_path, criterion="random")
    trainer.train()
    (entry,) = [h for h in trainer.state.log_history if h.get("phase") == 2.0 and "estimation_batches" in h]
    assert "estimation_seconds" not in entry and trainer.estimation_timing.num_batches == 0
