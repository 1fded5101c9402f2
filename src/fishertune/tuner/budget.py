"""The budget of `delta_min`/`delta_max`: shares of the targeted entries, or of all backbone parameters.

The paper states its budget as 15.21M tuned entries for ViT-L, which is 5% of the backbone's 304M
parameters, not 5% of the 276.8M entries of the Eq. 3 linears (that would be 13.84M). With
``budget_base="backbone"`` a share ``p`` stands for ``round(p * n_backbone)`` entries, where
``n_backbone`` counts every parameter of the backbone that target inference finds. With a fixed
count (``FisherTuneConfig.delta_max_count``, base ``"count"``) a share ``p`` stands for
``round(p * delta_max_count)`` entries: the paper's 15.21M on any backbone.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..backbones import locate

# Adapter state and modules_to_save copies are not parameters of the base backbone.
_NOT_BASE = ("fishertune_", "lora_", ".modules_to_save.")


def num_backbone_params(model: nn.Module) -> int:
    """All base parameters of the ViT backbone of ``model`` (shared tensors counted once)."""
    try:
        _, _, backbone = locate(model)
    except ValueError as err:
        raise ValueError(
            f"budget_base='backbone' counts the parameters of the model's ViT backbone, but none was found ({err}). "
            "Use budget_base='targeted' (shares of the targeted entries) with this model."
        ) from None
    return sum(p.numel() for n, p in backbone.named_parameters() if not any(k in f".{n}" for k in _NOT_BASE))


def budget_entries(
    fraction: float,
    base: str,
    num_targeted: int,
    num_backbone: Optional[int],
    delta_max: float,
    count: Optional[int] = None,
) -> int:
    """The number of entries ``fraction`` stands for; refuses a ``delta_max`` budget beyond the targeted entries.

    ``count`` is the fixed budget of base ``"count"`` (``FisherTuneConfig.delta_max_count``)."""
    if base == "targeted":
        return int(round(fraction * num_targeted))
    if base == "count":
        if count is None:
            raise RuntimeError("budget_base='count' needs FisherTuneConfig.delta_max_count.")
        if count > num_targeted:
            raise ValueError(
                f"delta_max_count={count} is more than the {num_targeted} targeted entries: lower it or target more "
                "layers."
            )
        return int(round(fraction * count))
    if num_backbone is None:
        raise RuntimeError("budget_base='backbone' but the backbone was not counted at injection.")
    top = int(round(delta_max * num_backbone))
    if top > num_targeted:
        raise ValueError(
            f"delta_max={delta_max} of the backbone's {num_backbone} parameters is {top} entries, more than the "
            f"{num_targeted} targeted entries: lower delta_max to at most {num_targeted / num_backbone:.4g} or "
            "target more layers."
        )
    return int(round(fraction * num_backbone))
