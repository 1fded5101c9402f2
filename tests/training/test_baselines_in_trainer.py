"""Rein, VPT-deep, AdaptFormer and VQT as trainer methods: backbone bitwise frozen, method + decoder trained."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from fishertune.baselines import api as baselines_api

from ._tiny import make_trainer, model_state, tiny_model

#: baseline -> the prefix of its parameter names (a baseline added to fishertune.baselines is tested here too).
METHODS = {name: f"{name}_" for name in baselines_api.METHODS}
#: Method parameters that hang in the light head rather than the backbone (VQT's link).
HEAD_LINKS = {"vqt": "decode_head.vqt_classifier."}


def _train(tmp_path, criterion, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Rein: "no Mask2Former queries found" on the light head
        trainer = make_trainer(tmp_path, method=criterion, max_steps=3, warmup_phase_steps=None, **overrides)
        before = model_state(trainer.model)
        trainer.train()
    return trainer, before


def _is_method(key: str, prefix: str) -> bool:
    return any(part.startswith(prefix) for part in key.split("."))


@pytest.mark.parametrize("criterion", sorted(METHODS))
def test_method_trains_its_params_and_the_decoder_only(tmp_path, criterion):
    prefix = METHODS[criterion]
    trainer, before = _train(tmp_path, criterion)
    assert trainer.args.phase_lengths(3) == (0, 0, 3)  # no warm-up, no estimation
    after = model_state(trainer.model)
    assert set(after) == set(before)
    base = [k for k in before if k.startswith("backbone.") and not _is_method(k, prefix)]
    method = [k for k in before if _is_method(k, prefix)]
    decoder = [k for k in before if k.startswith("decode_head.") and before[k].is_floating_point()]
    assert base and method and decoder
    for k in base:
        assert torch.equal(before[k], after[k]), f"backbone weight {k} changed"
    assert any(not torch.equal(before[k], after[k]) for k in method), "no method parameter changed"
    assert all(k.startswith("backbone.") or k.startswith(HEAD_LINKS.get(criterion, "backbone.")) for k in method)
    assert any(not torch.equal(before[k], after[k]) for k in decoder if "running" not in k), "decoder unchanged"
    # optimizer: the method's params in the backbone groups at the backbone lr, nothing else of the backbone
    groups = {g["group_name"]: g for g in trainer.optimizer.param_groups}
    ids = {id(p): n for n, p in trainer.model.named_parameters()}
    for name, group in groups.items():
        names = [ids[id(p)] for p in group["params"]]
        if name.startswith("backbone"):
            assert all(_is_method(n, prefix) for n in names), names
            assert group.get("initial_lr", group["lr"]) == trainer.args.learning_rate
        else:
            assert all(n.startswith("decode_head.") for n in names), names
    if criterion in ("rein", "vpt"):  # learned tokens / prompts: no weight decay (Rein's recipe)
        no_decay = {ids[id(p)] for p in groups["backbone_no_decay"]["params"]}
        tokens = [n for n in ids.values() if "learnable_tokens" in n or "prompt_embeddings" in n]
        assert tokens and set(tokens) <= no_decay and groups["backbone_no_decay"]["weight_decay"] == 0.0


def test_vqt_trains_its_queries_and_head_link(tmp_path):
    # The head reads the queries only through the zero-initialised link: after step 1 moves the link, the
    # loss reaches the queries. No weight decay on them (Rein's rule for learned tokens), so a change is a step.
    trainer, before = _train(tmp_path, "vqt")
    after = model_state(trainer.model)
    for key in ("backbone.vqt_queries.query_embeddings", "decode_head.vqt_classifier.classifier.weight"):
        assert not torch.equal(before[key], after[key]), f"{key} did not train"
    assert not before["decode_head.vqt_classifier.classifier.weight"].any()
    frozen = [k for k in before if k.startswith("backbone.") and "vqt_" not in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    groups = {g["group_name"]: g for g in trainer.optimizer.param_groups}
    queries = trainer.model.backbone.vqt_queries.query_embeddings
    assert any(p is queries for p in groups["backbone_no_decay"]["params"])


@pytest.mark.parametrize("criterion", ["vpt", "vqt"])
def test_saved_method_reloads(tmp_path, criterion):
    from fishertune.experiment.run import save_model
    from fishertune.outputs import BASELINE_DIR

    trainer, _ = _train(tmp_path / "train", criterion)
    out = str(tmp_path / "out")
    save_model(trainer.model, criterion, out)
    assert os.path.isfile(os.path.join(out, "config.json"))
    fresh = tiny_model()
    baselines_api.load_method_state(fresh, os.path.join(out, BASELINE_DIR))
    saved = baselines_api.method_state_dict(trainer.model)
    loaded = baselines_api.method_state_dict(fresh)
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_preinstalled_method_is_kept_and_mismatch_fails(tmp_path):
    model = tiny_model()
    baselines_api.apply_method(model, baselines_api.METHODS["vpt"].config_cls(num_tokens=3))
    trainer = make_trainer(tmp_path, model=model, method="vpt", max_steps=2, warmup_phase_steps=None)
    assert trainer.model.backbone.vpt_prompts.prompt_embeddings.shape[1] == 3
    with pytest.raises(ValueError, match="already holds"):
        make_trainer(tmp_path, model=model, method="adaptformer", max_steps=2, warmup_phase_steps=None)


def test_rejects_peft_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    from fishertune.training import FisherTuneTrainingArguments, prepare_model
    from fishertune.tuner import target_regex

    model = tiny_model()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=target_regex(model)))
    args = FisherTuneTrainingArguments(output_dir=str(tmp_path), method="rein", report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="plain model"):
        prepare_model(peft_model, args)


def test_baseline_params_in_the_head_get_the_backbone_group():
    from torch import nn

    from fishertune.training.optimizer import build_param_groups

    model = nn.Module()
    model.backbone, model.head = nn.Linear(2, 2), nn.Module()
    model.head.classifier, model.head.rein_querys2feat = nn.Linear(2, 2), nn.Linear(2, 2)  # Rein's query link
    model.backbone.requires_grad_(False)
    groups = build_param_groups(model, {id(p) for p in model.backbone.parameters()}, 1e-3, 1e-4, 0.05)
    by_name = {g["group_name"]: g for g in groups}
    link = {id(p) for p in model.head.rein_querys2feat.parameters()}
    assert link == {id(p) for g in groups if g["group_name"].startswith("backbone") for p in g["params"]}
    assert by_name["backbone"]["lr"] == by_name["backbone_no_decay"]["lr"] == 1e-4
    assert {id(p) for p in model.head.classifier.parameters()} == {
        id(p) for g in groups if g["group_name"].startswith("decoder") for p in g["params"]
    }
