"""Eq. 3 target presets (q, k, v and the FFN linears of every block), read from the backbone registry.

Each family's pattern lives in [`fishertune.backbones`] and is anchored here at the backbone's own path inside
the model, so that a segmentation decoder that reuses the same leaf names (Mask2Former's ``self_attn.q_proj``
and ``fc1``, EoMT's ``mask_head.fc1``) is never caught.
"""

from __future__ import annotations

import re

from torch import nn

from .. import backbones


def target_regex(model: nn.Module) -> str:
    """The Eq. 3 target set of ``model``'s backbone as a full-match regex for PEFT's ``target_modules``."""
    try:
        path, family = backbones.find_backbone(model)
    except ValueError as err:
        raise ValueError(
            f"{err}; or pass `target_modules` (a regex matching the q/k/v and FFN linears of the backbone blocks) "
            "explicitly."
        ) from None
    prefix = re.escape(path + ".") if path else ""
    return prefix + family.target_pattern


def block_patterns() -> dict[str, str]:
    """``family name -> block pattern`` (relative to the backbone) of the registered families, for docs and tests."""
    return {name: family.target_pattern for name, family in backbones.families().items()}
