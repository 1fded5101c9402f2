"""`gradient_checkpointing=True` recomputes the backbone blocks and leaves every gradient as it was.

Checked for full fine-tuning, FisherTune's sparse deltas, LoRA and VQT (whose query outputs are recorded
inside the checkpointed blocks), on the light head and on Mask2Former, against the same step without it.
"""

import pytest
import torch

import fishertune  # noqa: F401  (registers the PEFT method)

from .conftest import TINY_M2F, tiny_config

METHODS = ["full", "fishertune", "lora", "vqt"]


def _model(head: str, method: str):
    import peft

    from fishertune import FisherTuneConfig
    from fishertune.models import LightSegmenter, PyramidMask2Former

    torch.manual_seed(0)
    config = tiny_config("dinov2")
    if head == "light":
        model = LightSegmenter.from_backbone(config, num_labels=3)
    else:
        model = PyramidMask2Former.from_backbone(config, num_labels=3, **TINY_M2F)
    torch.manual_seed(1)
    if method == "fishertune":
        model = peft.get_peft_model(
            model,
            FisherTuneConfig(
                target_modules=["q_proj", "v_proj", "fc1"],
                delta_max=0.2,
                modules_to_save=["decode_head"] if head == "light" else None,
            ),
        )
        g = torch.Generator().manual_seed(2)  # the same selection and delta values in both models
        weights = model.base_model.fishertune_target_weights()
        model.base_model.select({n: torch.rand(w.shape, generator=g) for n, w in weights.items()}, init_weights=False)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "fishertune_values" in name:
                    p.normal_(0, 0.01, generator=g)
    elif method == "lora":
        model = peft.get_peft_model(
            model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
    elif method == "vqt":
        from fishertune.baselines import VQTConfig, apply_vqt

        model = apply_vqt(model, VQTConfig(num_queries=2))
        link = (
            model.decode_head.vqt_classifier.classifier if head == "light" else model.transformer_module.vqt_query_link
        )
        with torch.no_grad():  # trained-looking instead of zero, so the queries get a gradient
            (link.weight if head == "light" else link.mix).normal_(0, 0.5)
    return model.train()


def _grads(model, images, labels):
    model.zero_grad()
    model(pixel_values=images, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("head", ["light", "mask2former"])
@pytest.mark.parametrize("method", METHODS)
def test_checkpointed_gradients_equal_the_plain_ones(head, method, images):
    labels = torch.randint(0, 3, images.shape[:1] + images.shape[-2:], generator=torch.Generator().manual_seed(4))
    plain = _model(head, method)
    ckpt = _model(head, method)
    ckpt.activation_checkpointing_enable()
    blocks = [
        m for m in ckpt.modules() if type(m).__name__.endswith("Layer") and getattr(m, "gradient_checkpointing", False)
    ]
    assert len(blocks) >= 4, "the backbone blocks are not checkpointed"
    if head == "mask2former":  # Mask2Former's point sampling draws random points: the same draws on both sides
        torch.manual_seed(5)
    want = _grads(plain, images, labels)
    if head == "mask2former":
        torch.manual_seed(5)
    got = _grads(ckpt, images, labels)
    assert set(got) == set(want) and want
    key = {"fishertune": "fishertune_values", "lora": "lora_", "vqt": "vqt_queries", "full": "backbone."}[method]
    assert any(key in n and g.abs().sum() > 0 for n, g in got.items()), f"{method}: no gradient reaches {key}"
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6, msg=n)
