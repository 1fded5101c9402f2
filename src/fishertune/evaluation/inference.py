"""Whole-image and sliding-window inference over any model exposing `semantic_logits`.

The model contract (ARCHITECTURE.md): `out = model(pixel_values=x)` then
`model.semantic_logits(out, size) -> [B, C, *size]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@torch.no_grad()
def whole_inference(model, pixel_values: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Logits [B, C, H, W] of the whole image in one forward pass.

    Args:
        model: a segmentation model with `semantic_logits(outputs, size)`.
        pixel_values (`torch.Tensor`): [B, 3, H, W].
        size (`tuple[int, int]`, *optional*): output size; the input size by default.
    """
    out = model(pixel_values=pixel_values)
    return model.semantic_logits(out, tuple(size) if size is not None else tuple(pixel_values.shape[-2:]))


@torch.no_grad()
def slide_inference(model, pixel_values: torch.Tensor, num_classes: int, crop_size=512, stride=341,
                    average: str = "logits", pad_to_crop: bool = True) -> torch.Tensor:  # fmt: skip
    """mmseg's slide_inference: overlapping crops, their outputs averaged where they overlap.

    Windows start every `stride` pixels; the last one of a row/column is shifted back to end at
    the image border, so every pixel is covered and no window leaves the image.

    Args:
        model: a segmentation model with `semantic_logits(outputs, size)`.
        pixel_values (`torch.Tensor`): [B, 3, H, W].
        num_classes (`int`): C.
        crop_size (`int` or `tuple[int, int]`, *optional*, defaults to `512`): window (h, w).
        stride (`int` or `tuple[int, int]`, *optional*, defaults to `341`): window step (h, w).
        average (`str`, *optional*, defaults to `"logits"`): average the `"logits"` (mmseg) or
            the softmax `"probs"` of overlapping windows.
        pad_to_crop (`bool`, *optional*, defaults to `True`): an image smaller than the window is
            zero-padded to the full window (models with fixed-size position embeddings need it)
            and the padding cut from the output; with `False` the window shrinks to the image.

    Returns:
        `torch.Tensor`: [B, C, H, W] averaged logits (or probabilities).
    """
    if average not in ("logits", "probs"):
        raise ValueError(f"average must be 'logits' or 'probs', got {average!r}")
    (ch, cw), (sh, sw) = _pair(crop_size), _pair(stride)
    b, _, h, w = pixel_values.shape
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    preds = pixel_values.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = pixel_values.new_zeros((1, 1, h, w), dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            crop = pixel_values[:, :, y1:y2, x1:x2]
            size = crop.shape[-2:]
            if pad_to_crop and (size[0] < ch or size[1] < cw):
                crop = F.pad(crop, (0, cw - size[1], 0, ch - size[0]))
            logits = model.semantic_logits(model(pixel_values=crop), tuple(crop.shape[-2:]))
            logits = logits[:, :, : size[0], : size[1]].float()
            if average == "probs":
                logits = logits.softmax(1)
            preds[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count
