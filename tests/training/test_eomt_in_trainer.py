"""EoMT keeps its decoder (queries, mask head, upscaling, class predictor) inside its backbone module: the trainer
must still train it in every phase and method, and freeze or select only the ViT itself."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from fishertune.models import build_model
from fishertune.training import FisherTuneTrainer, FisherTuneTrainingArguments
from fishertune.training.setup import backbone_parameters

from ._tiny import TinySegDataset

DECODER = ("query", "mask_head", "upscale_block", "class_predictor")


def _eomt():
    torch.manual_seed(0)
    cfg = T.Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         image_size=16, patch_size=4, layerscale_value=1.0)  # fmt: skip
    return build_model("eomt", cfg, num_labels=3, num_queries=4, num_blocks=1)


def _is_decoder(name: str) -> bool:
    return any(f"backbone.{d}." in name for d in DECODER)


def test_backbone_parameters_leave_out_the_decoder_inside_the_backbone():
    model = _eomt()
    names = [n for n, _ in backbone_parameters(model)]
    assert names and not any(_is_decoder(n) for n in names)
    assert {n for n, _ in model.backbone.named_parameters() if not n.startswith(DECODER)} == {
        n.removeprefix("backbone.") for n in names
    }


@pytest.mark.parametrize("method", ["sparse", "frozen"])
def test_the_decoder_trains_and_the_vit_is_frozen_during_warmup(method, tmp_path):
    model = _eomt()
    vit = {n: p.detach().clone() for n, p in backbone_parameters(model)}
    decoder = {n: p.detach().clone() for n, p in model.named_parameters() if _is_decoder(n)}
    args = FisherTuneTrainingArguments(
        output_dir=str(tmp_path), method=method, max_steps=2, warmup_phase_steps=2 if method == "sparse" else None,
        estimation_batches=1, per_device_train_batch_size=2, learning_rate=1e-2, report_to="none", save_strategy="no",
        use_cpu=True, disable_tqdm=True, logging_steps=100, save_sensitivity_plot=False)  # fmt: skip
    trainer = FisherTuneTrainer(model=model, args=args, train_dataset=TinySegDataset(8))
    trainer.train()
    base = trainer.model.get_base_model() if method == "sparse" else trainer.model
    after = dict(base.named_parameters())
    # The warm-up (sparse) or the whole run (frozen): ViT weights as they were, the decoder moved.
    assert all(torch.equal(after[n], p) for n, p in vit.items() if n in after)
    moved = [n for n, p in decoder.items() if not torch.equal(_trained(base, n), p)]
    assert len(moved) > len(decoder) // 2, moved


def _trained(base, name: str) -> torch.Tensor:
    """The trained copy of a decoder parameter: PEFT's modules_to_save copy when the model was wrapped."""
    module_path, _, leaf = name.rpartition(".")
    for d in DECODER:
        prefix = f"backbone.{d}"
        if module_path.startswith(prefix):
            wrapped = f"{prefix}.modules_to_save.default{module_path[len(prefix) :]}.{leaf}"
            params = dict(base.named_parameters())
            return params.get(wrapped, params.get(name))
    raise KeyError(name)
