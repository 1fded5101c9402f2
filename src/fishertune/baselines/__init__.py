"""The paper's other baselines (issue 7): Rein, VPT-deep, AdaptFormer, VQT, EVA02 via timm, DSU "+FP".

Each method has a config dataclass and `apply_<method>(model, config)`, which freezes the ViT
backbone found in `model` and installs trainable modules named with the method's prefix
(`rein_`, `vpt_`, `adaptformer_`, `vqt_`). `save_method_state` / `load_method_state` write and read
only those parameters (safetensors + JSON). Importing this package does not need timm.
"""

from .adaptformer import AdaptFormerConfig, adaptformer_num_parameters, apply_adaptformer
from .api import (
    METHODS,
    apply_method,
    count_trainable,
    load_method_state,
    method_state_dict,
    parameter_table,
    save_method_state,
)
from .dsu_augment import DSUHandle, add_dsu_augmentation, dsu_perturb
from ..backbones.eva02 import (
    EVA02_BLOCK_PATTERN,
    Eva02Backbone,
    Eva02BackboneConfig,
    eva02_pyramid_taps,
    eva02_target_regex,
)
from .rein import ReinConfig, apply_rein, rein_num_parameters
from .vpt import VPTConfig, apply_vpt, vpt_num_parameters
from .vqt import VQTConfig, apply_vqt, vqt_features, vqt_num_parameters

__all__ = [
    "EVA02_BLOCK_PATTERN",
    "METHODS",
    "AdaptFormerConfig",
    "DSUHandle",
    "Eva02Backbone",
    "Eva02BackboneConfig",
    "ReinConfig",
    "VPTConfig",
    "VQTConfig",
    "adaptformer_num_parameters",
    "add_dsu_augmentation",
    "apply_adaptformer",
    "apply_method",
    "apply_rein",
    "apply_vpt",
    "apply_vqt",
    "count_trainable",
    "dsu_perturb",
    "eva02_pyramid_taps",
    "eva02_target_regex",
    "load_method_state",
    "method_state_dict",
    "parameter_table",
    "rein_num_parameters",
    "save_method_state",
    "vpt_num_parameters",
    "vqt_features",
    "vqt_num_parameters",
]
