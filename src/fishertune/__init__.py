"""fishertune: FisherTune (CVPR 2025) for Hugging Face vision backbones.

Importing the package registers the ``fishertune`` method with PEFT, so that
``peft.get_peft_model(model, FisherTuneConfig(...))`` and ``PeftModel.from_pretrained`` work, and the
segmenters with the transformers Auto classes, so that ``AutoModelForSemanticSegmentation``,
``AutoImageProcessor``, ``pipeline("image-segmentation")`` and ``AutoPeftModel`` load a trained output.
"""

from . import models  # noqa: F401  (registers the segmenters and their image processor with the Auto classes)
from .tuner import FisherTuneConfig, FisherTuneModel, active_fraction, target_regex

__version__ = "0.1.0"

__all__ = ["FisherTuneConfig", "FisherTuneModel", "__version__", "active_fraction", "target_regex"]
