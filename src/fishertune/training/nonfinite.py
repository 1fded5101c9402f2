"""Non-finite losses, gradients and parameters in phases 1 and 3 (phase 2 has its own check in the estimator).

A single NaN loss otherwise turns every delta NaN through AdamW, the Trainer logs the loss as the
average of earlier ones, and the run saves and evaluates a broken adapter with exit code 0. The
guard looks at each micro-batch's loss and the accumulated gradients right after backward (before
gradient clipping, which would spread one NaN over all gradients and hide where it started), and
at the trained parameters after each optimizer step.

Policies (`FisherTuneTrainingArguments.nonfinite_policy`):

* ``"error"`` (default): raise `FloatingPointError` naming the step, the phase and the first
  non-finite tensor (the loss, then gradients in parameter order).
* ``"skip"``: drop the whole optimizer step (every gradient is discarded, so no parameter and no
  AdamW moment changes; the LR schedule still advances), warn, and count it; more than
  ``nonfinite_max_skips`` skipped steps in a run raise.

Forward passes also write buffers (BatchNorm running statistics of a decoder, NaN after a NaN
batch): they are copied at the start of each step and put back when the step is dropped or
stopped at, so the model in memory is the one of the last good step (the FisherTune index
buffers are left out: training never writes them).

Parameters that become non-finite from finite gradients (an update too large for the dtype)
cannot be skipped after the fact: that always raises. Under fp16 mixed precision the grad scaler
owns inf gradients (it skips those steps and lowers its scale), so only the loss is checked there.
With several processes the decision is taken together (one all-reduce of a flag), so that every
rank raises or skips the same step.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Optional

import torch
import torch.distributed as dist

POLICIES = ("error", "skip")


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t if t.layout == torch.strided else t.coalesce().values()


def first_nonfinite(named: Iterable[tuple[str, Optional[torch.Tensor]]]) -> Optional[str]:
    """The name of the first tensor holding NaN/inf (one device sync for all of them), else None."""
    named = [(n, t) for n, t in named if t is not None and t.is_floating_point()]
    if not named:
        return None
    ok = torch.stack([torch.isfinite(_dense(t.detach())).all().to(named[0][1].device) for _, t in named])
    if bool(ok.all()):
        return None
    return named[int((~ok).nonzero()[0])][0]


def _any_process(bad: bool, device: torch.device) -> bool:
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return bad
    flag = torch.tensor([1.0 if bad else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


class NonFiniteGuard:
    """State of the check for one trainer: the policy, the skipped steps, and whether this step is dropped."""

    def __init__(self, policy: str = "error", max_skips: int = 10, check_grads: bool = True) -> None:
        if policy not in POLICIES:
            raise ValueError(f"nonfinite_policy must be one of {POLICIES}, got {policy!r}.")
        self.policy, self.max_skips, self.check_grads = policy, max_skips, check_grads
        self.skipped = 0
        self.dropping = False  # the current optimizer step is dropped
        self._buffers: dict[str, torch.Tensor] = {}

    def step_begin(self, model: torch.nn.Module) -> None:
        """Copy the buffers a forward pass may write, so that a bad step can be undone completely."""
        self._buffers = {n: b.detach().clone() for n, b in model.named_buffers() if "fishertune_" not in n}

    def after_backward(self, model: torch.nn.Module, loss: torch.Tensor, step: int, phase: int) -> None:
        """Check the micro-batch loss and the gradients accumulated so far; raise or drop the step."""
        grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None] if self.check_grads else []
        bad_loss = first_nonfinite([("loss", loss.reshape(-1))]) is not None
        bad_grad = first_nonfinite([(f"gradient of {n}", g) for n, g in grads])
        if not _any_process(bad_loss or bad_grad is not None, loss.device):
            return
        found = ([f"the loss is {loss.detach().float().mean().item()}"] if bad_loss else []) + (
            [f"first non-finite tensor: {bad_grad}"] if bad_grad else []
        ) or ["on another process"]
        where = f"Non-finite values at step {step} (phase {phase}): {'; '.join(found)}"
        if self.policy == "error":
            model.zero_grad(set_to_none=True)
            self._restore_buffers(model)
            raise FloatingPointError(
                f"{where}. Nothing of this step was applied; the last saved checkpoint is finite. Lower the learning "
                "rate or check the batch, or set nonfinite_policy='skip' to drop such steps (a bounded number)."
            )
        if not self.dropping:
            self.skipped += 1
            if self.skipped > self.max_skips:
                raise FloatingPointError(
                    f"{where}. More than nonfinite_max_skips={self.max_skips} steps were non-finite: the run diverges."
                )
            warnings.warn(f"{where}. Step dropped ({self.skipped} of at most {self.max_skips}).", RuntimeWarning)
        self.dropping = True
        model.zero_grad(set_to_none=True)

    def before_update(self, model: torch.nn.Module) -> None:
        # Micro-batches after the bad one accumulated fresh gradients: a dropped step applies none of them.
        if self.dropping:
            model.zero_grad(set_to_none=True)
            self._restore_buffers(model)

    @torch.no_grad()
    def _restore_buffers(self, model: torch.nn.Module) -> None:
        for name, buf in model.named_buffers():
            if name in self._buffers:
                buf.copy_(self._buffers[name])

    def after_update(self, model: torch.nn.Module, step: int, phase: int) -> None:
        if self.dropping:
            self.dropping = False
            return
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        bad = first_nonfinite(params) if params else None
        if _any_process(bad is not None, params[0][1].device if params else torch.device("cpu")):
            raise FloatingPointError(
                f"Non-finite values at step {step} (phase {phase}): the update made parameter "
                f"{bad or '(on another process)'} non-finite from finite gradients. Lower the learning rate."
            )
