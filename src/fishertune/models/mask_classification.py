"""Shared pieces of the mask-classification segmenters (Mask2Former, EoMT).

- `semantic_to_instances`: semantic label maps -> per-image `mask_labels` / `class_labels`.
- `mask_class_semantic_logits`: the class-mask product of the processors' semantic post-processing,
  in log space, so that the Fisher estimator and the evaluator see one per-pixel distribution.
- `DistributedMask2FormerLoss` / `DistributedEomtLoss`: the HF losses with the world-size fix.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers.models.eomt.modeling_eomt import EomtLoss
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss


def semantic_to_instances(
    labels: torch.Tensor, ignore_index: int = 255
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Split semantic maps into one binary mask per present class, as Mask2Former's semantic training does.

    Ignored pixels belong to no mask (so they count as background in the mask losses, as in
    detectron2's and mmdet's semantic Mask2Former).

    Args:
        labels (`torch.LongTensor` of shape `(batch, height, width)`): class ids, `ignore_index` = ignore.
        ignore_index (`int`): the void label.

    Returns:
        `(mask_labels, class_labels)`: lists over the batch of float masks `(n_i, H, W)` and long ids `(n_i,)`.
    """
    mask_labels, class_labels = [], []
    for label in labels:
        classes = torch.unique(label)
        classes = classes[classes != ignore_index]
        mask_labels.append((label[None] == classes[:, None, None]).float())
        class_labels.append(classes.long())
    return mask_labels, class_labels


def mask_class_semantic_logits(
    class_queries_logits: torch.Tensor, masks_queries_logits: torch.Tensor, size: tuple[int, int], eps: float = 1e-8
) -> torch.Tensor:
    """Log of `sum_q softmax(class)[..., :-1] * sigmoid(mask)`, normalised over classes, at `size`.

    The product is what `post_process_semantic_segmentation` of the Mask2Former and EoMT
    processors argmaxes; normalising it makes `softmax(result, dim=1)` the per-pixel class
    distribution. The mask logits are resized straight to `size` (bilinear), whereas the
    Mask2Former processor first goes through a fixed 384x384 (identical when `size` is 384x384).
    Computed in fp32 so that the log of small products survives mixed precision.
    """
    masks = masks_queries_logits.float()
    if tuple(masks.shape[-2:]) != tuple(size):
        masks = F.interpolate(masks, size=tuple(size), mode="bilinear", align_corners=False)
    classes = class_queries_logits.float().softmax(dim=-1)[..., :-1]
    scores = torch.einsum("bqc,bqhw->bchw", classes, masks.sigmoid())
    probs = scores / scores.sum(dim=1, keepdim=True).clamp_min(eps)
    return probs.clamp_min(eps).log()


def ddp_num_masks(class_labels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Average number of target masks per process, clamped at 1 (detectron2's normalisation).

    transformers 5.23 averages the count over ranks with accelerate's `reduce` and then divides
    by the world size again, so mask and dice losses grow with the number of processes. Here the
    count is summed over ranks once and divided once: each rank's loss is then its share of the
    global per-mask mean, and DDP's gradient averaging gives the single-process scale.
    """
    num_masks = torch.as_tensor(float(sum(len(c) for c in class_labels)), dtype=torch.float, device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_masks, op=dist.ReduceOp.SUM)
        world_size = dist.get_world_size()
    return torch.clamp(num_masks / world_size, min=1)


class DistributedMask2FormerLoss(Mask2FormerLoss):
    """`Mask2FormerLoss` whose `num_masks` has the same scale on 1 and N processes."""

    def get_num_masks(self, class_labels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        return ddp_num_masks(class_labels, device)


class DistributedEomtLoss(EomtLoss):
    """`EomtLoss` whose `num_masks` has the same scale on 1 and N processes."""

    def get_num_masks(self, class_labels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        return ddp_num_masks(class_labels, device)
