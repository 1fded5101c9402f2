"""The sparse-delta layer: a wrapped ``nn.Linear`` plus per-entry deltas at selected indices.

Per adapter the layer holds ``fishertune_values`` (trainable, one value per allocated entry),
``fishertune_indices`` (flat indices into the weight, in global-rank order), ``fishertune_ranks``
(their global ranks) and ``fishertune_shape`` (the weight shape they were made for), all keyed
by adapter name. The active entries are always a prefix of the allocated ones, so switching the
active fraction is an integer per layer; the dense weight ``W + delta`` exists only transiently
inside forward and backward.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


# -- how dL/d(values) is computed --------------------------------------------------------------------------
# Two ways to get the gradient of the deltas, which live at `idx` (flat indices into the (out, in) weight):
#
# * "dense":   the dense dL/dW = grad_out^T @ x (one GEMM, out*in*tokens MACs), then a gather at `idx`.
# * "sampled": `torch.sparse.sampled_addmm` over a CSR pattern of `idx`: one length-`tokens` dot product per
#              entry (nnz*tokens MACs) and never a dense dL/dW. The kernel needs both operands with the token
#              axis contiguous, so it also pays a transposing copy of grad_out and of x ((out+in)*tokens).
#
# Which is faster depends on the device, the dtype and the density. On CPU the sampled product is taken when
#
#     density < SAMPLED_CPU_A - SAMPLED_CPU_B * (1/out + 1/in)
#
# the form of a fit of crossover densities: the first term is the GEMM-vs-dot-product throughput ratio, the
# second the cost of the two transposes amortised over the weight. `benchmarks/sparse_grad_crossover.py`
# measures the crossover per shape and density and prints the two lines to paste here.
# Measured on a 2-core Intel Xeon VM, torch 2.13.0+cpu, fp32, ViT-S shapes at 2056 and 8200 tokens
# (benchmarks/results/sparse_grad_crossover_1thread.md, 1 thread; the 2-thread run beside it agrees within its noise):
# the sampled product wins only below ~0.5-3% density; at 5% the dense GEMM + gather is 1.4-3x faster on this CPU
# (its GEMM runs ~2-4x faster than the machine the timings came from, its sampled kernel no faster). The
# machine was shared (other jobs reniced to 19), so the fit is coarse: with it 0.5-1% layers of ViT-S/L shapes
# take the sampled path and 5% layers the dense one. Re-measure on the hardware you train on.
# `sampled_addmm` has no bfloat16/float16 kernel on CPU, so autocast-bf16 layers always take the dense path
# there. On CUDA the crossover has not been measured yet, so CUDA stays on the dense path unless the sampled
# one is forced. `set_sparse_grad_mode` / $FISHERTUNE_SPARSE_GRAD ("auto", "sampled", "dense") force either
# path; "sampled" still falls back to dense where the kernel does not exist.
SAMPLED_CPU_A = 0.0213  # fit of the 1-thread run above
SAMPLED_CPU_B = 1.879
_SAMPLED_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32, torch.float64)}
_MODES = ("auto", "sampled", "dense")
_sparse_grad_mode = os.environ.get("FISHERTUNE_SPARSE_GRAD", "auto")
if _sparse_grad_mode not in _MODES:
    raise ValueError(f"FISHERTUNE_SPARSE_GRAD must be one of {_MODES}, got {_sparse_grad_mode!r}")


def set_sparse_grad_mode(mode: str) -> str:
    """Choose how dL/d(values) is computed: "auto" (measured rule), "sampled" or "dense". Returns the old mode."""
    global _sparse_grad_mode
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    old, _sparse_grad_mode = _sparse_grad_mode, mode
    return old


def get_sparse_grad_mode() -> str:
    return _sparse_grad_mode


def sampled_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether `torch.sparse.sampled_addmm` has a kernel for this device and dtype."""
    return dtype in _SAMPLED_DTYPES.get(device_type, ())


