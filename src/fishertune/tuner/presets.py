"""Per-family target presets: the Eq. 3 set (q, k, v and the FFN linears of every block).

Patterns are written against the module names of transformers 5 and anchored at the backbone's
own path inside the model, so that a segmentation decoder that reuses the same leaf names
(Mask2Former's ``self_attn.q_proj`` and ``fc1``, EoMT's ``mask_head.fc1``) is never caught.
"""

from __future__ import annotations

import re

from torch import nn

# model_type -> regex relative to the backbone module (without a leading dot).
_BLOCK_PATTERNS: dict[str, str] = {
    # Dinov2Model / Dinov2Backbone: encoder.layer.N.{attention.{q,k,v}_proj, mlp.fc1/fc2 or SwiGLU}
    "dinov2": r"encoder\.layer\.\d+\.(attention\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj))",
    "dinov2_with_registers": r"encoder\.layer\.\d+\.(attention\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj))",
    # ViTModel / ViTMAEModel: layers.N.{attention.{q,k,v}_proj, mlp.fc1/fc2}
    "vit": r"layers\.\d+\.(attention\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2))",
    "vit_mae": r"layers\.\d+\.(attention\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2))",
    # CLIPVisionModel: encoder.layers.N.{self_attn.{q,k,v}_proj, mlp.fc1/fc2}
    "clip_vision_model": r"encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2))",
    # SamVisionModel: fused qkv, mlp.lin1/lin2
    "sam_vision_model": r"(vision_encoder\.)?layers\.\d+\.(attn\.qkv|mlp\.(lin1|lin2))",
    # EomtForUniversalSegmentation: the ViT blocks only, never mask_head / class_predictor
    "eomt": r"layers\.\d+\.(attention\.(q_proj|k_proj|v_proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj))",
    # fishertune.baselines.eva02.Eva02Backbone (timm eva02_*): separate or fused qkv, SwiGLU FFN in the large models
    "eva02": r"eva\.blocks\.\d+\.(attn\.(q_proj|k_proj|v_proj|qkv)|mlp\.(fc1|fc1_g|fc1_x|fc2))",
}

#: Families whose attention fuses q, k and v into one linear (rows ordered q, k, v).
FUSED_QKV_FAMILIES = {"sam_vision_model": "attn.qkv"}


def _model_type(module: nn.Module) -> str | None:
    config = getattr(module, "config", None)
    return getattr(config, "model_type", None) if config is not None else None


def num_prefix_tokens(config) -> int:
    """Tokens before the patch tokens: the config's `num_prefix_tokens` when it has one (EVA02), else
    CLS plus register tokens (DINOv2-reg: 1 + 4). HF's ViT configs have no such field."""
    explicit = getattr(config, "num_prefix_tokens", None)
    if explicit is not None:
        return int(explicit)
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def find_backbone(model: nn.Module) -> tuple[str, str]:
    """Return ``(path, model_type)`` of the outermost supported ViT backbone inside ``model``.

    A module counts as the backbone when its ``config.model_type`` is a known family and the
    family's block pattern matches linears directly below it (a task model such as
    ``ViTForImageClassification`` shares the model_type but holds its blocks one level down).
    Raises a ``ValueError`` naming the supported families when none is found.
    """
    for name, module in model.named_modules():
        mtype = _model_type(module)
        if type(module).__name__ == "CLIPVisionTransformer":
            mtype = "clip_vision_model"
        if mtype not in _BLOCK_PATTERNS:
            continue
        pattern = re.compile(_BLOCK_PATTERNS[mtype])
        # Match by name only: after a first adapter the linears are already wrapped tuner layers.
        if any(pattern.fullmatch(sub) for sub, _ in module.named_modules()):
            return name, mtype
    raise ValueError(
        "Could not infer FisherTune targets: no supported backbone found in the model (looked for model_type in "
        f"{sorted(_BLOCK_PATTERNS)}). Pass `target_modules` explicitly, e.g. a regex matching the q/k/v and FFN "
        "linears of the backbone blocks."
    )


def target_regex(model: nn.Module) -> str:
    """The Eq. 3 target set of ``model``'s backbone as a full-match regex for PEFT's ``target_modules``."""
    path, mtype = find_backbone(model)
    prefix = re.escape(path + ".") if path else ""
    return prefix + _BLOCK_PATTERNS[mtype]


def block_patterns() -> dict[str, str]:
    """A copy of the per-family block patterns (relative to the backbone), for documentation and tests."""
    return dict(_BLOCK_PATTERNS)
