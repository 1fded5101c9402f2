"""EVA02 (the fifth VFM of Table 1) through timm, behind a thin HF-style wrapper.

`Eva02Backbone` holds a timm `Eva` model at `.eva` and an HF config (`model_type="eva02"`), and its
forward takes `pixel_values` and returns a `BaseModelOutput` whose `hidden_states[i]` is the raw
output of block i (no final norm), as the HF ViTs do, so pyramid taps work unchanged.
Tests build it from timm with random init; users get weights with
`Eva02Backbone.from_timm("eva02_large_patch14_224.mim_m38m", pretrained=True)` (timm downloads
from the Hub). Requires `timm` (which requires a torchvision matching the installed torch); this
module itself imports timm only when a model is created, so `import fishertune` works without it.

Segmenters: `fishertune.models.build_model("light" | "mask2former", backbone, ...)` takes EVA02 as
an `Eva02Backbone` (weights copied), an `Eva02BackboneConfig` (random init) or the string
`"timm:<eva02 model name>"` (pretrained weights through timm), e.g.

    ```py
    >>> from fishertune.models import build_model
    >>> seg = build_model("mask2former", "timm:eva02_large_patch14_224.mim_m38m",
    ...                   num_labels=19, taps=eva02_pyramid_taps(24))
    ```

The config is registered with `transformers.AutoConfig`, so a saved segmenter reloads with
`from_pretrained` (the backbone is created randomly by timm, then filled from the checkpoint; no
download). EoMT is DINOv2-only and refuses EVA02.

This module registers the `"eva02"` [`BackboneFamily`] (found by the wrapper's class or its config's
model_type), so `fishertune.backbones.locate`, the tuner's `target_regex`, the DSU hooks and the segmenters
handle it like any HF family; `eva02_target_regex(model)` gives the same regex. `fishertune.baselines`
re-exports its public names (`Eva02Backbone`, `eva02_pyramid_taps`, ...).

EVA02-Ti/S fuse q/k/v into `attn.qkv` and timm then calls `F.linear(x, attn.qkv.weight, bias)`,
bypassing the module (a FisherTune/LoRA wrapper's delta and the Fisher hooks would be ignored);
`from_timm` switches those attentions to `qkv_bias_separate`, which calls `attn.qkv(x)` and adds
the bias after.

Extra tokens (VPT prompts, VQT queries): timm's EVA attention rotates every token after the first
`attn.num_prefix_tokens` by the RoPE table of the patch grid, so VPT/VQT insert them right after
CLS/registers and `extra_prefix_tokens` raises that count for the block's call: they stay
un-rotated and the patches keep their rotation (no timm fork; `check_extra_token_blocks` refuses
blocks whose attention has no such count). The count is an attribute mutated during the call, so a
block must not run concurrently in two threads, and `torch.compile` would see it change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedConfig
from transformers.modeling_outputs import BaseModelOutput

from .registry import BackboneFamily, register_family

#: `build_model` / `load_backbone` string prefix selecting a timm EVA02 with pretrained weights.
TIMM_PREFIX = "timm:"

#: Eq. 3 targets inside an EVA02 block, relative to the wrapper: q/k/v (separate in EVA02-B/L,
#: fused `attn.qkv` in EVA02-Ti/S) and the SwiGLU FFN (`fc1_g`, `fc1_x`, `fc2`; packed `fc1` in Ti/S).
EVA02_BLOCK_PATTERN = r"eva\.blocks\.\d+\.(attn\.(q_proj|k_proj|v_proj|qkv)|mlp\.(fc1|fc1_g|fc1_x|fc2))"


class Eva02BackboneConfig(PreTrainedConfig):
    r"""HF config of [`Eva02Backbone`].

    Args:
        timm_model_name (`str`, defaults to `"eva02_large_patch14_448"`): timm architecture name.
        timm_kwargs (`dict`, *optional*): extra `timm.create_model` arguments (e.g. a tiny test size).
        hidden_size, num_hidden_layers, patch_size, num_prefix_tokens: filled in from the timm model.
    """

    model_type = "eva02"

    timm_model_name: str = "eva02_large_patch14_448"
    timm_kwargs: dict | None = None
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    patch_size: int = 14
    num_prefix_tokens: int = 1


class Eva02Backbone(nn.Module):
    """A timm EVA02 with the attributes the package expects of an HF ViT backbone."""

    def __init__(self, eva: nn.Module, config: Eva02BackboneConfig):
        super().__init__()
        self.eva = eva
        self.config = config

    @classmethod
    def from_timm(cls, name: str = "eva02_large_patch14_448", pretrained: bool = False, **timm_kwargs) -> Eva02Backbone:
        """Create the timm model (`dynamic_img_size=True` so crops of any size work) and wrap it."""
        try:
            import timm
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("EVA02 needs timm: pip install 'timm>=1.0' (and a torchvision matching torch).") from err
        timm_kwargs.setdefault("dynamic_img_size", True)
        eva = timm.create_model(name, pretrained=pretrained, num_classes=0, **timm_kwargs)
        _route_fused_qkv_through_module(eva)
        patch = eva.patch_embed.patch_size
        config = Eva02BackboneConfig(
            timm_model_name=name,
            timm_kwargs=dict(timm_kwargs),
            hidden_size=int(eva.embed_dim),
            num_hidden_layers=len(eva.blocks),
            patch_size=int(patch[0] if isinstance(patch, (tuple, list)) else patch),
            num_prefix_tokens=int(eva.num_prefix_tokens),
        )
        return cls(eva, config)

    @classmethod
    def from_config(cls, config: Eva02BackboneConfig) -> Eva02Backbone:
        """A randomly initialised wrapper of `config`'s architecture (no download: `pretrained=False`)."""
        model = cls.from_timm(config.timm_model_name, pretrained=False, **dict(config.timm_kwargs or {}))
        got = (model.config.hidden_size, model.config.num_hidden_layers, model.config.patch_size)
        want = (config.hidden_size, config.num_hidden_layers, config.patch_size)
        if got != want:  # a hand-edited config whose shape fields disagree with the timm architecture
            raise ValueError(
                f"{config.timm_model_name} with {config.timm_kwargs} gives (hidden, depth, patch) = {got}, "
                f"but the config says {want}."
            )
        return model

    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """Recompute timm's non-persistent buffers (RoPE bands, fused-qkv `k_bias`).

        Checkpoints do not hold them, and transformers' `from_pretrained` builds the model on the meta
        device and leaves such buffers uninitialised; the segmenters call this after loading.
        """
        for module in self.eva.modules():
            if hasattr(module, "init_non_persistent_buffers"):  # timm's own convention
                module.init_non_persistent_buffers()

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False, return_dict: bool = True, **_):
        eva = self.eva
        x = eva.patch_embed(pixel_values)
        x, rope = eva._pos_embed(x)  # timm's own embedding step (abs pos embed + RoPE table)
        x = eva.norm_pre(x)
        hidden_states = [x]
        mixed = getattr(eva, "rope_mixed", False) and rope is not None
        for i, block in enumerate(eva.blocks):
            x = block(x, rope=rope[i] if mixed else rope)
            hidden_states.append(x)
        out = BaseModelOutput(
            last_hidden_state=eva.norm(x), hidden_states=tuple(hidden_states) if output_hidden_states else None
        )
        return out if return_dict else out.to_tuple()


