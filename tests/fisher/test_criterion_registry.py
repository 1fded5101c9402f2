"""The criteria registry: built-in entries, validation, and a user-registered criterion end to end through
`FisherTuneTrainer` (arguments, CLI, estimation, selection) with no other edit."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import fishertune.fisher as fisher
from fishertune.fisher import Criterion, EstimationConfig, get_criterion, register_criterion, unregister_criterion
from fishertune.fisher.registry import shift_statistics

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the tiny trainer
from training._tiny import make_trainer  # noqa: E402

BUILTINS = {"random": (False, False), "random_q": (False, False), "random_k": (False, False),
            "random_v": (False, False), "magnitude": (False, False), "fim": (True, False),
            "delta_fim": (True, True), "dr_fim": (True, True)}  # fmt: skip
#: The registered names at import, before a test registers its own.
REGISTERED_AT_IMPORT = fisher.criterion_names()


def test_builtin_entries_say_what_they_need():
    assert set(BUILTINS) == set(REGISTERED_AT_IMPORT)  # a new built-in gets its line in BUILTINS
    for name, (needs_data, needs_dsu) in BUILTINS.items():
        c = get_criterion(name)
        assert (c.needs_data, c.needs_dsu) == (needs_data, needs_dsu), name
        assert c.help


def test_unknown_and_malformed_criteria_say_how_to_fix():
    with pytest.raises(ValueError, match="register_criterion"):
        EstimationConfig(criterion="dr_fimm")
    with pytest.raises(ValueError, match="registered already"):
        register_criterion(get_criterion("fim"))
    with pytest.raises(ValueError, match="from_stats"):
        Criterion("x", "needs data but no score", needs_data=True)
    with pytest.raises(ValueError, match="needs_data=True"):
        Criterion("x", "DSU without data", needs_data=False, needs_dsu=True, scores=lambda w, c: {})


def _dr_fim_norm(stats, config):
    """A normalized DRF: F / mean(F) + w * dF / mean(dF) (Eq. 7 with each term in units of its own mean)."""
    delta, weight = shift_statistics(stats, config)
    mf, md = fisher.criteria.mean_value(stats.fisher), fisher.criteria.mean_value(delta)
    return {n: stats.fisher[n] / mf + weight * delta[n] / md for n in stats.fisher}


@pytest.fixture
def dr_fim_norm():
    register_criterion(
        Criterion("dr_fim_norm", "F/mean(F) + w dF/mean(dF).", needs_data=True, needs_dsu=True, from_stats=_dr_fim_norm)
    )
    yield "dr_fim_norm"
    unregister_criterion("dr_fim_norm")
    assert "dr_fim_norm" not in fisher.criterion_names()


def test_registered_criterion_runs_through_the_trainer(tmp_path, dr_fim_norm):
    from fishertune.experiment.config_io import parse_args
    from fishertune.training import FisherTuneTrainingArguments

    # a flag and a YAML value (argparse choices are the live registry)
    (targs, _) = parse_args(
        (FisherTuneTrainingArguments,), ["--output_dir", str(tmp_path), "--use_cpu", "True", "--criterion", dr_fim_norm]
    )
    assert targs.criterion == dr_fim_norm and targs.method == "sparse"

    trainer = make_trainer(
        tmp_path,
        criterion=dr_fim_norm,
        estimator="diagonal",
        fisher_type="true",
        save_estimation_statistics=True,
        save_sensitivity_plot=False,
    )
    trainer.train()
    assert trainer.args.estimation_config(2).criterion == dr_fim_norm
    # the statistics carry F' (needs_dsu: DSU ran) and the scores are this criterion's
    stats = fisher.load_statistics(str(tmp_path / "fishertune_statistics.safetensors"))
    assert stats.fisher_shift is not None
    config = trainer.args.estimation_config(2)
    want = _dr_fim_norm(stats, config)
    assert set(trainer.scores) == set(want)
    for n in want:
        torch.testing.assert_close(trainer.scores[n], want[n].float(), rtol=1e-5, atol=0, msg=n)
    # ... and differ from the built-in DR-FIM's ranking of the same statistics (rank exchange)
    builtin = fisher.scores_from_stats(stats, EstimationConfig(criterion="dr_fim", estimator="diagonal"))
    assert any(not torch.equal(builtin[n].argsort(), want[n].argsort()) for n in want)
    assert trainer.model.num_allocated() == round(0.1 * trainer.model.num_targeted())


def test_needs_dsu_decides_whether_the_perturbed_pass_runs(tmp_path):
    """With needs_dsu=False the estimator measures no F': a DSU criterion cannot be scored from it."""
    from training._tiny import TinySegDataset, tiny_model

    model = tiny_model()
    loader = torch.utils.data.DataLoader(TinySegDataset(8), batch_size=4)
    weights = {n: p for n, p in model.named_parameters() if n.endswith("q_proj.weight")}
    assert weights
    for name, dsu in (("fim", False), ("dr_fim", True)):
        config = EstimationConfig(criterion=name, estimator="diagonal", num_batches=2)
        stats = fisher.estimate_statistics(model, loader, weights, config, disable_tqdm=True)
        assert (stats.fisher_shift is not None) is dsu, name
