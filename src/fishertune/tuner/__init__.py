"""The FisherTune PEFT method: config, sparse-delta layer, tuner model and the Eq. 16 schedule."""

from peft.utils import register_peft_method

from .config import FisherTuneConfig
from .data_free import magnitude_scores, random_scores
from .layer import FisherTuneLayer, Linear
from .model import FisherTuneModel
from .presets import block_patterns, target_regex
from .schedule import active_fraction
from .selection import LayerSelection, global_topk

__all__ = [
    "FisherTuneConfig",
    "FisherTuneLayer",
    "FisherTuneModel",
    "LayerSelection",
    "Linear",
    "active_fraction",
    "block_patterns",
    "global_topk",
    "magnitude_scores",
    "random_scores",
    "target_regex",
]

try:
    register_peft_method(
        name="fishertune", config_cls=FisherTuneConfig, model_cls=FisherTuneModel, prefix="fishertune_"
    )
except KeyError:  # already registered (module reloaded)
    pass