def _route_fused_qkv_through_module(eva: nn.Module) -> None:
    """Make every fused-qkv attention call its `qkv` module (timm's `qkv_bias_separate` path)."""
    for block in eva.blocks:
        attn = getattr(block, "attn", None)
        if getattr(attn, "qkv", None) is None:
            continue
        if not hasattr(attn, "qkv_bias_separate"):
            raise RuntimeError(
                "This timm's EvaAttention has no `qkv_bias_separate`; its fused qkv may bypass the module "
                "(adapters on attn.qkv would be ignored). Use timm>=1.0.31 or an EVA02 with separate q/k/v."
            )
        attn.qkv_bias_separate = True


def check_extra_token_blocks(blocks, method: str) -> None:
    """Refuse EVA02 blocks whose attention does not expose timm's `num_prefix_tokens` (RoPE skip count)."""
    for i, block in enumerate(blocks):
        if not isinstance(getattr(getattr(block, "attn", None), "num_prefix_tokens", None), int):
            raise NotImplementedError(
                f"{method} on EVA02: block {i} ({type(block).__name__}) has no `attn.num_prefix_tokens`, so its "
                "extra tokens cannot be kept out of RoPE (timm's EvaBlock/EvaBlockPostNorm with EvaAttention or "
                "AttentionRope are supported)."
            )


