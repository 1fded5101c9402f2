"""The paper's other baselines: Rein, VPT-deep, AdaptFormer, VQT and DSU "+FP" (a training augmentation).

Each method has a config dataclass and `apply_<method>(model, config)`, which freezes the ViT
backbone found in `model` and installs trainable modules named with the method's prefix
(`rein_`, `vpt_`, `adaptformer_`, `vqt_`). `save_method_state` / `load_method_state` write and read
only those parameters (safetensors + JSON). EVA02, a backbone family, is in `fishertune.backbones`.
"""

from .adaptformer import AdaptFormerConfig, adaptformer_num_parameters, apply_adaptformer
from .api import (
    METHODS,
    Baseline,
    apply_method,
    count_trainable,
    load_method_state,
    method_state_dict,
    parameter_table,
    save_method_state,
)
from .dsu_augment import DSUHandle, add_dsu_augmentation, dsu_perturb
from .rein import ReinConfig, apply_rein, rein_num_parameters
from .vpt import VPTConfig, apply_vpt, vpt_num_parameters
from .vqt import VQTConfig, apply_vqt, vqt_features, vqt_num_parameters

__all__ = [
    "METHODS",
    "Baseline",
    "AdaptFormerConfig",
    "DSUHandle",
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
    "load_method_state",
    "method_state_dict",
    "parameter_table",
    "rein_num_parameters",
    "save_method_state",
    "vpt_num_parameters",
    "vqt_features",
    "vqt_num_parameters",
]
