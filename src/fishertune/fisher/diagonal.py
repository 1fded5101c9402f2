"""Eq. 4 and 9: the diagonal Fisher of the targeted linear weights, with per-sample squares.

    F_n = 1/N * sum_i E_{y ~ p_theta(y|x_i)} [ (dL(f_theta(x_i), y) / d theta_n)^2 ]       (Eq. 9)

The squares are PER SAMPLE, as Eq. 9 writes them. Squaring a batch gradient instead estimates
(E g)^2 + Var(g)/B, not E[g^2]: it shrinks with the batch size and is dominated by the mean
gradient, which is a different (and batch-size dependent) ranking. Per-sample squares cost no
extra backward pass here: for a linear layer the per-sample weight gradient is
``g_i^T x_i`` (output gradient times input, summed over that sample's tokens), so the estimator
captures each targeted layer's input and output gradient with hooks and forms the [B, out, in]
product in fp32 chunks; autograd never builds the dense weight gradients at all.

The expectation over y (the "true" Fisher, Eq. 4) is one draw per sample and pixel from the
model's own prediction (``likelihood.sample_labels``); ``fisher_type="empirical"`` uses the
ground truth instead (Child-Tuning-D, FISH).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from contextlib import contextmanager

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .dist import all_reduce_sum_
from .likelihood import sample_labels  # noqa: F401  (Eq. 4 lives with the likelihood; re-exported here)

_CHUNK_ELEMENTS = 1 << 25  # cap of the transient [chunk, out, in] fp32 product (128 MiB)


def linear_owners(model: nn.Module, weights: Mapping[str, nn.Parameter]) -> dict[str, nn.Module]:
    """The module whose forward produces each weight's output: the PEFT tuner layer wrapping it (FisherTune's) if
    any, else the nn.Linear."""
    by_id: dict[int, nn.Module] = {}
    for mod in model.modules():
        if isinstance(mod, BaseTunerLayer):
            by_id[id(mod.get_base_layer().weight)] = mod
    for mod in model.modules():
        if isinstance(mod, nn.Linear) and id(mod.weight) not in by_id:
            by_id[id(mod.weight)] = mod
    missing = [n for n, w in weights.items() if id(w) not in by_id]
    if missing:
        raise TypeError(
            f"Weights {missing[:3]} do not belong to an nn.Linear (or FisherTune layer) of the model: the diagonal "
            "estimator forms per-sample gradients of linear layers. Pass model.fishertune_target_weights()."
        )
    return {n: by_id[id(w)] for n, w in weights.items()}


def per_sample_grad_squares(
    x: torch.Tensor, g: torch.Tensor, batch_size: int, scale: float = 1.0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``sum_i (g_i^T x_i / scale)^2`` [out, in] in ``dtype`` (fp64 by default), for layer inputs ``x`` [..., in]
    and output grads ``g`` [..., out].

    The leading dimension may be a multiple of the batch (SAM's windows are batch-major), so rows
    are regrouped per sample. Products and squares are fp32 under any autocast dtype: bf16/fp16
    inputs are upcast before the product, whose square cannot overflow fp32 for finite inputs of
    any realistic size (|g x| < 1e19). Each sample's square is computed alone (identical whichever
    batch or rank holds the sample) and the sum over samples is fp64, so how samples are grouped
    into chunks, batches and ranks changes the sum by ~1e-16 relative, far below the fp32 rounding
    of the final Fisher: one or two processes give the same fp32 scores.
    """
    if x.shape[0] % batch_size:
        raise ValueError(f"Layer input has leading size {x.shape[0]}, not a multiple of the batch size {batch_size}.")
    xs = x.reshape(batch_size, -1, x.shape[-1])
    gs = g.reshape(batch_size, -1, g.shape[-1])
    out = torch.zeros(g.shape[-1], x.shape[-1], dtype=dtype, device=x.device)
    chunk = max(1, _CHUNK_ELEMENTS // out.numel())
    with torch.autocast(x.device.type, enabled=False):
        for s in range(0, batch_size, chunk):
            per = torch.bmm(gs[s : s + chunk].float().transpose(1, 2), xs[s : s + chunk].float())
            if scale != 1.0:
                per = per / scale
            out += per.square().sum(0, dtype=dtype)
    return out


def diagonal_fisher(square_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Eq. 9: ``F = 1/N sum_i (dL_i/dtheta)^2`` from the accumulated per-sample squares and N."""
    return square_sum / count.clamp_min(1)


class _GradTap(torch.autograd.Function):
    """Identity on a layer's output whose backward hands the output's gradient to ``sink`` and passes it on.

    ``anchor`` (a scalar leaf) makes every tap an input path of one ``autograd.grad(loss, anchor)``: the backward
    then runs exactly the nodes between the loss and the taps, never a weight gradient, and each layer's squares
    are formed as its gradient arrives (the gradient and the captured input are released right after), instead
    of holding every targeted layer's output gradient and input until the backward ends. The phase-2 peak memory
    sits at the start of the backward, so it is only 3-5% lower with the taps.
    """

    @staticmethod
    def forward(ctx, out, anchor, sink):
        ctx.sink, ctx.anchor_device = sink, anchor.device  # a model split over devices taps them all
        # A copy, not a view: models may modify a layer's output in place (a view made by a custom Function
        # forbids that); the original is released once the copy exists, as nothing else holds it.
        return out.clone()

    @staticmethod
    def backward(ctx, g):
        sink, ctx.sink = ctx.sink, None
        sink(g)
        return g, torch.zeros((), device=ctx.anchor_device), None


class GradSquareAccumulator:
    """Running fp64 sums of per-sample squared gradients (Eq. 9) of the given linear weights.

    Memory is one fp64 tensor per weight, whatever the number of batches. ``finalize()``
    all-reduces sums and the sample count over ranks and returns F in fp32. fp64 (not fp32) sums
    are what makes the scores independent of the number of processes: an fp32 sum's rounding
    depends on how the samples are split over ranks, and Eq. 5's |F - F'| / min(F, F') amplifies
    that rounding where F ~ F' (1 vs 2 processes then differed by up to 1e-2 relative). ``dtype=torch.float32``
    halves the memory (`EstimationConfig.accumulator_dtype`) at that cost.
    The squares of a layer are formed during the backward, as soon as its output gradient exists
    (`_GradTap`); a layer called several times per forward waits for all its calls (its per-sample
    gradient is the sum over calls).
    """

    def __init__(
        self, owners: Mapping[str, nn.Module], weights: Mapping[str, nn.Parameter], dtype: torch.dtype = torch.float64
    ) -> None:
        self.owners, self.dtype = dict(owners), dtype
        self.sums = {n: torch.zeros(w.shape, dtype=dtype, device=w.device) for n, w in weights.items()}
        self.count = torch.zeros((), dtype=torch.float64)
        self._reset()

    def _reset(self) -> None:
        # name -> one slot per call in forward order: None until that call's (input, output gradient) arrives
        self._slots: dict[str, list] = defaultdict(list)
        self._anchor: torch.Tensor | None = None
        self._batch, self._scale = 1, 1.0

    @contextmanager
    def capture(self):
        """Tap every targeted layer's output during the forward inside this block (for `accumulate`)."""
        if len(self.sums) < len(self.owners):
            raise RuntimeError("This GradSquareAccumulator was finalized (its sums are consumed); make a new one.")
        self._reset()
        handles = []
        for name, mod in self.owners.items():

            def hook(m, inputs, output, name=name):
                if not (isinstance(output, torch.Tensor) and output.requires_grad):
                    return None  # no gradient can reach this call: it contributes nothing
                if self._anchor is None:
                    self._anchor = torch.zeros((), device=output.device, requires_grad=True)
                k = len(self._slots[name])
                self._slots[name].append(None)
                x = inputs[0].detach()
                return _GradTap.apply(output, self._anchor, lambda g: self._receive(name, k, x, g))

            handles.append(mod.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _receive(self, name: str, k: int, x: torch.Tensor, g: torch.Tensor) -> None:
        slots = self._slots[name]
        slots[k] = (x, g)
        if all(s is not None for s in slots):
            self._add(name)

    def _add(self, name: str) -> None:
        pairs = [s for s in self._slots.pop(name) if s is not None]
        if not pairs:
            return
        b = self._batch
        x = torch.cat([p[0].reshape(b, -1, p[0].shape[-1]) for p in pairs], dim=1)
        g = torch.cat([p[1].reshape(b, -1, p[1].shape[-1]) for p in pairs], dim=1)
        self.sums[name] += per_sample_grad_squares(x, g, b, self._scale, self.dtype)

    def accumulate(self, loss_sum: torch.Tensor, batch_size: int, num_counted: int, scale: float = 1.0) -> None:
        """Add the per-sample squares of ``d loss_sum / d W`` (``loss_sum = sum_i L_i * scale``)."""
        self._batch, self._scale = batch_size, scale
        if self._anchor is not None:
            torch.autograd.grad(loss_sum, [self._anchor], allow_unused=True)
        # calls the loss does not depend on never got a gradient; a layer with some calls that did counts those
        for name in list(self._slots):
            self._add(name)
        self._reset()
        self.count += num_counted

    def finalize(self) -> dict[str, torch.Tensor]:
        """F (fp32) of every weight, all-reduced over ranks. Consumes the sums: each fp64 sum is released as its F
        is made (12 B per entry at no point, 8 + 4 B of one tensor at a time); the accumulator is spent."""
        for t in self.sums.values():
            all_reduce_sum_(t)
        all_reduce_sum_(self.count)
        out = {}
        for n in list(self.sums):
            s = self.sums.pop(n)
            out[n] = diagonal_fisher(s, self.count.to(s.device)).float()
            del s
        return out
