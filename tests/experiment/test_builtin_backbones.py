"""Built-in backbones build what their configs say (DINOv2 ignores intermediate_size; mlp_ratio sizes the FFN)."""

from __future__ import annotations

import pytest

from fishertune.experiment.arguments import BUILTIN_BACKBONES
from fishertune.experiment.build import backbone_source, dinov2_config


@pytest.mark.parametrize("name", sorted(BUILTIN_BACKBONES))
def test_builtin_backbone_has_the_ffn_its_config_says(name):
    from transformers import Dinov2Model

    spec = BUILTIN_BACKBONES[name]
    model = Dinov2Model(backbone_source(f"config:{name}"))
    widths = {layer.mlp.fc1.out_features for layer in model.encoder.layer}
    assert widths == {spec["intermediate_size"]}
    assert len(model.encoder.layer) == spec["num_hidden_layers"]


def test_intermediate_size_becomes_mlp_ratio_or_is_refused():
    assert dinov2_config(hidden_size=32, intermediate_size=64).mlp_ratio == 2
    with pytest.raises(ValueError, match="not a multiple of hidden_size=32.*mlp_ratio"):
        dinov2_config(hidden_size=32, intermediate_size=48)
    with pytest.raises(ValueError, match="disagree"):
        dinov2_config(hidden_size=32, intermediate_size=64, mlp_ratio=4)
