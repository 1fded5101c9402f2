"""FisherTuneConfig: the PEFT config of the sparse tuner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig

from ._types import FISHERTUNE_PEFT_TYPE


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
        init_criterion (`str`, *optional*):
            Select entries at injection time: `"magnitude"` (|W|) or `"random"`. `None` (default)
            allocates nothing until `select(scores)` is called with DR-FIM or other scores.
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
        default=None,
        metadata={
            "help": "Select at injection: 'magnitude' or 'random'. None waits for `select(scores)` (DR-FIM)."
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
