"""ChildTune-D as a recipe (`ablation_childtune_d.yaml`): the empirical diagonal Fisher picks one mask before tuning
at the paper's budget, and it stays fixed (no Eq. 16 ramp): the active count is the same at every tuning step."""

import os

from fishertune.experiment import parse_experiment_args

from ._tiny import make_trainer

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "configs")


def test_childtune_d_recipe_trains_one_fixed_mask(tmp_path):
    _, targs, _ = parse_experiment_args(
        ["--config", "ablation_childtune_d", "--output_dir", str(tmp_path)], configs_dir=CONFIGS
    )
    assert (targs.method, targs.criterion, targs.estimator, targs.fisher_type) == (
        "sparse",
        "fim",
        "diagonal",
        "empirical",
    )
    assert targs.delta_max_count == targs.delta_min_count == 15_210_000 and targs.delta_max is None
    # The same options on the tiny segmenter, the budget scaled to it (its 5%: 282 of 5632 entries).
    options = {k: getattr(targs, k) for k in ("criterion", "estimator", "fisher_type")}
    trainer = make_trainer(
        tmp_path / "run", delta_min=None, delta_max=None, delta_max_count=282, delta_min_count=282, **options
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and h.get("phase") == 3.0]
    assert len(logs) == 5 and {h["trainable_backbone_entries"] for h in logs} == {282.0}
    assert trainer.model.num_allocated() == trainer.model.num_active() == 282
    assert trainer.model.num_targeted() == 5632


def test_weight_decay_on_the_weight_trains_through_the_trainer(tmp_path):
    trainer = make_trainer(tmp_path, sparse_weight_decay="weight", weight_decay=0.5)
    trainer.train()
    assert trainer.optimizer.optimizer.sparse_weight_decay == "weight"
