"""The image processor of the package's segmenters: what `AutoImageProcessor` and `pipeline("image-segmentation")` use.

It reproduces the evaluation transform of the recipes (`fishertune.data.eval_transforms`): an optional
keep-ratio resize to a (long, short) scale, then `(pixel / 255 - mean) / std`. Its
`post_process_semantic_segmentation` works for every segmenter of the package: per-pixel logits (light
head) are upsampled; mask-classification outputs (Mask2Former, EoMT) are combined as their own processors do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from .mask_classification import mask_class_semantic_logits


class FisherTuneImageProcessor(PilBackend):
    r"""Image processor of [`LightSegmenter`], [`PyramidMask2Former`] and [`EomtSegmenter`].

    Args:
        do_resize (`bool`, *optional*, defaults to `False`):
            Resize keeping the aspect ratio so that the short edge is `size["shortest_edge"]` unless the
            long edge would exceed `size["longest_edge"]` (mmcv's keep-ratio rescale to a (long, short) scale).
        size (`dict[str, int]`, *optional*):
            `{"shortest_edge": short, "longest_edge": long}`; needed when `do_resize`.
        image_mean, image_std (`list[float]`, *optional*, default ImageNet's):
            Normalization on the 0..1 scale, the backbone's own (from its `AutoImageProcessor` when it has one).

    Example:

        ```py
        >>> import fishertune
        >>> from transformers import pipeline
        >>> segment = pipeline("image-segmentation", model="outputs/demo_merged")   # a merged run, or base_model/
        >>> [(s["label"], s["mask"].size) for s in segment("street.png")]
        ```
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = list(IMAGENET_DEFAULT_MEAN)
    image_std = list(IMAGENET_DEFAULT_STD)
    size = None
    default_to_square = False
    do_resize = False
    do_rescale = True
    do_normalize = True

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[torch.Tensor]:
        """Class-id maps `[H, W]` per image, at `target_sizes` (default: the logits' own size).

        Args:
            outputs: a segmenter's output: `logits` `[B, C, h, w]`, or `class_queries_logits` and
                `masks_queries_logits` (mask classification).
            target_sizes (`list[tuple[int, int]]`, *optional*): `(height, width)` of each image.
        """
        masks = getattr(outputs, "masks_queries_logits", None)
        batch = (masks if masks is not None else outputs.logits).shape[0]
        if target_sizes is not None and len(target_sizes) != batch:
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {batch} images.")
        maps = []
        for i in range(batch):
            if masks is not None:
                size = tuple(target_sizes[i]) if target_sizes is not None else tuple(masks.shape[-2:])
                logits = mask_class_semantic_logits(outputs.class_queries_logits[i : i + 1], masks[i : i + 1], size)
            else:
                logits = outputs.logits[i : i + 1]
                size = tuple(target_sizes[i]) if target_sizes is not None else tuple(logits.shape[-2:])
                logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
            maps.append(logits[0].argmax(dim=0))
        return maps


def processor_for(mean_255: Sequence[float], std_255: Sequence[float],
                  scale: Sequence[int] | None = None) -> FisherTuneImageProcessor:  # fmt: skip
    """The processor matching `fishertune.data.eval_transforms(scale=scale, mean=mean_255, std=std_255)`.

    Args:
        mean_255, std_255: normalization on the 0..255 scale (the recipes' unit).
        scale (`(long, short)`, *optional*): the keep-ratio evaluation scale; None: no resize.
    """
    kwargs = dict(image_mean=[m / 255.0 for m in mean_255], image_std=[s / 255.0 for s in std_255])
    if scale is not None:
        kwargs.update(do_resize=True, size={"shortest_edge": int(min(scale)), "longest_edge": int(max(scale))})
    return FisherTuneImageProcessor(**kwargs)
