"""Per-sample adapters (`forward(..., adapter_names=[...])`), wired as PEFT wires LoRA's."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from functools import partial
from typing import Optional

from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from .layer import FisherTuneLayer


def _inject_adapter_names(target, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


@contextmanager
def adapter_names_hooks(model: nn.Module, training: bool, adapter_names: Optional[Sequence[str]]):
    """While active, every FisherTune layer and `modules_to_save` wrapper of ``model`` gets ``adapter_names``: sample
    i runs through adapter ``adapter_names[i]`` ("__base__": no adapter). Inference only, as in LoRA."""
    if adapter_names is None:
        yield
        return
    if training:
        raise ValueError("Cannot pass `adapter_names` when the model is in training mode; call model.eval() first.")
    known = set()
    for module in model.modules():
        if isinstance(module, FisherTuneLayer):
            known |= set(module.fishertune_active)
    unknown = {n for n in adapter_names if n != "__base__"} - known
    if unknown:
        raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
    hook = partial(_inject_adapter_names, adapter_names=list(adapter_names))
    handles = [
        module.register_forward_pre_hook(hook, with_kwargs=True)
        for module in model.modules()
        if isinstance(module, (FisherTuneLayer, AuxiliaryTrainingWrapper))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
