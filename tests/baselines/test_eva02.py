"""EVA02 through timm (random init): HF-style outputs, target regex, taps, Rein, AdaptFormer and VPT on it."""

import re

import pytest
import torch

timm = pytest.importorskip("timm")

from fishertune.backbones.eva02 import Eva02Backbone, eva02_pyramid_taps, eva02_target_regex  # noqa: E402
from fishertune.baselines import (  # noqa: E402
    AdaptFormerConfig,
    ReinConfig,
    VPTConfig,
    apply_method,
    count_trainable,
    parameter_table,
)

from .conftest import EVA02_TINY  # noqa: E402

TINY = EVA02_TINY


def _eva(name="eva02_base_patch14_224"):
    torch.manual_seed(0)
    return Eva02Backbone.from_timm(name, pretrained=False, **TINY).eval()


def test_wrapper_outputs_and_regex():
    model = _eva()
    out = model(torch.randn(2, 3, 28, 28), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.last_hidden_state.shape == (2, 1 + 4, 32)
    # Dynamic image size: a larger crop works with the same weights.
    assert model(torch.randn(1, 3, 42, 42)).last_hidden_state.shape == (1, 1 + 9, 32)
    regex = re.compile(eva02_target_regex(model))
    hits = {n for n, _ in model.named_modules() if regex.fullmatch(n)}
    assert hits == {f"eva.blocks.{i}.{s}" for i in range(2) for s in
                    ("attn.q_proj", "attn.k_proj", "attn.v_proj", "mlp.fc1_g", "mlp.fc1_x", "mlp.fc2")}  # fmt: skip
    assert eva02_pyramid_taps(24) == (8, 12, 16, 24)


def test_rein_and_adaptformer_on_eva02():
    x = torch.randn(2, 3, 28, 28)
    ref = _eva()(x).last_hidden_state
    model = apply_method(_eva(), AdaptFormerConfig(bottleneck=8))
    assert torch.equal(model(x).last_hidden_state, ref)
    assert count_trainable(model) == 2 * (2 * 32 * 8 + 8 + 32)
    rein = apply_method(_eva(), ReinConfig(token_length=5, lora_dim=4, link_token_to_query=False))
    assert not torch.allclose(rein(x).last_hidden_state, ref)
    vpt = apply_method(_eva(), VPTConfig(num_tokens=2))  # prompts kept out of RoPE: test_eva02_prompts.py
    assert vpt(x).last_hidden_state.shape == ref.shape and not torch.allclose(vpt(x).last_hidden_state, ref)
    assert {r["method"] for r in parameter_table(_eva())} >= {"fishertune", "lora", "rein"}
