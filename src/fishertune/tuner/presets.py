"""Eq. 3 target presets (q, k, v and the FFN linears of every block), read from the backbone registry.

Each family's pattern lives in [`fishertune.backbones`] and is anchored here at the backbone's own path inside
the model, so that a segmentation decoder that reuses the same leaf names (Mask2Former's ``self_attn.q_proj``
and ``fc1``, EoMT's ``mask_head.fc1``) is never caught.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from torch import nn

from .. import backbones
from ..backbones import num_prefix_tokens  # noqa: F401  (public here since the presets were introduced)


class _FusedQkvFamilies(Mapping):
    """``family name -> fused q/k/v leaf`` of the registered families that fuse them, read live from the registry
    (a family registered later appears here too)."""

    def _items(self) -> dict[str, str]:
        return {name: f.fused_qkv for name, f in backbones.families().items() if f.fused_qkv}

    def __getitem__(self, name: str) -> str:
        return self._items()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return repr(self._items())


#: Families whose attention fuses q, k and v into one linear (rows ordered q, k, v), e.g. SAM's ``attn.qkv``.
FUSED_QKV_FAMILIES: Mapping[str, str] = _FusedQkvFamilies()


def find_backbone(model: nn.Module) -> tuple[str, str]:
    """Return ``(path, family name)`` of the outermost registered ViT backbone inside ``model``.

    See [`fishertune.backbones.find_backbone`] (which returns the [`BackboneFamily`] itself). Raises a
    ``ValueError`` naming the registered families, and how to register one, when none is found.
    """
    path, family = backbones.find_backbone(model)
    return path, family.name


def target_regex(model: nn.Module) -> str:
    """The Eq. 3 target set of ``model``'s backbone as a full-match regex for PEFT's ``target_modules``."""
    path, family = backbones.find_backbone(model)
    prefix = re.escape(path + ".") if path else ""
    return prefix + family.target_pattern


def block_patterns() -> dict[str, str]:
    """``family name -> block pattern`` (relative to the backbone) of the registered families, for docs and tests."""
    return {name: family.target_pattern for name, family in backbones.families().items()}
