"""What `FisherTuneTrainer` publishes: `push_to_hub` and the checkpoint pushes of `hub_strategy`, by `fishertune.hub`.

`push_to_hub` uploads the saved model, its image processor (the trainer's `processing_class`), a model card whose
`base_model` is a Hub id or absent, and, for an adapter, its base: written to `output_dir/base_model/` (the
model with the adapter taken off: the backbone's own weights and the decoder as it was before training) and
pushed to `<repo_id>-base`, so that `AutoPeftModel.from_pretrained(repo_id)` loads from the Hub alone. Nothing
else of `output_dir` goes up (no `training_args.bin`, which pickles the token; no dotfiles).

Checkpoints are pushed by `HubPushCallback.on_save`, after the checkpoint is complete (the FisherTune state
included), never from inside transformers' checkpoint write; synchronously, as one commit each, without
writing into `output_dir`.
"""

from __future__ import annotations

import copy
import functools
import os
import tempfile
from typing import Optional

from peft import PeftModel
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .. import hub
from ..atomic import write_text
from ..outputs import ADAPTER_CONFIG_NAME, BASE_MODEL_DIR, CARD_NAME, IMAGE_PROCESSOR_NAME, MODEL_CONFIG_NAME

logger = logging.get_logger(__name__)


def save_base(model: PeftModel, folder: str) -> None:
    """Save the base of `model` (its adapter removed, `modules_to_save` at their original values) into `folder`."""
    clone = copy.deepcopy(model)
    originals = {name: m.original_module.state_dict() for name, m in clone.base_model.model.named_modules()
                 if hasattr(m, "original_module") and hasattr(m, "modules_to_save")}  # fmt: skip
    base = clone.unload()
    for name, state in originals.items():
        base.get_submodule(name).load_state_dict(state)
    base.save_pretrained(folder)


def _base_dir(trainer) -> Optional[str]:
    """`output_dir/base_model/` of an adapter, written from the model if it is not there yet (None: no adapter)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not isinstance(model, PeftModel):
        return None
    folder = os.path.join(trainer.args.output_dir, BASE_MODEL_DIR)
    if not os.path.isfile(os.path.join(folder, MODEL_CONFIG_NAME)):
        save_base(model, folder)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(folder)
    return folder


def write_card(trainer, repo_id: str, is_adapter: bool, model_name: Optional[str] = None) -> str:
    """`output_dir/README.md`: metadata (`base_model` a Hub id or absent) and the lines that load the repo."""
    from huggingface_hub import ModelCard, ModelCardData

    model = trainer.accelerator.unwrap_model(trainer.model)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    name_or_path = getattr(base.config, "name_or_path", "") or ""
    base_model = hub.base_repo_id(repo_id) if is_adapter else (name_or_path if _is_hub_id(name_or_path) else None)
    data = ModelCardData(library_name="peft" if is_adapter else "transformers", base_model=base_model,
                         pipeline_tag="image-segmentation", tags=["fishertune", "semantic-segmentation"],
                         model_name=model_name or repo_id.split("/")[-1])  # fmt: skip
    t1, t2, t3 = trainer.phase_lengths
    text = (f"---\n{data.to_yaml()}\n---\n\n# {model_name or repo_id}\n\n"
            f"Trained with `fishertune.FisherTuneTrainer` (method `{trainer.args.method}`: warm-up {t1} steps, "
            f"estimation {t2} batches, tuning {t3} steps).\n\n## How to load\n\n"
            f"```python\n{hub.load_snippet(repo_id, is_adapter)}\n```\n")  # fmt: skip
    path = os.path.join(trainer.args.output_dir, CARD_NAME)
    write_text(path, str(ModelCard(text)))
    return path


def _is_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or os.path.exists(name) or os.path.isabs(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def push_to_hub(trainer, commit_message: str = "End of training", token: Optional[str] = None,
                revision: Optional[str] = None, private: Optional[bool] = None,
                model_name: Optional[str] = None):  # fmt: skip
    """`FisherTuneTrainer.push_to_hub`: save the model, its base and card into `output_dir`, upload those only."""
    args = trainer.args
    token = token if token is not None else args.hub_token
    private = bool(args.hub_private_repo if private is None else private)
    if trainer.hub_model_id is None:
        trainer.init_hf_repo(token=token, private=private)
    trainer.save_model(_internal_call=True)
    if not trainer.is_world_process_zero():
        return None
    out = args.output_dir
    if trainer.processing_class is None:
        logger.warning(
            "FisherTuneTrainer has no processing_class: the repo will hold no preprocessor_config.json, "
            "and pipeline('image-segmentation', model=repo) needs one; pass processing_class="
            "fishertune.models.processor_for(mean, std) to the trainer."
        )
    base_dir = _base_dir(trainer)
    is_adapter = os.path.isfile(os.path.join(out, ADAPTER_CONFIG_NAME))
    write_card(trainer, trainer.hub_model_id, is_adapter, model_name)
    names = (ADAPTER_CONFIG_NAME, *hub.MODEL_FILES, IMAGE_PROCESSOR_NAME, CARD_NAME)
    files = [n for n in dict.fromkeys(names) if os.path.isfile(os.path.join(out, n))]
    if is_adapter and base_dir is not None:
        files += [f"{BASE_MODEL_DIR}/{p}" for p in hub.select_files(base_dir)]
    return hub.push_output_folder(
        out,
        trainer.hub_model_id,
        token=token,
        private=private,
        files=files,
        commit_message=commit_message,
        revision=revision or args.hub_revision,
    )


class HubPushCallback(TrainerCallback):
    """Pushes each complete checkpoint as `args.hub_strategy` says (`fishertune.hub.push_checkpoint`).

    An adapter's base is `output_dir/base_model/` when the run wrote one (the recipes do); otherwise it is saved
    to a temporary folder and pushed once (it does not change while training), leaving `output_dir` as it was.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.base_repo = None

    def on_save(self, args, state, control, **kwargs):
        trainer = self.trainer
        strategy = str(getattr(args.hub_strategy, "value", args.hub_strategy))
        if not args.push_to_hub or not trainer.is_world_process_zero() or strategy == "end":
            return
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(checkpoint):
            return
        push = functools.partial(hub.push_checkpoint, checkpoint, trainer.hub_model_id, strategy, token=args.hub_token,
                                 private=bool(args.hub_private_repo), revision=args.hub_revision)  # fmt: skip
        model = trainer.accelerator.unwrap_model(trainer.model)
        base_dir = os.path.join(args.output_dir, BASE_MODEL_DIR)
        if not isinstance(model, PeftModel) or os.path.isfile(os.path.join(base_dir, MODEL_CONFIG_NAME)):
            push(base_folder=base_dir if isinstance(model, PeftModel) else None)
        elif self.base_repo is not None:
            push(base_repo=self.base_repo)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                save_base(model, tmp)
                if trainer.processing_class is not None:
                    trainer.processing_class.save_pretrained(tmp)
                push(base_folder=tmp)
            self.base_repo = hub.base_repo_id(trainer.hub_model_id)
