"""The registry of ViT backbone families: the one place that knows where a family keeps its blocks, which of
their linears are the Eq. 3 target set (q, k, v and the FFN of every block), how many tokens precede the
patches, and how to build, load and tap it.

Adding a family is one [`register_family`] call; the tuner presets (``target_modules``), the DSU hooks of the
Fisher estimator, the segmenters and the baselines all read this registry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedConfig

from ..registry import Registry
from .auto import build_auto_model, cls_and_registers, default_tap_kwargs, load_auto_model


@dataclass(frozen=True)
class BackboneFamily:
    r"""One ViT backbone family (a transformers model type, or a wrapper such as timm's EVA02).

    Args:
        name (`str`):
            The family's name, returned by `find_backbone`; by convention the config's `model_type`.
        target_pattern (`str`):
            Full-match regex of the Eq. 3 targets (q/k/v and FFN linears of every block) relative to the
            backbone module, without a leading dot, e.g.
            `r"encoder\.layer\.\d+\.(attention\.(q|k|v)_proj|mlp\.fc[12])"`.
            Anchor it at the block list, so that a decoder reusing leaf names (`q_proj`, `fc1`) is never caught.
        block_paths (`tuple[str, ...]`):
            Paths of the blocks' `nn.ModuleList` relative to the backbone, tried in order.
        model_types (`tuple[str, ...]`, *optional*):
            Further `config.model_type` values this family answers to (e.g. `"clip"`, whose vision tower it builds).
        module_classes (`tuple[type, ...]`, *optional*):
            Module classes that belong to the family whatever their config says (wrappers such as `Eva02Backbone`).
        fused_qkv (`str`, *optional*):
            Leaf of a fused q/k/v linear in a block (rows ordered q, k, v), e.g. SAM's `"attn.qkv"`; `None` when
            q, k and v are separate linears.
        prefix_tokens (`Callable[[config, num_blocks], int | list[int]]`, defaults to CLS + registers):
            Tokens in front of the patch tokens. Called with `num_blocks=None` for the count at the backbone's
            input; with the number of blocks it may return one count per block (EoMT's queries join late).
        build (`Callable[[config], nn.Module]`, defaults to transformers' `AutoModel` class without pooler):
            A randomly initialised backbone for a config of the family.
        load (`Callable[[name_or_path, config, **kwargs], nn.Module]`, defaults to `from_pretrained` without pooler):
            The pretrained backbone of a folder or Hub id whose `AutoConfig` is `config`.
        spec_prefix (`str`, *optional*):
            A string prefix that selects this family in `load_backbone` (`"timm:"` for EVA02); `load` then gets
            the whole string and `config=None`.
        prepare_config (`Callable[[config], None]`, *optional*):
            Fixes a config in place before building and after loading (ViT-MAE: `mask_ratio = 0`, keep every patch).
        tap_kwargs (`Callable[[backbone, pixel_values], dict]`, defaults to interpolating position embeddings):
            Extra forward kwargs for pyramid taps (ViT-MAE: an increasing `noise`, so patches keep their order).
    """

    name: str
    target_pattern: str
    block_paths: tuple[str, ...]
    model_types: tuple[str, ...] = ()
    module_classes: tuple[type, ...] = ()
    fused_qkv: str | None = None
    prefix_tokens: Callable[..., int | list[int]] = cls_and_registers
    build: Callable[[PreTrainedConfig], nn.Module] = build_auto_model
    load: Callable[..., nn.Module] = load_auto_model
    spec_prefix: str | None = None
    prepare_config: Callable[[PreTrainedConfig], None] | None = None
    tap_kwargs: Callable[[nn.Module, torch.Tensor], dict] = default_tap_kwargs
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.block_paths:
            raise ValueError(f"BackboneFamily {self.name!r} needs at least one block path (e.g. 'encoder.layer').")
        object.__setattr__(self, "_regex", re.compile(self.target_pattern))

    @property
    def all_model_types(self) -> tuple[str, ...]:
        return (self.name, *self.model_types)

    def matches_target(self, relative_name: str) -> bool:
        """Whether ``relative_name`` (a module name relative to the backbone) is an Eq. 3 target."""
        return self._regex.fullmatch(relative_name) is not None


_HOW_TO_REGISTER = "fishertune.backbones.register_family(BackboneFamily(name=..., target_pattern=..., block_paths=...))"
#: The registered families by name (`register_family` also keeps their `model_types` apart).
FAMILIES: Registry[BackboneFamily] = Registry("backbone family", _HOW_TO_REGISTER)


def _unknown_message(what: str) -> str:
    return (
        f"{what} is not a registered ViT backbone family (registered: {sorted(FAMILIES)}); "
        f"add one with {_HOW_TO_REGISTER}."
    )


def register_family(family: BackboneFamily, replace: bool = False) -> BackboneFamily:
    """Add ``family`` to the registry; ``replace=True`` overwrites a family of the same name or model type."""
    taken = {t: f.name for f in FAMILIES.values() for t in f.all_model_types if f.name != family.name}
    clash = sorted(t for t in family.all_model_types if t in taken)
    if not replace and (family.name in FAMILIES or clash):
        raise ValueError(
            f"Backbone family {family.name!r} clashes with the registered "
            f"{sorted({family.name} & set(FAMILIES)) or [taken[t] for t in clash]}; pass replace=True to override."
        )
    for name in {taken[t] for t in clash}:
        FAMILIES.unregister(name)
    return FAMILIES.register(family, replace=True)


def unregister_family(name: str) -> BackboneFamily:
    """Remove and return the family ``name`` (for tests and plugins that register temporarily)."""
    if name not in FAMILIES:
        raise ValueError(_unknown_message(repr(name)))
    return FAMILIES.unregister(name)


@contextmanager
def registered(family: BackboneFamily) -> Iterator[BackboneFamily]:
    """Register ``family`` for the duration of a ``with`` block (restores whatever it replaced)."""
    previous = FAMILIES.get(family.name) if family.name in FAMILIES else None
    register_family(family, replace=previous is not None)
    try:
        yield family
    finally:
        if family.name in FAMILIES:
            FAMILIES.unregister(family.name)
        if previous is not None:
            FAMILIES.register(previous)


def families() -> dict[str, BackboneFamily]:
    """A copy of the registry, ``name -> BackboneFamily``, in registration order."""
    return dict(FAMILIES.items())


def get_family(model_type: str) -> BackboneFamily:
    """The family answering to ``model_type`` (its name or one of its ``model_types``)."""
    for family in FAMILIES.values():
        if model_type in family.all_model_types:
            return family
    raise ValueError(_unknown_message(f"model_type={model_type!r}"))


def family_of(obj: nn.Module | PreTrainedConfig | str | os.PathLike | None) -> BackboneFamily | None:
    """The family of a module (by class, then ``config.model_type``), a config, or a ``spec_prefix`` string
    (``"timm:eva02_..."``); ``None`` when it has none (a path string, a decoder module, an unknown type)."""
    if isinstance(obj, (str, os.PathLike)):
        spec = str(obj)
        return next((f for f in FAMILIES.values() if f.spec_prefix and spec.startswith(f.spec_prefix)), None)
    if isinstance(obj, nn.Module):
        for family in FAMILIES.values():
            if family.module_classes and isinstance(obj, family.module_classes):
                return family
        obj = getattr(obj, "config", None)
    model_type = getattr(obj, "model_type", None)
    if not isinstance(model_type, str):
        return None
    return next((f for f in FAMILIES.values() if model_type in f.all_model_types), None)


def find_backbone(model: nn.Module) -> tuple[str, BackboneFamily]:
    """``(path, family)`` of the outermost registered ViT backbone inside ``model``.

    A module counts as the backbone when its family is registered and the family's target pattern matches
    module names directly below it (a task model such as ``ViTForImageClassification`` shares the model type
    but holds its blocks one level down). Names only: after a first adapter the linears are tuner layers.
    ``path`` is relative to ``model`` itself; wrappers (PEFT, DDP) are searched through, not unwrapped.
    """
    for name, module in model.named_modules():
        family = family_of(module)
        if family is not None and any(family.matches_target(sub) for sub, _ in module.named_modules() if sub):
            return name, family
    raise ValueError(
        f"no registered ViT backbone found in {type(model).__name__} (registered: {sorted(FAMILIES)}; "
        f"add one with {_HOW_TO_REGISTER})"
    )


def locate(model: nn.Module) -> tuple[str, BackboneFamily, nn.Module]:
    """``(path, family, backbone)``: [`find_backbone`] plus the backbone module itself (``model`` when the path
    is empty). The path is relative to ``model``, PEFT or DDP wrappers included, so ``model.get_submodule(path)``
    is the backbone whether or not ``model`` is wrapped."""
    path, family = find_backbone(model)
    return path, family, model.get_submodule(path) if path else model


def fused_qkv_leaves() -> tuple[str, ...]:
    """Module names (last name component, e.g. ``"qkv"``) of the fused q/k/v linears of the registered families
    (rows ordered q, k, v), read when called: a family registered later counts too."""
    return tuple(sorted({f.fused_qkv.split(".")[-1] for f in FAMILIES.values() if f.fused_qkv}))


def backbone_blocks(backbone: nn.Module, family: BackboneFamily | None = None) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer blocks of ``backbone`` (also with wrapped tuner linears).

    The family's ``block_paths`` are tried in order; failing those (a model nesting the backbone one level
    down), the first ``ModuleList`` below whose first block holds a target linear.
    """
    family = family or family_of(backbone)
    if family is None:
        raise ValueError(_unknown_message(type(backbone).__name__))
    for path in family.block_paths:
        try:
            blocks = backbone.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            prefix = f"{name}.0." if name else "0."
            if any(family.matches_target(prefix + sub) for sub, _ in module[0].named_modules() if sub):
                return module
    raise ValueError(
        f"No block list found in {type(backbone).__name__} (family {family.name!r}): none of {family.block_paths} "
        "is a non-empty nn.ModuleList and no ModuleList holds a target linear; fix the family's `block_paths`."
    )


def num_prefix_tokens(backbone: nn.Module | PreTrainedConfig | None, num_blocks: int | None = None) -> int | list[int]:
    """Tokens in front of the patch tokens of a backbone (or its config): CLS + registers by default, the
    config's ``num_prefix_tokens`` (EVA02), 0 for SAM; with ``num_blocks`` EoMT gives one count per block."""
    family = family_of(backbone)
    config = getattr(backbone, "config", None) if isinstance(backbone, nn.Module) else backbone
    prefix_tokens = family.prefix_tokens if family is not None else cls_and_registers
    return prefix_tokens(config, num_blocks)
