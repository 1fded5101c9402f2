"""What makes an output folder load with the standard Hugging Face calls (after `import fishertune`).

- `save_image_processor`: `preprocessor_config.json` next to the model (and in `base_model/`), so that
  `AutoImageProcessor.from_pretrained(folder)` and `pipeline("image-segmentation", model=folder)` work.
- `finalize_adapter_config`: the adapter names its base model and an auto class of transformers, so that
  `AutoPeftModel.from_pretrained(folder)` builds the base and loads the adapter without extra arguments
  (the local `base_model/`; `fishertune.hub` uploads a copy that names the pushed base repo instead).
"""

from __future__ import annotations

import json
import os
from typing import Optional

from .. import data as ftdata
from ..atomic import write_json
from ..models import processor_for
from ..outputs import ADAPTER_CONFIG_NAME as ADAPTER_CONFIG
from .arguments import ExperimentArguments
from .build import normalization

#: The base model class AutoPeftModel instantiates: transformers' own auto class, in PEFT's default import
#: allowlist, which finds our segmenters once `import fishertune` has registered them.
AUTO_MAPPING = {"base_model_class": "AutoModelForSemanticSegmentation", "parent_library": "transformers"}


def image_processor(exp: ExperimentArguments):
    """The processor reproducing the run's evaluation transform on the source dataset (its scale and normalization)."""
    mean, std = normalization(exp.backbone)
    scale = tuple(exp.eval_scale) if exp.eval_scale else ftdata.EVAL_SCALES.get(exp.dataset.lower())
    return processor_for(mean, std, scale)


def save_image_processor(folders: list[str], exp: ExperimentArguments) -> None:
    """Write `preprocessor_config.json` into every existing folder of `folders`."""
    processor = image_processor(exp)
    for folder in folders:
        if os.path.isdir(folder):
            processor.save_pretrained(folder)


def finalize_adapter_config(out: str, base_model_name_or_path: Optional[str]) -> None:
    """Name the adapter's base model (a folder or Hub id) and the auto class that loads it, in place.

    PEFT records the model's `name_or_path` (empty for a segmenter assembled with `from_backbone`) and the
    segmenter's own module as the class to import (outside PEFT's import allowlist): neither loads.
    """
    path = os.path.join(out, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        config = json.load(f)
    config["base_model_name_or_path"] = base_model_name_or_path
    config["auto_mapping"] = dict(AUTO_MAPPING)
    write_json(path, config, sort_keys=True)
