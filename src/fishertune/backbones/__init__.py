"""ViT backbone families: the lowest layer of fishertune (imports only torch and transformers).

A [`BackboneFamily`] says where a family keeps its blocks, which linears form the Eq. 3 target set, how many
tokens precede the patches, and how to build, load and tap it. The tuner presets, the Fisher estimator's DSU
hooks, the segmenters and the baselines all read [`families`]; supporting a new ViT is one call:

    ```py
    >>> from fishertune.backbones import BackboneFamily, register_family
    >>> register_family(BackboneFamily(
    ...     name="my_vit",  # the config's model_type
    ...     target_pattern=r"blocks\\.\\d+\\.(attn\\.(q|k|v)|mlp\\.(fc1|fc2))",
    ...     block_paths=("blocks",),
    ...     build=MyViT,  # config -> randomly initialised model
    ... ))
    ```

Registered on import: DINOv2 (with and without registers), ViT, ViT-MAE, CLIP vision, SAM vision, EoMT
(``hf.py``) and timm's EVA02 behind [`Eva02Backbone`] (``eva02.py``; timm is imported only when one is created).
"""

from . import hf  # noqa: F401  (registers the transformers families)
from .auto import build_auto_model, load_auto_model, vision_config
from .eva02 import TIMM_PREFIX, Eva02Backbone, Eva02BackboneConfig, eva02_pyramid_taps
from .registry import (
    BackboneFamily,
    backbone_blocks,
    families,
    family_of,
    find_backbone,
    fused_qkv_leaves,
    get_family,
    locate,
    num_prefix_tokens,
    register_family,
    registered,
    unregister_family,
)

__all__ = [
    "TIMM_PREFIX",
    "BackboneFamily",
    "Eva02Backbone",
    "Eva02BackboneConfig",
    "backbone_blocks",
    "build_auto_model",
    "eva02_pyramid_taps",
    "families",
    "family_of",
    "find_backbone",
    "fused_qkv_leaves",
    "get_family",
    "load_auto_model",
    "locate",
    "num_prefix_tokens",
    "register_family",
    "registered",
    "unregister_family",
    "vision_config",
]
