"""What every segmenter of the package shares: config fields and the `from_backbone` constructor."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec

from ..outputs import BACKBONE_REFERENCE, MODEL_WEIGHTS
from .backbone import load_backbone

# The backbone's own task fields would only bloat our config (ImageNet's 1000 labels).
_DROP_FROM_BACKBONE = ("id2label", "label2id", "architectures", "problem_type", "num_labels", "_name_or_path")


def backbone_config_spec(default_type: str = "dinov2") -> dict[str, SubConfigSpec]:
    return {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type=default_type)}


#: In a `base_model/` folder that holds a segmenter's config but no weights: the backbone it is built on
#: (a Hub id, a folder or `timm:<name>`). `from_pretrained(folder)` then builds the segmenter from the config
#: and loads that backbone's pretrained weights; the decoder starts random (an adapter's `modules_to_save`
#: replace it). A run on a pretrained backbone so names its adapter's base without copying the backbone.


def save_backbone_reference(model: PreTrainedModel, folder: str | os.PathLike, backbone: str) -> None:
    """Write `model`'s config and `BACKBONE_REFERENCE` (no weights) into `folder`; a local `backbone`
    folder is recorded as an absolute path."""
    if os.path.exists(backbone):
        backbone = os.path.abspath(backbone)
    os.makedirs(folder, exist_ok=True)
    model.config.save_pretrained(folder)
    with open(os.path.join(folder, BACKBONE_REFERENCE), "w") as f:
        json.dump({"backbone": backbone}, f, indent=2)


#: The `from_pretrained` arguments that say where a Hub repo's files are.
_HUB_KWARGS = ("revision", "subfolder", "token", "cache_dir", "local_files_only", "force_download", "proxies")


def backbone_reference(folder, **kwargs) -> Optional[str]:
    """The backbone a weightless base folder names, or None (no reference, or the folder has weights).

    `folder` is a local folder or a Hub repo id; `kwargs` are `from_pretrained`'s (its `subfolder`, `revision`,
    `token`, ... say where the repo's files are; the others are ignored).
    """
    if not isinstance(folder, (str, os.PathLike)):
        return None
    if os.path.isdir(folder):
        folder = os.path.join(folder, kwargs.get("subfolder") or "")
        path = os.path.join(folder, BACKBONE_REFERENCE)
        if not os.path.isfile(path) or any(os.path.exists(os.path.join(folder, w)) for w in MODEL_WEIGHTS):
            return None
    else:  # a Hub repo (a pushed base): the same two files, looked up where from_pretrained would look
        from huggingface_hub.utils import HFValidationError, validate_repo_id
        from transformers.utils import cached_file

        try:
            validate_repo_id(str(folder))
        except HFValidationError:
            return None
        hub = {k: kwargs[k] for k in _HUB_KWARGS if kwargs.get(k) is not None}
        hub["subfolder"] = hub.get("subfolder") or ""

        def find(name):
            return cached_file(str(folder), name, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False, **hub)  # fmt: skip

        path = find(BACKBONE_REFERENCE)
        if path is None or any(find(w) is not None for w in MODEL_WEIGHTS):
            return None
    with open(path) as f:
        return json.load(f)["backbone"]


def from_backbone_reference(cls, folder, backbone: str, kwargs: dict):
    """`cls.from_pretrained(folder, **kwargs)` for a folder that names its backbone (see `BACKBONE_REFERENCE`)."""
    config = kwargs.get("config")
    if not isinstance(config, PreTrainedConfig):
        hub = {k: kwargs[k] for k in _HUB_KWARGS if kwargs.get(k) is not None}
        config = cls.config_class.from_pretrained(folder, **hub)
    model = cls(config)
    cls._load_backbone_weights(model, backbone)
    model.config.name_or_path = str(folder)  # as from_pretrained records where a model came from
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if isinstance(dtype, torch.dtype):
        model.to(dtype)
    model.eval()  # as from_pretrained returns a model
    if kwargs.get("output_loading_info"):
        return model, {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    return model


def labels_kwargs(num_labels: int | None, id2label: dict[int, str] | None) -> dict[str, Any]:
    if id2label is None:
        if num_labels is None:
            raise ValueError("Pass num_labels or id2label.")
        id2label = {i: str(i) for i in range(num_labels)}
    elif num_labels is not None and len(id2label) != num_labels:
        raise ValueError(f"num_labels={num_labels} but id2label has {len(id2label)} entries.")
    id2label = {int(k): v for k, v in id2label.items()}
    return {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


class BackboneSegmenterMixin:
    """`from_backbone` for a `PreTrainedModel` whose config has `backbone_config` and `taps` fields."""

    #: Top-level submodules trained in full (pass to `FisherTuneConfig(modules_to_save=...)`).
    decoder_modules: list[str] = []

    #: The loss is a per-pixel mean computed inside forward; a plain `Trainer` must not rescale it by
    #: `num_items_in_batch` (it would otherwise multiply it by the number of processes).
    accepts_loss_kwargs: bool = False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the backbone's non-persistent buffers are recomputed.

        transformers builds the model on the meta device and fills only what the checkpoint holds (and
        what HF modules' `_init_weights` know); timm's EVA02 keeps RoPE tables in non-persistent
        buffers, which `Eva02Backbone.init_non_persistent_buffers` restores. A folder that holds a config
        and `BACKBONE_REFERENCE` but no weights (a local one, or a Hub repo such as a pushed adapter's base) is
        built from the config, with the named backbone's weights.
        """
        reference = backbone_reference(args[0], **kwargs) if args else None
        if reference is not None:
            return from_backbone_reference(cls, args[0], reference, kwargs)
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives a tuple
        reinit = getattr(getattr(model, "backbone", None), "init_non_persistent_buffers", None)
        if callable(reinit):
            reinit()
        return loaded

    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike | PreTrainedModel | nn.Module | PreTrainedConfig,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        taps: tuple[int, ...] | None = None,
        **kwargs,
    ):
        """Build the segmenter on an HF ViT backbone or a timm EVA02.

        Args:
            backbone (`str`, `os.PathLike`, `PreTrainedModel`, `Eva02Backbone` or `PreTrainedConfig`):
                A local folder or Hub id (loaded with its pretrained weights), `"timm:<eva02 name>"`
                (timm's pretrained EVA02), a backbone model (its weights are copied), or a config such
                as `Eva02BackboneConfig` (random initialisation). CLIP checkpoints give their vision
                tower; task checkpoints such as `ViTForImageClassification` give their encoder.
            num_labels (`int`, *optional*): number of classes (or pass `id2label`).
            id2label (`dict[int, str]`, *optional*): class names.
            taps (`tuple[int, ...]`, *optional*): 1-based blocks whose patch tokens feed the head;
                default: evenly spaced ending at the last block (DINOv2-L in Rein: 8, 12, 16, 24).
            kwargs: further fields of the model's config (e.g. `num_queries=100`).
        """
        backbone_config, backbone_model = load_backbone(backbone)
        sub = backbone_config.to_dict()
        for key in _DROP_FROM_BACKBONE:
            sub.pop(key, None)
        config = cls.config_class(
            backbone_config=sub,
            taps=list(taps) if taps is not None else None,
            **labels_kwargs(num_labels, id2label),
            **kwargs,
        )
        model = cls(config)
        if backbone_model is not None:
            cls._copy_backbone_weights(model, backbone_model)
        return model

    @classmethod
    def _load_backbone_weights(cls, model, backbone: str) -> None:
        """Load the pretrained weights of `backbone` (Hub id, folder, `timm:` name) into `model.backbone`."""
        _, backbone_model = load_backbone(backbone)
        cls._copy_backbone_weights(model, backbone_model)

    @staticmethod
    def _copy_backbone_weights(model, backbone_model: nn.Module) -> None:
        missing, unexpected = model.backbone.load_state_dict(backbone_model.state_dict(), strict=False)
        # A pooler or CLIP's projection may be present in the source; nothing of ours may be missing.
        if missing:
            raise ValueError(f"Backbone weights missing after loading: {missing[:8]}")
