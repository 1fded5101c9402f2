"""FisherTuneConfig: the PEFT config of the sparse tuner."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig

from ._types import FISHERTUNE_PEFT_TYPE

#: What delta_min / delta_max are shares of (`budget_base`); the training arguments offer the same choices.
BUDGET_BASES = ("targeted", "backbone")


def saved_adapter_keys(path: str) -> Optional[list[str]]:
    """The tensor names of the adapter saved in the local folder ``path`` (None if there is none to read)."""
    from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME
    from safetensors import safe_open

    file = os.path.join(path, SAFETENSORS_WEIGHTS_NAME)
    if not os.path.isfile(file):
        return None
    with safe_open(file, framework="pt") as f:  # reads the header only
        return list(f.keys())


def transformers_auto_mapping(mapping: Optional[dict]) -> Optional[dict]:
    """The `auto_mapping` PEFT records, naming a transformers Auto class when the base's own class is registered
    with one: `AutoPeftModel` imports only from its allowlist (transformers, ...), so a segmenter of this package
    (registered with `AutoModelForSemanticSegmentation` on `import fishertune`) must be named through it."""
    if not mapping or str(mapping.get("parent_library", "")).split(".")[0] == "transformers":
        return mapping
    try:
        cls = getattr(importlib.import_module(mapping["parent_library"]), mapping["base_model_class"])
    except (ImportError, AttributeError, KeyError):
        return mapping
    import transformers

    for auto in ("AutoModelForSemanticSegmentation", "AutoModel"):
        try:
            if getattr(transformers, auto)._model_mapping[cls.config_class] is cls:
                return {"base_model_class": auto, "parent_library": "transformers"}
        except (KeyError, AttributeError):
            continue
    return mapping


@dataclass
class FisherTuneConfig(PeftConfig):
    """Configuration of a FisherTune adapter: sparse deltas on selected entries of the backbone.

    Args:
        target_modules (`Union[list[str], str]`, *optional*):
            Module names or a full-match regex of the linears to tune. `None` infers the paper's Eq. 3
            set (q, k, v and the FFN linears of every block) of the backbone found in the model
            (DINOv2, ViT, CLIP vision, ViT-MAE, SAM vision, EoMT); a decoder is never targeted.
        exclude_modules (`Union[list[str], str]`, *optional*):
            Module names or a regex to leave out of `target_modules`.
        delta_max (`float`):
            Share of all targeted weight entries that is allocated and trained at the end of tuning
            (Table 1 and 4: 5%).
        delta_min (`float`):
            Share active at the start of tuning; the active share grows to `delta_max` (Eq. 16).
        init_criterion (`str`, *optional*, defaults to `"magnitude"`):
            Data-free selection made at injection time: `"magnitude"` (|W|, the default) or `"random"`, so
            that the adapter can be trained, saved and tested as soon as it exists (as any PEFT method).
            `select(scores)` replaces it with DR-FIM or other scores (FisherTuneTrainer does so after its
            estimation phase). `None` allocates nothing until `select(scores)` is called; the adapter then
            has no trainable parameter.
        budget_base (`str`, defaults to `"targeted"`):
            What `delta_min` and `delta_max` are shares of. `"targeted"`: all entries of the targeted linears
            (Eq. 3). `"backbone"`: all parameters of the backbone (found like the inferred targets), the
            paper's reading of its budget (15.21M = 5% of ViT-L's 304M parameters, i.e. 5.49% of the targeted
            entries); `round(delta_max * backbone parameters)` entries are allocated, which must not exceed
            the targeted entries.
        init_weights (`bool`):
            `True` starts every delta at zero (the adapter is the identity). `False` draws small random
            deltas; only useful for tests.
        seed (`int`):
            Seed of the `"random"` init criterion.
        modules_to_save (`list[str]`, *optional*):
            Modules trained in full and saved with the adapter, e.g. the segmentation decoder.
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Module names or a full-match regex of the nn.Linear layers to tune. None infers the Eq. 3 set "
            "(q, k, v, FFN of every block) of the model's ViT backbone."
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex to exclude from the targets."}
    )
    delta_max: float = field(
        default=0.05, metadata={"help": "Share of targeted entries allocated and trained at the end (paper: 0.05)."}
    )
    delta_min: float = field(
        default=0.01, metadata={"help": "Share of targeted entries active when tuning starts (Eq. 16)."}
    )
    init_criterion: Optional[Literal["magnitude", "random"]] = field(
        default="magnitude",
        metadata={
            "help": "Data-free selection at injection: 'magnitude' (default) or 'random'; `select(scores)` replaces "
            "it (DR-FIM). None allocates nothing (no trainable parameter) until `select(scores)`."
        },
    )
    budget_base: Literal["targeted", "backbone"] = field(
        default="targeted",
        metadata={
            "help": "Base of delta_min/delta_max: 'targeted' (share of the targeted weight entries) or 'backbone' "
            "(share of all backbone parameters, the paper's 15.21M = 5% of ViT-L).",
            "choices": list(BUDGET_BASES),
        },
    )
    init_weights: bool = field(
        default=True, metadata={"help": "True: zero deltas (identity adapter). False: random deltas, for tests."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the 'random' init criterion."})
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Modules trained in full and saved with the adapter, e.g. ['decode_head']."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = FISHERTUNE_PEFT_TYPE
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = set(self.exclude_modules)
        if not 0.0 < self.delta_max <= 1.0:
            raise ValueError(
                f"delta_max must be in (0, 1], got {self.delta_max}; the paper uses 0.05 (5% of targeted entries)."
            )
        if not 0.0 <= self.delta_min <= self.delta_max:
            raise ValueError(
                f"delta_min must be in [0, delta_max={self.delta_max}], got {self.delta_min}; "
                "lower it or raise delta_max (e.g. delta_min=0.01, delta_max=0.05)."
            )
        if self.init_criterion not in (None, "magnitude", "random"):
            raise ValueError(
                f"init_criterion must be None, 'magnitude' or 'random', got {self.init_criterion!r}; "
                "Fisher-based criteria come from fishertune.fisher and are passed to `select(scores)`."
            )
        if self.budget_base not in BUDGET_BASES:
            raise ValueError(
                f"budget_base must be 'targeted' (shares of the targeted entries) or 'backbone' (shares of all "
                f"backbone parameters, as the paper counts its 15.21M), got {self.budget_base!r}."
            )

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        kwargs["auto_mapping_dict"] = transformers_auto_mapping(kwargs.get("auto_mapping_dict"))
        super().save_pretrained(save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        # PEFT renames the checkpoint's modules_to_save keys before the tuner sees them, and a missing one ends in a
        # bare KeyError; remembering the saved key names lets the tuner check them at injection (local folders only).
        path = os.path.join(pretrained_model_name_or_path, subfolder or "")
        config._fishertune_saved_keys = saved_adapter_keys(path)
        return config