@contextmanager
def extra_prefix_tokens(block: nn.Module, num: int) -> Iterator[None]:
    """Within the block, `num` tokens after the prefix are prefix too (RoPE skips them); restored on exit."""
    attn = block.attn
    base = attn.num_prefix_tokens
    attn.num_prefix_tokens = base + num
    try:
        yield
    finally:
        attn.num_prefix_tokens = base


def eva02_target_regex(model: nn.Module) -> str:
    """The Eq. 3 target set of the (first) `Eva02Backbone` inside `model`, as a full-match regex."""
    for name, module in model.named_modules():
        if isinstance(module, Eva02Backbone):
            return (re.escape(name + ".") if name else "") + EVA02_BLOCK_PATTERN
    raise ValueError("No Eva02Backbone in the model; build one with Eva02Backbone.from_timm(...).")


def eva02_pyramid_taps(num_layers: int) -> tuple[int, int, int, int]:
    """1-based taps at 1/3, 1/2, 2/3 and all of the depth: EVA02-L (24) -> 8, 12, 16, 24 as in Rein."""
    if num_layers < 4 or num_layers % 6:
        raise ValueError(f"EVA02 taps are defined for depths divisible by 6 (12, 24, ...), got {num_layers}.")
    return (num_layers // 3, num_layers // 2, 2 * num_layers // 3, num_layers)


def timm_eva02_name(spec: str) -> str:
    """The timm model name of a `"timm:<name>"` backbone string; only EVA02 models are supported."""
    name = spec[len(TIMM_PREFIX) :].strip()
    if not name.startswith("eva02"):
        raise ValueError(f"Only EVA02 models are supported through timm ('timm:eva02_...'), got {spec!r}.")
    return name


def build_eva02(config: Eva02BackboneConfig) -> Eva02Backbone:
    """A randomly initialised `Eva02Backbone` of `config`, keeping timm's own init."""
    model = Eva02Backbone.from_config(config)
    # The segmenter's post_init would otherwise redraw every timm Linear and LayerNorm with HF's generic init
    # (HF backbones keep theirs as PreTrainedModels). Not on the meta device (from_pretrained): there the
    # generic init must still fill weights a checkpoint lacks.
    if next(model.parameters()).device.type != "meta":
        for module in model.modules():
            module._is_hf_initialized = True
    return model


def load_eva02(spec: str, config=None, **timm_kwargs) -> Eva02Backbone:
    """timm's pretrained EVA02 of a `"timm:<eva02 name>"` string (`timm_kwargs` go to `timm.create_model`)."""
    return Eva02Backbone.from_timm(timm_eva02_name(str(spec)), pretrained=True, **timm_kwargs)


register_family(
    BackboneFamily(
        name="eva02",
        target_pattern=EVA02_BLOCK_PATTERN,
        block_paths=("eva.blocks",),
        module_classes=(Eva02Backbone,),
        fused_qkv="attn.qkv",  # EVA02-Ti/S only; B/L have separate q/k/v
        build=build_eva02,
        load=load_eva02,
        spec_prefix=TIMM_PREFIX,
        # prefix_tokens: the default rule reads the config's num_prefix_tokens (CLS + timm's registers)
    ),
    replace=True,  # a reloaded module registers its new wrapper class again
)

# Nested in a segmenter's saved config.json; registering lets `from_pretrained` rebuild it (no timm import).
try:
    AutoConfig.register(Eva02BackboneConfig.model_type, Eva02BackboneConfig)
except ValueError:  # already registered (module reloaded)
    pass
