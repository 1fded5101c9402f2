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
#: The base of a fixed-count budget (`delta_max_count`): set by the config itself, never chosen by hand.
COUNT_BASE = "count"
_DEFAULT_SHARES = (0.01, 0.05)  # delta_min, delta_max: the paper's 1% -> 5% ramp


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
        delta_max (`float`, *optional*, defaults to 0.05):
            Share of all targeted weight entries that is allocated and trained at the end of tuning
            (Table 1 and 4: 5%).
        delta_min (`float`, *optional*, defaults to 0.01):
            Share active at the start of tuning; the active share grows to `delta_max` (Eq. 16).
        delta_max_count (`int`, *optional*):
            A fixed number of entries allocated and trained at the end of tuning, whatever the backbone: the paper's
            Table 1 tunes 15.21M entries on every backbone, Large and Huge alike, which no share reproduces
            (`delta_max_count=15_210_000`). Mutually exclusive with `delta_max`, `delta_min` and `budget_base`:
            the config then records `budget_base="count"`, `delta_max=1` and `delta_min=delta_min_count /
            delta_max_count` (the shares of the count that the Eq. 16 schedule ramps between).
        delta_min_count (`int`, *optional*):
            Entries active when tuning starts with `delta_max_count`; None: a fifth of `delta_max_count` (the
            1% -> 5% proportion of the default shares). Equal to `delta_max_count`: no ramp.
        init_criterion (`str`, *optional*, defaults to `"magnitude"`):
            Data-free selection made at injection time: `"magnitude"` (|W|, the default) or `"random"`, so
            that the adapter can be trained, saved and tested as soon as it exists (as any PEFT method).
            `select(scores)` replaces it with DR-FIM or other scores (FisherTuneTrainer does so after its
            estimation phase). `None` allocates nothing until `select(scores)` is called; the adapter then
            has no trainable parameter.
        budget_base (`str`, defaults to `"targeted"`):
            What `delta_min` and `delta_max` are shares of. `"targeted"`: all entries of the targeted linears
            (Eq. 3). `"backbone"`: all parameters of the backbone (found like the inferred targets), the
            paper's reading of its budget (5% of DINOv2-L's 304.37M parameters is 15.22M, the paper prints 15.21M;
            5.5% of the targeted entries); `round(delta_max * backbone parameters)` entries are allocated, which
            must not exceed the targeted entries. `"count"` is recorded by the config itself for `delta_max_count`.
        init_weights (`bool`):
            `True` starts every delta at zero (the adapter is the identity). `False` draws small random
            deltas; only useful for tests.
        seed (`int`):
            Seed of the `"random"` init criterion.
        modules_to_save (`list[str]`, *optional*):
            Modules trained in full and saved with the adapter, e.g. the segmentation decoder.
        layers_to_transform (`Union[list[int], int]`, *optional*):
            Block indices whose targeted linears are wrapped (as in LoRA), also with the inferred targets:
            `[0]` tunes the first block only. `None` wraps every block.
        layers_pattern (`Union[list[str], str]`, *optional*):
            Name of the module list that holds the blocks (e.g. `"layer"` or `"layers"`), used with
            `layers_to_transform`; `None` takes the first numbered module in a target's name.
        allocation (`dict[str, list[int]]`, *optional*):
            `{targeted layer: [allocated entries, active entries]}`, written when the adapter is saved (not
            set by hand), so that a loader that sizes the adapter before reading its file (transformers'
            `load_adapter`) gives every layer the saved number of entries. A config that has it allocates
            these placeholders at injection instead of running `init_criterion`; the file fills them.
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
    # None = the default share (0.05 / 0.01), so that a share given together with a count can be refused.
    delta_max: Optional[float] = field(
        default=None,
        metadata={"help": "Share of targeted entries allocated and trained at the end (paper: 0.05; default 0.05)."},
    )
    delta_min: Optional[float] = field(
        default=None, metadata={"help": "Share of targeted entries active when tuning starts (Eq. 16; default 0.01)."}
    )
    delta_max_count: Optional[int] = field(
        default=None,
        metadata={
            "help": "Fixed number of entries trained at the end, on any backbone (paper: "
            "15210000); exclusive with delta_max/delta_min/budget_base."
        },
    )
    delta_min_count: Optional[int] = field(
        default=None, metadata={"help": "Entries active when tuning starts with delta_max_count (default: a fifth)."}
    )
    init_criterion: Optional[Literal["magnitude", "random"]] = field(
        default="magnitude",
        metadata={
            "help": "Data-free selection at injection: 'magnitude' (default) or 'random'; `select(scores)` replaces "
            "it (DR-FIM). None allocates nothing (no trainable parameter) until `select(scores)`."
        },
    )
    budget_base: Literal["targeted", "backbone", "count"] = field(
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

    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None,
        metadata={"help": "Block indices to tune (e.g. [0]); None tunes every block's targeted linears."},
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Name of the block list (e.g. 'layer'), used with layers_to_transform."},
    )
    allocation: Optional[dict[str, list[int]]] = field(
        default=None,
        metadata={
            "help": "Written on save: {targeted layer: [allocated, active]} so loaders that size tensors before "
            "reading the file allocate the saved shapes. Not set by hand."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = FISHERTUNE_PEFT_TYPE
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = set(self.exclude_modules)
        self._resolve_budget()
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
        if self.layers_pattern is not None and self.layers_to_transform is None:
            raise ValueError(
                f"layers_pattern={self.layers_pattern!r} needs layers_to_transform "
                "(the block indices to tune, e.g. [0])."
            )
        if self.allocation is not None:
            bad = [k for k, v in self.allocation.items() if len(v) != 2 or not 0 <= int(v[1]) <= int(v[0])]
            if bad:
                raise ValueError(
                    f"allocation must map each targeted layer to [allocated, active] with 0 <= active <= allocated; "
                    f"{bad[:3]} do not. It is written by save_pretrained: re-save the adapter instead of editing it."
                )
        if self.budget_base not in (*BUDGET_BASES, COUNT_BASE):
            raise ValueError(
                f"budget_base must be 'targeted' (shares of the targeted entries) or 'backbone' (shares of all "
                f"backbone parameters, as the paper counts its 15.21M), got {self.budget_base!r}."
            )

    def _resolve_budget(self) -> None:
        """Shares by default; with `delta_max_count`, the shares of the count (what a saved config reloads as)."""
        if self.delta_max_count is None:
            if self.delta_min_count is not None:
                raise ValueError(
                    f"delta_min_count={self.delta_min_count} needs delta_max_count (the fixed budget it "
                    "ramps to); set both, or use the shares delta_min/delta_max."
                )
            if self.budget_base == COUNT_BASE:
                raise ValueError(
                    "budget_base='count' is set by delta_max_count; give delta_max_count, or use "
                    "budget_base='targeted' or 'backbone' with shares."
                )
            self.delta_min = _DEFAULT_SHARES[0] if self.delta_min is None else self.delta_min
            self.delta_max = _DEFAULT_SHARES[1] if self.delta_max is None else self.delta_max
            return
        k_max = self.delta_max_count
        if isinstance(k_max, bool) or not isinstance(k_max, int) or k_max < 1:
            raise ValueError(f"delta_max_count must be a positive number of entries, got {k_max!r} (paper: 15210000).")
        k_min = k_max // 5 if self.delta_min_count is None else self.delta_min_count
        if isinstance(k_min, bool) or not isinstance(k_min, int) or not 0 <= k_min <= k_max:
            raise ValueError(
                f"delta_min_count must be a number of entries in [0, delta_max_count={k_max}], got {k_min!r}."
            )
        shares = (k_min / k_max, 1.0)
        given = {"delta_min": self.delta_min, "delta_max": self.delta_max}
        # A reloaded config carries the shares of the count that this method wrote; anything else was set by hand.
        if (any(v is not None for v in given.values()) or self.budget_base != "targeted") and not (
            self.budget_base == COUNT_BASE and (self.delta_min, self.delta_max) == shares
        ):
            raise ValueError(
                f"delta_max_count={k_max} fixes the budget as a number of entries; it is mutually exclusive with "
                f"the shares (delta_min={self.delta_min}, delta_max={self.delta_max}, budget_base="
                f"{self.budget_base!r}): leave those unset, or drop delta_max_count/delta_min_count."
            )
        self.delta_min_count, (self.delta_min, self.delta_max), self.budget_base = k_min, shares, COUNT_BASE

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