def use_sampled_grad(device_type: str, dtype: torch.dtype, out_features: int, in_features: int, nnz: int) -> bool:
    """The dispatch rule of the values gradient (see the comment above)."""
    if _sparse_grad_mode == "dense" or not sampled_supported(device_type, dtype):
        return False
    if _sparse_grad_mode == "sampled":
        return True
    if device_type != "cpu":
        return False
    density = nnz / (out_features * in_features)
    return density < SAMPLED_CPU_A - SAMPLED_CPU_B * (1.0 / out_features + 1.0 / in_features)


class _SampledPattern:
    """The CSR pattern of one adapter's allocated entries, built once per allocation.

    The pattern is oriented so that its column count is ``min(out, in)``: the kernel walks the rows and reads
    one ``tokens``-long row of the second operand per entry, so the narrower side keeps that working set small.
    ``order`` sorts the allocated entries (global-rank order) into CSR order; a prefix of ``n`` active entries
    (Eq. 16) is the sub-pattern of the entries whose position is below ``n``, cut without another sort.
    """

    def __init__(self, idx: torch.Tensor, out_features: int, in_features: int) -> None:
        self.source, self.version = idx, idx._version
        self.transposed = out_features > in_features  # rows = in, cols = out (=the narrower side)
        idx = idx.long()
        rows, cols = idx // in_features, idx % in_features
        if self.transposed:
            rows, cols = cols, rows
        self.shape = (in_features, out_features) if self.transposed else (out_features, in_features)
        key = rows * self.shape[1] + cols
        order = torch.argsort(key)
        index_dtype = torch.int32 if max(key.numel(), self.shape[0] * self.shape[1]) < 2**31 else torch.long
        self.order = order  # position (in global-rank order) of the k-th CSR entry
        self.rows_sorted = rows[order]
        self.cols_sorted = cols[order].to(index_dtype)
        self.index_dtype = index_dtype
        self._prefix: Optional[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self.backward_calls = 0  # backward passes that used the sampled product (what ran, not what the rule said)

    def valid_for(self, idx: torch.Tensor) -> bool:
        return idx is self.source and idx._version == self.version

    def prefix(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(crow, col, gather)`` of the first ``n`` entries; ``gather[j]`` is entry ``j``'s CSR slot."""
        if self._prefix is not None and self._prefix[0] == n:
            return self._prefix[1:]
        total = self.order.numel()
        if n == total:
            keep = None
            rows, col = self.rows_sorted, self.cols_sorted
            slot_of_sorted = torch.arange(total, device=self.order.device)
            order = self.order
        else:
            keep = self.order < n
            rows, col, order = self.rows_sorted[keep], self.cols_sorted[keep], self.order[keep]
            slot_of_sorted = torch.arange(order.numel(), device=order.device)
        counts = torch.bincount(rows, minlength=self.shape[0])
        crow = torch.zeros(self.shape[0] + 1, dtype=self.index_dtype, device=rows.device)
        crow[1:] = counts.cumsum(0)
        gather = torch.empty(order.numel(), dtype=torch.long, device=order.device)
        gather[order] = slot_of_sorted
        gather = gather.to(self.index_dtype)
        self._prefix = (n, crow, col, gather)
        return crow, col, gather

    def nbytes(self) -> int:
        ts = [self.order, self.rows_sorted, self.cols_sorted] + (list(self._prefix[1:]) if self._prefix else [])
        return sum(t.numel() * t.element_size() for t in ts)


def _sampled_values_grad(grad_out2, x2, pattern: _SampledPattern, n: int) -> torch.Tensor:
    """dL/d(values) at the first ``n`` allocated entries, through ``sampled_addmm``; ``grad_out2``/``x2`` are 2-D."""
    crow, col, gather = pattern.prefix(n)
    pattern.backward_calls += 1
    # mat1 @ mat2 over the token axis: (rows, tokens) @ (tokens, cols). The kernel makes mat1 and mat2^T
    # contiguous along the token axis itself.
    if pattern.transposed:
        mat1, mat2 = x2.t(), grad_out2
    else:
        mat1, mat2 = grad_out2.t(), x2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        csr = torch.sparse_csr_tensor(crow, col, grad_out2.new_zeros(col.numel()), pattern.shape, check_invariants=False)
        vals = torch.sparse.sampled_addmm(csr, mat1, mat2, beta=0.0).values()
    return vals.index_select(0, gather)


class _SparseDeltaLinear(torch.autograd.Function):
    """``y = x (W + scatter(idx, v))^T + b`` without keeping a dense weight copy for backward.

    Backward recomputes the effective weight for ``dL/dx``. ``dL/dv`` is either the dense ``dL/dW`` gathered
    at ``idx`` or, where ``use_sampled_grad`` says it is faster, a sampled product at the entries alone
    (``pattern``: the layer's cached CSR of its allocation; ``idx`` is its first ``len(idx)`` entries). The
    dense ``dL/dW`` is formed only on the dense path or when the base weight itself is trained; every dense
    temporary dies inside backward. Autocast is resolved in forward and replayed in backward, so bf16/fp16
    training behaves like ``nn.Linear`` under autocast.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, values, idx, pattern=None):
        dtype = _compute_dtype(x, weight)
        w_eff = weight.detach().reshape(-1).index_add(0, idx, values.detach().to(weight.dtype)).view_as(weight)
        xc = x.detach().to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            y = F.linear(xc, w_eff.to(dtype), None if bias is None else bias.detach().to(dtype))
        need_x, need_w, need_b, need_v = ctx.needs_input_grad[:4]
        ctx.x_dtype, ctx.dtype, ctx.w_dtype, ctx.v_dtype = x.dtype, dtype, weight.dtype, values.dtype
        ctx.b_dtype = None if bias is None else bias.dtype
        ctx.pattern = pattern if (need_v and not need_w) else None
        ctx.save_for_backward(
            xc if (need_w or need_v) else None,
            weight if need_x else None,
            values if need_x else None,
            idx,
        )
        return y

    @staticmethod
    def backward(ctx, grad_out):
        xc, weight, values, idx = ctx.saved_tensors
        need_x, need_w, need_b, need_v = ctx.needs_input_grad[:4]
        grad_out = grad_out.to(ctx.dtype)
        gx = gw = gb = gv = None
        if need_x:
            w_eff = weight.reshape(-1).index_add(0, idx, values.to(weight.dtype)).view_as(weight)
            gx = (grad_out @ w_eff.to(ctx.dtype)).to(ctx.x_dtype)
            # Free the recomputed weight before the dense dL/dW exists: only one weight-sized
            # temporary is alive at a time, at the point of the step's activation peak.
            del w_eff
        if need_w or need_v:
            go2 = grad_out.reshape(-1, grad_out.shape[-1])
            x2 = xc.reshape(-1, xc.shape[-1])
            if ctx.pattern is not None:
                gv = _sampled_values_grad(go2, x2, ctx.pattern, idx.numel()).to(ctx.v_dtype)
            else:
                dense = go2.t() @ x2
                if need_v:
                    gv = dense.reshape(-1).index_select(0, idx).to(ctx.v_dtype)
                if need_w:
                    gw = dense.to(ctx.w_dtype)
                del dense
        if need_b and ctx.b_dtype is not None:
            gb = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.b_dtype)
        return gx, gw, gb, gv, None, None


class FisherTuneLayer(BaseTunerLayer):
    """State and bookkeeping of the sparse deltas; see the module docstring."""

    adapter_layer_names = ("fishertune_values",)
    other_param_names = ("fishertune_indices", "fishertune_ranks", "fishertune_shape", "fishertune_active")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.fishertune_values = nn.ParameterDict({})
        self.fishertune_indices = BufferDict({}, persistent=True)
        self.fishertune_ranks = BufferDict({}, persistent=True)
        self.fishertune_shape = BufferDict({}, persistent=True)
        self.fishertune_active: dict[str, int] = {}
        # adapter name -> _SampledPattern of its allocation (not state: rebuilt on demand, dropped by `allocate`)
        self._fishertune_patterns: dict[str, _SampledPattern] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"FisherTune wraps torch.nn.Linear layers only, got {type(base).__name__}; "
                "remove this module from `target_modules`."
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
                f"The FisherTune adapter '{adapter_name}' was made for a weight of shape {tuple(int(s) for s in shape)} "
                f"but this layer's weight has shape {expected}: the adapter belongs to another model."
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= weight.numel()):
            raise ValueError(
                f"FisherTune indices of adapter '{adapter_name}' fall outside this layer's weight of shape "
                f"{expected}: the adapter belongs to another model."
            )
        if indices.numel() != ranks.numel():
            raise ValueError("fishertune_indices and fishertune_ranks must have the same length.")
        for store in (self.fishertune_values, self.fishertune_indices, self.fishertune_ranks, self.fishertune_shape):
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
        self.fishertune_active[adapter_name] = indices.numel()
        self.set_adapter(self.active_adapters)

    def set_active_rank(self, adapter_name: str, num_global_active: int) -> int:
        """Activate the entries whose global rank is below ``num_global_active``; returns their count."""
        if adapter_name not in self.fishertune_ranks:
            return 0
        ranks = self.fishertune_ranks[adapter_name]
        n = int(torch.searchsorted(ranks, torch.tensor(num_global_active, device=ranks.device, dtype=ranks.dtype)))
        self.fishertune_active[adapter_name] = n
        return n

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

    def sampled_pattern(self, adapter_name: str) -> _SampledPattern:
        """The CSR pattern of ``adapter_name``'s allocation, built on first use and kept until it changes.

        ``allocate`` drops it; an index buffer replaced (``.to(device)``) or written in place (loading a
        checkpoint) is noticed through the tensor's identity and version counter, so a stale pattern is never used.
        """
        idx = self.fishertune_indices[adapter_name]
        pattern = self._fishertune_patterns.get(adapter_name)
        if pattern is None or not pattern.valid_for(idx):
            pattern = _SampledPattern(idx, self.out_features, self.in_features)
            self._fishertune_patterns[adapter_name] = pattern
        return pattern

    def sampled_grad_calls(self) -> int:
        """Backward passes of this layer that computed dL/d(values) by the sampled product (`use_sampled_grad`'s
        path) instead of gathering the dense dL/dW, counted since each adapter's current allocation."""
        return sum(p.backward_calls for p in self._fishertune_patterns.values())

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

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        vals, idxs = self._active_parts(self.active_adapters)
        if not vals:
            return self.base_layer(x, *args, **kwargs)
        values = vals[0] if len(vals) == 1 else torch.cat(vals)
        idx = idxs[0] if len(idxs) == 1 else torch.cat(idxs)
        base = self.get_base_layer()
        pattern = None
        # The sampled values gradient serves one adapter (several active ones may share entries, and their
        # concatenation has no cached pattern) whose base weight is frozen; see `use_sampled_grad` for the rule.
        if len(vals) == 1 and torch.is_grad_enabled() and values.requires_grad and not base.weight.requires_grad:
            dtype = _compute_dtype(x, base.weight)
            if use_sampled_grad(x.device.type, dtype, self.out_features, self.in_features, idx.numel()):
                name = next(n for n in self.active_adapters if self.fishertune_active.get(n, 0) > 0 and n in self.fishertune_values)
                pattern = self.sampled_pattern(name)
        return _SparseDeltaLinear.apply(x, base.weight, base.bias, values, idx, pattern)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return False

    def __repr__(self) -> str:
        return "fishertune." + super().__repr__()
