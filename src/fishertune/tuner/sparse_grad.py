"""How the sparse-delta layer computes dL/d(values), the gradient of its deltas at the selected entries.

The deltas live at ``idx`` (flat indices into the ``(out, in)`` weight). Three ways to get their gradient,
all exact (the same sums of products; only the order of the additions may differ):

* ``"dense"``:   the dense dL/dW = grad_out^T @ x (one GEMM, out*in*tokens MACs), then a gather at ``idx``.
* ``"compact"``: the same GEMM restricted to the rows and columns of the weight that hold a selected entry
                 (rows*cols*tokens MACs, plus gathering those columns of grad_out and x), then a gather. A
                 Fisher selection is far from uniform: on CamVid with ViT-Ti/16 (DR-FIM, 5%) fc2's entries sit
                 in 20-50% of its input columns and q/k's in 1-20% of the block, so the block is a fraction of
                 the weight even where the density is not small.
* ``"sampled"``: `torch.sparse.sampled_addmm` over a CSR pattern of ``idx``: one length-``tokens`` dot product
                 per entry (nnz*tokens MACs), never a dense dL/dW. The kernel also pays a transposing copy of
                 grad_out and of x ((out+in)*tokens).

Which is fastest depends on the device, the dtype, the density and the block. On CPU ("auto") the sampled
product is taken when

    density < SAMPLED_CPU_A - SAMPLED_CPU_B * (1/out + 1/in)

(a fit of crossovers against the dense path: the first term is the GEMM-vs-dot-product throughput ratio, the
second the cost of the two transposes amortised over the weight), the compact GEMM when
``rows * cols < COMPACT_CPU_MAX * out * in`` (the smallest block fraction at which the compact GEMM stopped beating
the dense one), the cheaper of the two where both hold (`values_grad_path`), else the dense path.
On CPU in fp32 at ViT-S shapes (2056 and 8200 tokens, one thread) the sampled product wins only below ~0.5-3%
density and the compact GEMM below 57-94% of the weight (by shape, token count and block aspect; the constant is
the smallest crossover). `sampled_addmm` has no bfloat16/float16 kernel on CPU, so autocast-bf16 layers choose
between the compact and the dense GEMM only. The rule has no CUDA constants, so CUDA stays on the dense path
unless a mode is forced.
`set_sparse_grad_mode` / ``$FISHERTUNE_SPARSE_GRAD`` ("auto", "dense", "compact", "sampled") force a path;
"sampled" still falls back to dense where the kernel does not exist. "calibrate" replaces the constants by timing
every path on the real tensors at the first backward passes of each layer shape and selection footprint and
keeping the fastest (`grad_calibration`; opt-in because the choice depends on timings and the paths may differ in
the last bits, so resumes are bitwise-reproducible only under "auto" or a forced path).
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Optional

import torch

from . import grad_calibration

#: The fit of `benchmarks/grad_path_crossover.py --path sampled` (CPU, fp32, one thread).
SAMPLED_CPU_A = 0.0213
SAMPLED_CPU_B = 1.879
#: The smallest crossover of `benchmarks/grad_path_crossover.py --path compact` (CPU, fp32, one thread).
COMPACT_CPU_MAX = 0.56
PATHS = ("dense", "compact", "sampled")
_MODES = ("auto", "calibrate") + PATHS
_SAMPLED_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32, torch.float64)}
_sparse_grad_mode = os.environ.get("FISHERTUNE_SPARSE_GRAD", "auto")
if _sparse_grad_mode not in _MODES:
    raise ValueError(f"FISHERTUNE_SPARSE_GRAD must be one of {_MODES}, got {_sparse_grad_mode!r}")


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``nn.Linear`` would compute in: autocast's where it is on, else the weight's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


def set_sparse_grad_mode(mode: str) -> str:
    """Choose how dL/d(values) is computed: "auto" (the measured rule), "calibrate" (timed per layer key, see
    `grad_calibration`) or a forced path. Returns the old mode."""
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


def _sampled_crossover(out_features: int, in_features: int) -> float:
    return SAMPLED_CPU_A - SAMPLED_CPU_B * (1.0 / out_features + 1.0 / in_features)


def use_sampled_grad(device_type: str, dtype: torch.dtype, out_features: int, in_features: int, nnz: int) -> bool:
    """Whether the sampled product beats the dense GEMM here: forced, or (auto, CPU) below the measured density
    crossover."""
    if _sparse_grad_mode in ("dense", "compact", "calibrate") or not sampled_supported(device_type, dtype):
        return False
    if _sparse_grad_mode == "sampled":
        return True
    if device_type != "cpu":
        return False
    return nnz / (out_features * in_features) < _sampled_crossover(out_features, in_features)


def values_grad_path(
    device_type: str, dtype: torch.dtype, out_features: int, in_features: int, nnz: int, block: Callable[[], int]
) -> str:
    """The path of one backward (see the module docstring); ``block()`` is rows * cols of the entries' block,
    asked for only when the rule needs it (it may build the layer's pattern).

    Where both sparse paths beat the dense GEMM (auto, CPU), the one with the lower cost relative to it is taken,
    each cost read linearly from 0 at no work to 1 at its measured crossover: ``density / sampled crossover``
    against ``block fraction / COMPACT_CPU_MAX``. A Fisher selection at 0.5-1% often sits in a small block, where
    the compact GEMM does less work than one dot product per entry.
    """
    if _sparse_grad_mode == "dense":
        return "dense"
    if _sparse_grad_mode == "calibrate":  # "calibrate" until the key's fastest path is known
        key = grad_calibration.calibration_key(device_type, dtype, out_features, in_features, nnz, block())
        return grad_calibration.chosen_path(key) or "calibrate"
    sampled = use_sampled_grad(device_type, dtype, out_features, in_features, nnz)
    if _sparse_grad_mode != "auto" or device_type != "cpu":
        if sampled:
            return "sampled"
        # "compact" forced; "sampled" without a kernel for this dtype; CUDA: no constants
        return "compact" if _sparse_grad_mode == "compact" else "dense"
    weight = out_features * in_features
    compact_cost = block() / weight / COMPACT_CPU_MAX
    if sampled and nnz / weight / _sampled_crossover(out_features, in_features) <= compact_cost:
        return "sampled"
    return "compact" if compact_cost < 1.0 else "dense"


class SelectionPattern:
    """What the backward paths need to know about one adapter's allocated entries, built once per allocation.

    For the compact GEMM: the first position (in global-rank order) at which each row and each column of the
    weight gets an entry. For the sampled product (built on its first use only, so that layers on the other
    paths keep no per-entry copy): a CSR pattern oriented so that its column count is ``min(out, in)`` (the
    kernel walks the rows and reads one ``tokens``-long row of the second operand per entry, so the narrower side
    keeps that working set small), with ``order`` sorting the allocated entries into CSR order. The active
    entries (Eq. 16) are always a prefix of the allocated ones, so both are cut for a prefix of ``n`` entries
    without another sort, and the last cut of each is cached.
    """

    def __init__(self, idx: torch.Tensor, out_features: int, in_features: int) -> None:
        self.source, self.version = idx, idx._version
        self.out_features, self.in_features = out_features, in_features
        self.transposed = out_features > in_features  # CSR rows = in, cols = out (=the narrower side)
        self.shape = (in_features, out_features) if self.transposed else (out_features, in_features)
        flat = idx.long()
        positions = torch.arange(flat.numel(), device=idx.device)
        never = torch.full((), flat.numel(), device=idx.device, dtype=torch.long)
        self.row_first = never.expand(out_features).scatter_reduce(0, flat // in_features, positions, "amin")
        self.col_first = never.expand(in_features).scatter_reduce(0, flat % in_features, positions, "amin")
        self.index_dtype = torch.int32 if max(flat.numel(), out_features * in_features) < 2**31 else torch.long
        self._csr: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._prefix: Optional[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._block: Optional[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._block_size: Optional[tuple[int, int]] = None
        # backward passes that ran each non-dense path (what ran, not what the rule said)
        self.calls = {"sampled": 0, "compact": 0}

    def valid_for(self, idx: torch.Tensor) -> bool:
        return idx is self.source and idx._version == self.version

    def csr(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(order, rows_sorted, cols_sorted)``: ``order[k]`` is the position (in global-rank order) of the k-th
        CSR entry."""
        if self._csr is None:
            flat = self.source.long()
            rows, cols = flat // self.in_features, flat % self.in_features
            if self.transposed:
                rows, cols = cols, rows
            order = torch.argsort(rows * self.shape[1] + cols)
            self._csr = (order, rows[order], cols[order].to(self.index_dtype))
        return self._csr

    def prefix(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(crow, col, gather)`` of the first ``n`` entries; ``gather[j]`` is entry ``j``'s CSR slot."""
        if self._prefix is not None and self._prefix[0] == n:
            return self._prefix[1:]
        order, rows, col = self.csr()
        if n != order.numel():
            keep = order < n
            rows, col, order = rows[keep], col[keep], order[keep]
        slot_of_sorted = torch.arange(order.numel(), device=order.device)
        counts = torch.bincount(rows, minlength=self.shape[0])
        crow = torch.zeros(self.shape[0] + 1, dtype=self.index_dtype, device=rows.device)
        crow[1:] = counts.cumsum(0)
        gather = torch.empty(order.numel(), dtype=torch.long, device=order.device)
        gather[order] = slot_of_sorted
        gather = gather.to(self.index_dtype)
        self._prefix = (n, crow, col, gather)
        return crow, col, gather

    def block_size(self, n: int) -> int:
        """rows * cols of the smallest block of the weight that holds the first ``n`` entries (asked for by the
        dispatch at every forward, so kept for the last ``n``)."""
        if self._block_size is None or self._block_size[0] != n:
            self._block_size = (n, int((self.row_first < n).sum()) * int((self.col_first < n).sum()))
        return self._block_size[1]

    def block(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, cols, at)``: the weight rows and columns holding one of the first ``n`` entries (ascending)
        and entry ``j``'s flat position in the ``rows x cols`` block."""
        if self._block is not None and self._block[0] == n:
            return self._block[1:]
        row_used, col_used = self.row_first < n, self.col_first < n
        rows, cols = row_used.nonzero().squeeze(1), col_used.nonzero().squeeze(1)
        row_pos, col_pos = row_used.cumsum(0) - 1, col_used.cumsum(0) - 1
        flat = self.source[:n].long()
        at = row_pos[flat // self.in_features] * cols.numel() + col_pos[flat % self.in_features]
        self._block = (n, rows, cols, at.to(self.index_dtype))
        return self._block[1:]

    def nbytes(self) -> int:
        ts = [self.row_first, self.col_first, *(self._csr or ())]
        ts += list(self._prefix[1:]) if self._prefix else []
        ts += list(self._block[1:]) if self._block else []
        return sum(t.numel() * t.element_size() for t in ts)


def sampled_values_grad(grad_out2, x2, pattern: SelectionPattern, n: int) -> torch.Tensor:
    """dL/d(values) at the first ``n`` allocated entries, through ``sampled_addmm``; ``grad_out2``/``x2`` are 2-D."""
    crow, col, gather = pattern.prefix(n)
    pattern.calls["sampled"] += 1
    # mat1 @ mat2 over the token axis: (rows, tokens) @ (tokens, cols). The kernel makes mat1 and mat2^T
    # contiguous along the token axis itself.
    if pattern.transposed:
        mat1, mat2 = x2.t(), grad_out2
    else:
        mat1, mat2 = grad_out2.t(), x2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        csr = torch.sparse_csr_tensor(
            crow, col, grad_out2.new_zeros(col.numel()), pattern.shape, check_invariants=False
        )
        vals = torch.sparse.sampled_addmm(csr, mat1, mat2, beta=0.0).values()
    return vals.index_select(0, gather)


def compact_values_grad(grad_out2, x2, pattern: SelectionPattern, n: int) -> torch.Tensor:
    """dL/d(values) at the first ``n`` allocated entries from the GEMM over their rows x cols block only."""
    rows, cols, at = pattern.block(n)
    pattern.calls["compact"] += 1
    # A side the entries cover completely (fc1's inputs, fc2's and v's outputs often are) needs no gather.
    g = grad_out2 if rows.numel() == grad_out2.shape[1] else grad_out2.index_select(1, rows)
    xs = x2 if cols.numel() == x2.shape[1] else x2.index_select(1, cols)
    return (g.t() @ xs).reshape(-1).index_select(0, at)


_PATH_FNS = {"sampled": sampled_values_grad, "compact": compact_values_grad}


def calibrating_values_grad(grad_out2, x2, pattern: SelectionPattern, idx: torch.Tensor) -> torch.Tensor:
    """One timed run of every path that can serve this backward (`grad_calibration.time_paths`); returns the
    dense path's result, so a calibrating step computes what a forced-dense step does."""
    n, weight = idx.numel(), pattern.out_features * pattern.in_features
    block = pattern.block_size(n)
    fns = {"dense": lambda: (grad_out2.t() @ x2).reshape(-1).index_select(0, idx)}
    if block < weight:
        fns["compact"] = lambda: compact_values_grad(grad_out2, x2, pattern, n)
    if sampled_supported(grad_out2.device.type, grad_out2.dtype):
        fns["sampled"] = lambda: sampled_values_grad(grad_out2, x2, pattern, n)
    key = grad_calibration.calibration_key(
        grad_out2.device.type, grad_out2.dtype, pattern.out_features, pattern.in_features, n, block
    )
    calls = dict(pattern.calls)  # timing runs are not the layer's path (the counts say what training ran)
    results = grad_calibration.time_paths(key, fns, grad_out2.device)
    pattern.calls.update(calls)
    return results["dense"]


class SparseDeltaLinear(torch.autograd.Function):
    """``y = x (W + scatter(idx, v))^T + b`` without keeping a dense weight copy for backward.

    Backward recomputes the effective weight for ``dL/dx``. ``dL/dv`` takes ``path`` (see the module docstring;
    ``pattern`` is the layer's cached `SelectionPattern` of its allocation, ``idx`` its first ``len(idx)``
    entries). The dense ``dL/dW`` is formed only on the dense path or when the base weight itself is trained;
    every dense temporary dies inside backward. Autocast is resolved in forward and replayed in backward, so
    bf16/fp16 training behaves like ``nn.Linear`` under autocast.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, values, idx, pattern=None, path="dense"):
        dtype = compute_dtype(x, weight)
        w_eff = weight.detach().reshape(-1).index_add(0, idx, values.detach().to(weight.dtype)).view_as(weight)
        xc = x.detach().to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            y = torch.nn.functional.linear(xc, w_eff.to(dtype), None if bias is None else bias.detach().to(dtype))
        need_x, need_w, need_b, need_v = ctx.needs_input_grad[:4]
        ctx.x_dtype, ctx.dtype, ctx.w_dtype, ctx.v_dtype = x.dtype, dtype, weight.dtype, values.dtype
        ctx.b_dtype = None if bias is None else bias.dtype
        use_pattern = need_v and not need_w and (path in _PATH_FNS or path == "calibrate") and pattern is not None
        ctx.pattern, ctx.path = (pattern, path) if use_pattern else (None, "dense")
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
            if ctx.path in _PATH_FNS:
                gv = _PATH_FNS[ctx.path](go2, x2, ctx.pattern, idx.numel()).to(ctx.v_dtype)
            elif ctx.path == "calibrate":
                gv = calibrating_values_grad(go2, x2, ctx.pattern, idx).to(ctx.v_dtype)
            else:
                dense = go2.t() @ x2
                if need_v:
                    gv = dense.reshape(-1).index_select(0, idx).to(ctx.v_dtype)
                if need_w:
                    gw = dense.to(ctx.w_dtype)
                del dense
        if need_b and ctx.b_dtype is not None:
            gb = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.b_dtype)
        return gx, gw, gb, gv, None, None, None
