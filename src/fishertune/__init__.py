"""fishertune: FisherTune (CVPR 2025) for Hugging Face vision backbones.

Importing the package registers the ``fishertune`` method with PEFT, so that
``peft.get_peft_model(model, FisherTuneConfig(...))`` and ``PeftModel.from_pretrained`` work, and the
segmenters with the transformers Auto classes, so that ``AutoModelForSemanticSegmentation``,
``AutoImageProcessor``, ``pipeline("image-segmentation")`` and ``AutoPeftModel`` load a trained output.

The other subpackages are attributes of the package, imported on first access (PEP 562), so that
``import fishertune`` does not import `datasets` or the `Trainer`: ``fishertune.fisher`` (phase 2's
estimation), ``fishertune.training`` (the trainer), ``fishertune.data``, ``fishertune.evaluation``,
``fishertune.experiment`` (what the recipes run), ``fishertune.baselines``, ``fishertune.backbones`` and
``fishertune.hub``.
"""

import importlib

from . import backbones, models, tuner  # models registers the segmenters and their processor with the Auto classes
from .tuner import FisherTuneConfig, FisherTuneModel, active_fraction, target_regex

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("baselines", "data", "evaluation", "experiment", "fisher", "hub", "training")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # the import binds it as a package attribute
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY_SUBMODULES})


__all__ = [
    "FisherTuneConfig",
    "FisherTuneModel",
    "__version__",
    "active_fraction",
    "backbones",
    "baselines",
    "data",
    "evaluation",
    "experiment",
    "fisher",
    "hub",
    "models",
    "training",
    "tuner",
    "target_regex",
]
