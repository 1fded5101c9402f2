"""EoMT's num_blocks must fit in the backbone's depth: refused with a message, not a convolution error."""

import pytest

from fishertune.models import EomtSegmenter

from .conftest import TINY_EOMT, tiny_config


@pytest.mark.parametrize("num_blocks", [0, 5, 40])  # the tiny backbone has 4 blocks
def test_num_blocks_outside_the_backbone_is_refused(num_blocks):
    config = tiny_config("dinov2")
    kwargs = {**TINY_EOMT, "num_blocks": num_blocks}
    with pytest.raises(ValueError, match=rf"num_blocks={num_blocks}.*{config.num_hidden_layers} blocks"):
        EomtSegmenter.from_backbone(config, num_labels=5, **kwargs)


def test_num_blocks_equal_to_the_depth_builds():
    config = tiny_config("dinov2")
    model = EomtSegmenter.from_backbone(config, num_labels=5, **{**TINY_EOMT, "num_blocks": config.num_hidden_layers})
    assert model.backbone.config.num_blocks == config.num_hidden_layers
