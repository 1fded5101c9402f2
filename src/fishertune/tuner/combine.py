"""Allocations made from other allocations: a saved layout's placeholders and the weighted union of adapters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .layer import FisherTuneLayer


def allocation_of(layers: Mapping[str, FisherTuneLayer], adapter_name: str) -> dict[str, list[int]]:
    """``{layer: [allocated, active]}`` of ``adapter_name`` (what `FisherTuneConfig.allocation` records)."""
    return {
        name: [layer.num_allocated(adapter_name), int(layer.fishertune_active.get(adapter_name, 0))]
        for name, layer in layers.items()
    }


def allocate_placeholders(
    layers: Mapping[str, FisherTuneLayer], adapter_name: str, allocation: Mapping[str, Sequence[int]]
) -> None:
    """Give every layer the saved number of entries (zero deltas at the first flat indices, consecutive ranks) and
    the saved active count, so that a loader which copies tensors into existing ones of the same shape can fill
    them. A layer the allocation does not name gets none; names the model lacks are left to the loader to report.
    """
    rank = 0
    for name, layer in layers.items():
        allocated, active = (int(v) for v in allocation.get(name, (0, 0)))
        allocated = min(allocated, layer.get_base_layer().weight.numel())
        idx = torch.arange(allocated)
        layer.allocate(adapter_name, idx, torch.arange(rank, rank + allocated))
        layer.set_active_count(adapter_name, min(active, allocated))
        rank += allocated


def check_weighted_request(peft_config: Mapping, adapters: list[str], weights: list[float], adapter_name: str) -> None:
    """Refuse an `add_weighted_adapter` call that cannot be served, saying why."""
    if not adapters or len(adapters) != len(weights):
        raise ValueError(f"Pass one weight per adapter; got {len(adapters)} adapters and {len(weights)} weights.")
    unknown = [a for a in adapters if a not in peft_config]
    if unknown:
        raise ValueError(f"Adapter(s) {unknown} do not exist; this model has {sorted(peft_config)}.")
    if adapter_name in peft_config:
        raise ValueError(f"Adapter {adapter_name!r} already exists; choose another name for the combination.")
    with_modules = [a for a in adapters if peft_config[a].modules_to_save]
    if with_modules:
        raise ValueError(
            f"add_weighted_adapter combines sparse deltas only; adapters {with_modules} also train modules_to_save "
            f"({peft_config[with_modules[0]].modules_to_save}), which have no weighted sum. Combine adapters trained "
            "without modules_to_save."
        )


def weighted_union(
    layers: Mapping[str, FisherTuneLayer], adapters: Sequence[str], weights: Sequence[float]
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``{layer: (indices, ranks, values)}`` of sum_a weights[a] * delta_a over the active entries of ``adapters``.

    Each layer holds the union of the adapters' active indices, and each value the weighted sum of the deltas at
    that entry (added in the order of ``adapters``, as the dense sum would be), so the result's dense delta equals
    sum_a w_a * delta_a. The global ranking orders entries by the best rank any adapter gave them, then by layer
    and flat index, so it is deterministic and gap-free.
    """
    per_layer: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for name, layer in layers.items():
        idxs, vals, ranks = [], [], []
        for adapter, w in zip(adapters, weights):
            n = layer.fishertune_active.get(adapter, 0)
            if adapter not in layer.fishertune_values or n == 0:
                continue
            idxs.append(layer.fishertune_indices[adapter][:n].long())
            vals.append(layer.fishertune_values[adapter].detach()[:n].float() * w)
            ranks.append(layer.fishertune_ranks[adapter][:n].long())
        if not idxs:
            continue
        idx = torch.cat(idxs)
        uniq, inv = torch.unique(idx, return_inverse=True)
        values = torch.zeros(uniq.numel(), dtype=torch.float32, device=idx.device).index_add_(0, inv, torch.cat(vals))
        best = torch.full((uniq.numel(),), torch.iinfo(torch.long).max, dtype=torch.long, device=idx.device)
        best.scatter_reduce_(0, inv, torch.cat(ranks), reduce="amin")
        per_layer[name] = (uniq, best, values)
    if not per_layer:
        return {}
    names = list(per_layer)
    best = torch.cat([per_layer[n][1].cpu() for n in names])
    order = torch.sort(best, stable=True).indices  # ties keep layer order, then flat index (unique() sorts them)
    global_rank = torch.empty_like(order)
    global_rank[order] = torch.arange(order.numel())
    out, start = {}, 0
    for name in names:
        idx, _, values = per_layer[name]
        ranks = global_rank[start : start + idx.numel()].to(idx.device)
        start += idx.numel()
        o = torch.argsort(ranks)
        out[name] = (idx[o], ranks[o], values[o])
    return out
