"""A tiny light segmenter, a synthetic dataset and (until fishertune.fisher lands) a stand-in estimator."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
import transformers as T

import fishertune.fisher as fisher_module
from fishertune.models.light import LightSegmenter

NUM_LABELS = 3
SIZE = 16


def tiny_model(seed: int = 0, num_layers: int = 2) -> LightSegmenter:
    torch.manual_seed(seed)
    cfg = T.Dinov2Config(
        hidden_size=16,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=SIZE,
        patch_size=4,
        layerscale_value=1.0,
    )
    return LightSegmenter.from_backbone(cfg, num_labels=NUM_LABELS)


class TinySegDataset(torch.utils.data.Dataset):
    """Images whose label is a function of the pixels, so that training lowers the loss."""

    def __init__(self, n: int = 16, seed: int = 0, ignore_border: bool = True):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, SIZE, SIZE, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0.5).long()
        if ignore_border:  # the same ignore mask for every sample keeps the valid-pixel count per sample equal
            self.y[:, :1, :] = 255

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


@dataclasses.dataclass
class StubEstimationConfig:
    criterion: str = "dr_fim"
    estimator: str = "variational"
    fisher_type: str = "true"
    num_batches: int = 1
    gamma: Optional[float] = None
    tau: Optional[float] = None
    variational_lr: Optional[float] = None
    variational_steps_per_batch: Optional[int] = None
    fisher_unit: Optional[str] = None
    delta_eps: Optional[float] = None
    exchange: Optional[str] = None
    exchange_quantile: Optional[float] = None
    prior_floor: Optional[float] = None
    variational_gradient: Optional[str] = None
    shift_weight_reading: Optional[str] = None
    dsu_p: Optional[float] = None
    dsu_eps: Optional[float] = None
    dsu_blocks: Optional[list] = None
    shift_weight: Optional[str] = None
    seed: int = 0


def stub_estimate_scores(model, dataloader, weights, config, log_prob_fn=None):
    """Empirical diagonal Fisher over `num_batches` batches (enough to exercise the trainer)."""
    flags = {n: w.requires_grad for n, w in weights.items()}
    sq = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
    for w in weights.values():
        w.requires_grad_(True)
    for i, batch in enumerate(dataloader):
        if i >= config.num_batches:
            break
        model.zero_grad()
        model(**batch).loss.backward()
        for n, w in weights.items():
            sq[n] += w.grad.float() ** 2
            w.grad = None
    model.zero_grad()
    for n, w in weights.items():
        w.requires_grad_(flags[n])
    return {n: s.cpu() for n, s in sq.items()}


def ensure_fisher() -> bool:
    """Install the stand-ins where `fishertune.fisher` lacks the real functions; True if real."""
    if hasattr(fisher_module, "estimate_scores"):
        return True
    from safetensors.torch import load_file, save_file

    fisher_module.EstimationConfig = StubEstimationConfig
    fisher_module.estimate_scores = stub_estimate_scores
    fisher_module.save_scores = lambda scores, path: save_file({k: v.contiguous() for k, v in scores.items()}, path)
    fisher_module.load_scores = load_file
    fisher_module.plot_sensitivity_map = lambda scores, selected, path: None
    return False


def make_trainer(output_dir, model=None, dataset=None, callbacks=None, **overrides):
    """A FisherTuneTrainer on the tiny model: 8 steps, T1 = 3, T2 = 2 batches, delta 2% -> 10%."""
    from fishertune.training import FisherTuneTrainer, FisherTuneTrainingArguments

    kwargs = dict(
        output_dir=str(output_dir),
        max_steps=8,
        warmup_phase_steps=3,
        estimation_batches=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        delta_min=0.02,
        delta_max=0.1,
        criterion="fim",
        estimator="diagonal",
        fisher_type="empirical",
        learning_rate=1e-2,
        disable_tqdm=True,
        seed=0,
        train_sampling_strategy="sequential",
    )
    kwargs.update(overrides)
    args = FisherTuneTrainingArguments(**kwargs)
    return FisherTuneTrainer(
        model=model if model is not None else tiny_model(),
        args=args,
        train_dataset=dataset if dataset is not None else TinySegDataset(),
        callbacks=callbacks,
    )


def model_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
