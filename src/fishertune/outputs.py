"""Every file and folder name the package writes, in one place (readers and writers import them from here).

A leaf module (it imports nothing of fishertune), so every layer may use it: see tests/test_import_layers.py.

Training (`FisherTuneTrainer`: in `output_dir`, and the FisherTune part of each `checkpoint-*`):
"""

from __future__ import annotations

# The Hugging Face names the package writes through PEFT and transformers, or looks for (one spelling each).
from peft.utils.constants import CONFIG_NAME as ADAPTER_CONFIG_NAME  # adapter_config.json
from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME as ADAPTER_SAFE_WEIGHTS_NAME
from peft.utils.constants import WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME
from transformers.utils import CONFIG_NAME as MODEL_CONFIG_NAME  # config.json
from transformers.utils import (
    IMAGE_PROCESSOR_NAME,  # preprocessor_config.json
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

#: A PEFT adapter's weights (safetensors first) and a transformers model's weights, sharded or not.
ADAPTER_WEIGHTS = (ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME)
MODEL_WEIGHTS = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
#: transformers.trainer.TRAINER_STATE_NAME, spelled here so that importing this leaf does not load the Trainer.
TRAINER_STATE_NAME = "trainer_state.json"

#: Phase, active share and selection flag of a checkpoint (`training.state`).
STATE_NAME = "fishertune_trainer_state.json"
#: Per-entry scores of the estimation (phase 2), as `fishertune.fisher.save_scores` writes them.
SCORES_NAME = "fishertune_scores.safetensors"
#: Summary of the selection: allocated entries and shares per layer and projection.
SELECTION_NAME = "fishertune_selection.json"
#: F, F' and both dF readings (`save_estimation_statistics=True`; `fishertune.fisher.load_statistics`).
STATISTICS_NAME = "fishertune_statistics.safetensors"
#: The Fig. 6-style sensitivity map (`save_sensitivity_plot=True`).
PLOT_NAME = "fishertune_sensitivity.png"
#: What phase 2 writes into `output_dir` while training runs (a killed run leaves them beside its checkpoints).
TRAINING_OUTPUTS = (SCORES_NAME, SELECTION_NAME, STATISTICS_NAME, PLOT_NAME)

# A segmenter folder that names its pretrained backbone instead of holding its weights (`models._base`).
BACKBONE_REFERENCE = "fishertune_backbone.json"
# A baseline method's parameters alone and its config (`baselines.api.save_method_state`).
BASELINE_WEIGHTS_NAME = "baseline_model.safetensors"
BASELINE_CONFIG_NAME = "baseline_config.json"

# The output folder of a recipe run (`experiment.run.run_experiment`).
METRICS_NAME = "metrics.json"
CONFIG_NAME = "config.yaml"
CARD_NAME = "README.md"
#: Where a pushed checkpoint goes in the Hub repo (transformers' `hub_strategy="checkpoint"`).
LAST_CHECKPOINT_DIR = "last-checkpoint"
#: The base model an adapter loads onto (`AutoPeftModel.from_pretrained(output_dir)`).
BASE_MODEL_DIR = "base_model"
#: Rein / VPT / AdaptFormer / VQT parameters alone (`fishertune.baselines.load_method_state`).
BASELINE_DIR = "baseline"
#: transformers' TensorBoard logs (`output_dir/runs/<time>_<host>`, `report_to: tensorboard`): written while the
#: trainer runs and after, so no manifest lists them; kept, never read by a loader.
TRACKER_LOGS_DIR = "runs"
#: The run manifest, written last: run id, method, settings digest, version, and every file with its hash.
RUN_MANIFEST_NAME = "fishertune_run.json"
#: What a finished recipe run writes besides `TRAINING_OUTPUTS`, the manifest and `checkpoint-*` (the names an
#: output folder of a version without a manifest may hold).
RUN_OUTPUTS = (
    ADAPTER_CONFIG_NAME,
    *ADAPTER_WEIGHTS,
    MODEL_CONFIG_NAME,
    *MODEL_WEIGHTS,
    BASE_MODEL_DIR,
    BASELINE_DIR,
    IMAGE_PROCESSOR_NAME,
    METRICS_NAME,
    CONFIG_NAME,
    CARD_NAME,
)

# `recipes/predict.py` (`experiment.predict.predict_folder`): one PNG per image in each folder, and the legend.
MASKS_DIR, OVERLAYS_DIR, LABELS_DIR = "masks", "overlays", "labels"
LEGEND_PNG, LEGEND_JSON = "legend.png", "legend.json"
PREDICT_OUTPUTS = (f"{MASKS_DIR}/", f"{OVERLAYS_DIR}/", f"{LABELS_DIR}/", LEGEND_PNG, LEGEND_JSON)
