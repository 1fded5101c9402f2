"""The sparse-delta layer: a wrapped ``nn.Linear`` plus per-entry deltas at selected indices.

Per adapter the layer holds ``fishertune_values`` (trainable, one value per allocated entry),
``fishertune_indices`` (flat indices into the weight, in global-rank order), ``fishertune_ranks``
(their global ranks) and ``fishertune_shape`` (the weight shape they were made for), all keyed
by adapter name. The active entries are always a prefix of the allocated ones, so switching the
active fraction is an integer per layer; the dense weight ``W + delta`` exists only transiently
inside forward and backward.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from .sparse_grad import SelectionPattern, SparseDeltaLinear, compute_dtype, values_grad_path


class FisherTuneLayer(BaseTunerLayer):
    """State and bookkeeping of the sparse deltas; see the module docstring."""

    adapter_layer_names = ("fishertune_values",)
    other_param_names = (
        "fishertune_indices", "fishertune_ranks", "fishertune_shape", "fishertune_active", "fishertune_active_count",
    )  # fmt: skip

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.fishertune_values = nn.ParameterDict({})
        self.fishertune_indices = BufferDict({}, persistent=True)
        self.fishertune_ranks = BufferDict({}, persistent=True)
        self.fishertune_shape = BufferDict({}, persistent=True)
        self.fishertune_active: dict[str, int] = {}
        # The same count as a 0-d tensor (not saved), so a compiled forward reads it as data: a new active count
        # (Eq. 16 changes it every step) is not a new graph.
        self.fishertune_active_count = BufferDict({}, persistent=False)
        # adapter name -> SelectionPattern of its allocation (not state: rebuilt on demand, dropped by `allocate`)
        self._fishertune_patterns: dict[str, SelectionPattern] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"Target module {type(base).__name__} is not supported: FisherTune wraps torch.nn.Linear layers "
                "only; remove this module from `target_modules`."
            )
        self.in_features, self.out_features = base.in_features, base.out_features
        self.kwargs = kwargs

    # -- allocation -------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, inference_mode: bool = False, **kwargs: Any) -> None:
        """Register ``adapter_name`` on this layer with no allocated entry yet (see ``allocate``)."""
        self.fishertune_active[adapter_name] = 0
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def allocate(
        self,
        adapter_name: str,
        indices: torch.Tensor,
        ranks: torch.Tensor,
        init_weights: bool = True,
        shape: Optional[torch.Size] = None,
    ) -> None:
        """Allocate ``indices`` (global-rank order) with zero deltas, all of them active.

        The tuner narrows the active prefix with ``set_active_rank`` (Eq. 16). A layer that gets
        no entry keeps no trainable tensor for this adapter at all.
        """
        weight = self.get_base_layer().weight
        expected = tuple(weight.shape)
        if shape is not None and tuple(int(s) for s in shape) != expected:
            raise ValueError(
                f"The FisherTune adapter '{adapter_name}' was made for a weight of shape "
                f"{tuple(int(s) for s in shape)} "
                f"but this layer's weight has shape {expected}: the adapter belongs to another model."
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= weight.numel()):
            raise ValueError(
                f"FisherTune indices of adapter '{adapter_name}' fall outside this layer's weight of shape "
                f"{expected}: the adapter belongs to another model."
            )
        if indices.numel() != ranks.numel():
            raise ValueError("fishertune_indices and fishertune_ranks must have the same length.")
        stores = (self.fishertune_values, self.fishertune_indices, self.fishertune_ranks, self.fishertune_shape)
        for store in stores + (self.fishertune_active_count,):
            if adapter_name in store:
                del store[adapter_name]
        self._fishertune_patterns.pop(adapter_name, None)  # the selection changed: its CSR pattern is stale
        self.fishertune_active[adapter_name] = 0
        if indices.numel() == 0:
            return
        device = weight.device
        # int32 halves the index storage (the bulk of the adapter's bytes) wherever it can address the entries.
        idx_dtype = torch.int32 if weight.numel() < 2**31 else torch.long
        rank_dtype = torch.int32 if int(ranks.max()) < 2**31 - 1 else torch.long
        self.fishertune_indices[adapter_name] = indices.to(device=device, dtype=idx_dtype)
        self.fishertune_ranks[adapter_name] = ranks.to(device=device, dtype=rank_dtype)
        self.fishertune_shape[adapter_name] = torch.tensor(expected, dtype=torch.long, device=device)
        # Deltas take the weight's dtype, like other PEFT adapters; PEFT upcasts fp16/bf16 adapters to fp32 afterwards
        # unless `autocast_adapter_dtype=False`.
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        init = torch.zeros(indices.numel(), device=device, dtype=dtype)
        if not init_weights:
            # Non-zero deltas make the adapter a non-identity from the start (tests of merge etc.). They come from
            # torch's global RNG, as in other PEFT methods: `torch.manual_seed` makes them reproducible, and two
            # adapters on the same entries still differ.
            scale = weight.detach().float().std().clamp_min(1e-3).cpu()
            init = (torch.randn(indices.numel()) * scale).to(device=device, dtype=dtype)
        self.fishertune_values[adapter_name] = nn.Parameter(init)
        self.fishertune_active_count[adapter_name] = torch.tensor(0, device=device)
        self.set_active_count(adapter_name, indices.numel())
        self.set_adapter(self.active_adapters)

    def set_active_rank(self, adapter_name: str, num_global_active: int) -> int:
        """Activate the entries whose global rank is below ``num_global_active``; returns their count."""
        if adapter_name not in self.fishertune_ranks:
            return 0
        ranks = self.fishertune_ranks[adapter_name]
        n = int(torch.searchsorted(ranks, torch.tensor(num_global_active, device=ranks.device, dtype=ranks.dtype)))
        self.set_active_count(adapter_name, n)
        return n

    def set_active_count(self, adapter_name: str, n: int) -> None:
        """Make the first ``n`` allocated entries of ``adapter_name`` the active ones."""
        self.fishertune_active[adapter_name] = n
        if adapter_name in self.fishertune_active_count:
            self.fishertune_active_count[adapter_name].fill_(n)

    def num_allocated(self, adapter_name: str) -> int:
        return self.fishertune_indices[adapter_name].numel() if adapter_name in self.fishertune_indices else 0

    def _active_parts(self, adapters) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        vals, idxs = [], []
        for name in adapters:
            n = self.fishertune_active.get(name, 0)
            if name in self.fishertune_values and n > 0:
                v = self.fishertune_values[name]
                vals.append(v if n == v.numel() else v[:n])
                idxs.append(self.fishertune_indices[name][:n])
        return vals, idxs

    def selection_pattern(self, adapter_name: str) -> SelectionPattern:
        """What the sparse gradient paths need of ``adapter_name``'s allocation, built on first use and kept until
        it changes.

        ``allocate`` drops it; an index buffer replaced (``.to(device)``) or written in place (loading a
        checkpoint) is noticed through the tensor's identity and version counter, so a stale pattern is never used.
        """
        idx = self.fishertune_indices[adapter_name]
        pattern = self._fishertune_patterns.get(adapter_name)
        if pattern is None or not pattern.valid_for(idx):
            pattern = SelectionPattern(idx, self.out_features, self.in_features)
            self._fishertune_patterns[adapter_name] = pattern
        return pattern

    def values_grad_calls(self) -> dict[str, int]:
        """Backward passes of this layer that computed dL/d(values) by the sampled product or the compact GEMM
        instead of gathering the dense dL/dW (what ran, see `sparse_grad.values_grad_path`), counted since each
        adapter's current allocation."""
        return {path: sum(p.calls[path] for p in self._fishertune_patterns.values()) for path in ("sampled", "compact")}

    def selection_pattern_bytes(self) -> int:
        """Bytes held by the selection patterns built so far (the index structures of the sparse gradient paths)."""
        return sum(p.nbytes() for p in self._fishertune_patterns.values())

    def sampled_grad_calls(self) -> int:
        return self.values_grad_calls()["sampled"]

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The dense delta of ``adapter`` (active entries only), shaped like the weight."""
        w = self.get_base_layer().weight
        vals, idxs = self._active_parts([adapter])
        delta = torch.zeros(w.numel(), device=w.device, dtype=torch.float32)
        if vals:
            delta.index_add_(0, idxs[0], vals[0].float())
        return delta.view_as(w)


class Linear(nn.Module, FisherTuneLayer):
    """FisherTune around an ``nn.Linear``."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().__init__()
        FisherTuneLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        weight = self.get_base_layer().weight
        for name in adapter_names:
            vals, idxs = self._active_parts([name])
            if not vals:
                self.merged_adapters.append(name)
                continue
            delta = vals[0].detach().to(weight.dtype)
            if safe_merge:
                merged = weight.data.reshape(-1).index_add(0, idxs[0], delta)
                if not torch.isfinite(merged).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
                weight.data.copy_(merged.view_as(weight))
            else:
                weight.data.view(-1).index_add_(0, idxs[0], delta)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            vals, idxs = self._active_parts([name])
            if vals:
                weight.data.view(-1).index_add_(0, idxs[0], -vals[0].detach().to(weight.dtype))

    def _mixed_batch_forward(
        self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
    ) -> torch.Tensor:
        """Sample i gets adapter ``adapter_names[i]`` ("__base__": none), as LoRA's per-sample adapters."""
        if len(adapter_names) != len(x):
            raise ValueError(
                f"Length of `adapter_names` should be the same as the number of inputs, but got {len(adapter_names)} "
                f"and {len(x)} respectively."
            )
        if self.merged:
            raise ValueError(
                "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first."
            )
        result = self.base_layer(x, *args, **kwargs)
        base = self.get_base_layer()
        for name in dict.fromkeys(adapter_names):
            vals, idxs = self._active_parts([name]) if name != "__base__" else ([], [])
            if not vals:
                continue
            rows = [i for i, n in enumerate(adapter_names) if n == name]
            # The single-adapter forward over the whole batch, so each sample gets bitwise what it gets alone (a GEMM
            # over a sub-batch may round differently); inference pays one layer product per distinct adapter.
            out = SparseDeltaLinear.apply(x, base.weight, base.bias, vals[0], idxs[0], None, "dense")
            result[rows] = out[rows].to(result.dtype)
        return result

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is not None and not self.disable_adapters:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        if torch.compiler.is_compiling():
            return self._compiled_forward(x, *args, **kwargs)
        vals, idxs = self._active_parts(self.active_adapters)
        if not vals:
            return self.base_layer(x, *args, **kwargs)
        values = vals[0] if len(vals) == 1 else torch.cat(vals)
        idx = idxs[0] if len(idxs) == 1 else torch.cat(idxs)
        base = self.get_base_layer()
        pattern, path = None, "dense"
        # The sparse values-gradient paths serve one adapter (several active ones may share entries, and their
        # concatenation has no cached pattern) whose base weight is frozen; `values_grad_path` holds the rule.
        if len(vals) == 1 and torch.is_grad_enabled() and values.requires_grad and not base.weight.requires_grad:
            name = next(
                n for n in self.active_adapters if self.fishertune_active.get(n, 0) > 0 and n in self.fishertune_values
            )
            n = idx.numel()
            path = values_grad_path(
                x.device.type,
                compute_dtype(x, base.weight),
                self.out_features,
                self.in_features,
                n,
                block=lambda: self.selection_pattern(name).block_size(n),
            )
            if path != "dense":
                pattern = self.selection_pattern(name)
        return SparseDeltaLinear.apply(x, base.weight, base.bias, values, idx, pattern, path)

    def _compiled_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The forward torch.compile traces: every allocated entry, the inactive ones masked by the active count
        tensor (no Python int from the data, so no graph break and no recompile when Eq. 16 moves the count), and
        the dense values gradient (the sparse paths' dispatch is host-side logic on the selection)."""
        vals, idxs = [], []
        for name in self.active_adapters:
            if name in self.fishertune_values:
                v = self.fishertune_values[name]
                active = torch.arange(v.shape[0], device=v.device) < self.fishertune_active_count[name]
                vals.append(v * active.to(v.dtype))
                idxs.append(self.fishertune_indices[name])
        if not vals:
            return self.base_layer(x, *args, **kwargs)
        values, idx = (vals[0], idxs[0]) if len(vals) == 1 else (torch.cat(vals), torch.cat(idxs))
        base = self.get_base_layer()
        return SparseDeltaLinear.apply(x, base.weight, base.bias, values, idx, None, "dense")

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return False

    def __repr__(self) -> str:
        return "fishertune." + super().__repr__()
