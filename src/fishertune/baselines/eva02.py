"""Moved to [`fishertune.backbones.eva02`] (EVA02 is a backbone family, not a baseline); re-exported here so
that ``fishertune.baselines.eva02`` imports keep working."""

from ..backbones.eva02 import (  # noqa: F401
    EVA02_BLOCK_PATTERN,
    EVA02_FAMILY,
    TIMM_PREFIX,
    Eva02Backbone,
    Eva02BackboneConfig,
    _route_fused_qkv_through_module,
    build_eva02,
    check_extra_token_blocks,
    eva02_pyramid_taps,
    eva02_target_regex,
    extra_prefix_tokens,
    load_eva02,
    timm_eva02_name,
)
