"""Eq. 6: DSU feature-statistics perturbation (Li et al., ICLR 2022) as forward hooks on ViT blocks.

FisherTune uses the perturbed features x' only to measure how the Fisher changes under a
simulated domain shift (Eq. 5, 7, 15); the hooks live only inside the estimator and are removed
on exit (the tuning phase never sees them, Table 5).

`dsu_transform` is the package's one implementation of Eq. 6: `DSUHooks` here and the training-time
"+FP" augmentation (`fishertune.baselines.add_dsu_augmentation` / `dsu_perturb`) both call it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import nn

from ..backbones import backbone_blocks, locate
from .dist import all_reduce_sum_, global_slice

#: The shapes of DSU's draws (`DSUHooks`, `EstimationConfig.dsu_draw`).
DRAWS = ("channel", "scalar")


def token_statistics(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mu(x), sigma(x) of Eq. 6: mean and sqrt(var + eps) over the tokens of ``x`` [B, N, C], per sample and channel."""
    return x.mean(1), (x.var(1) + eps).sqrt()


def batch_std(stat: torch.Tensor, eps: float) -> torch.Tensor:
    """Sigma_mu / Sigma_sigma of Eq. 6: sqrt(unbiased var over the batch + eps) of ``stat`` [B, C] -> [C].

    Under torch.distributed the variance is over the global batch (sums and counts all-reduced),
    so two processes with half the samples each perturb exactly like one process. The result is
    detached: it is DSU's noise scale, and detaching it keeps samples independent, which the
    per-sample squares of Eq. 9 need. With a single sample the variance is 0 (no shift).
    """
    s = stat.detach().double()
    sums = torch.cat([s.sum(0), (s * s).sum(0), s.new_tensor([s.shape[0]])])
    all_reduce_sum_(sums)
    c = stat.shape[1]
    n = float(sums[-1])
    mean = sums[:c] / n
    var = ((sums[c : 2 * c] - n * mean * mean) / max(n - 1.0, 1.0)).clamp_min(0.0)
    return (var + eps).sqrt().to(stat.dtype)


def dsu_transform(
    x: torch.Tensor,
    eps_mu: torch.Tensor,
    eps_sigma: torch.Tensor,
    eps: float = 1e-6,
    *,
    differentiable_local: bool = False,
    stds: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 6 on patch tokens ``x`` [B, N, C]: ``x' = beta * (x - mu) / sigma + alpha``.

    ``mu, sigma = token_statistics(x, eps)``, ``alpha = mu + eps_mu * Sigma_mu`` and
    ``beta = sigma + eps_sigma * Sigma_sigma`` with ``eps_mu, eps_sigma`` [B, C] standard-normal
    draws made by the caller. Returns ``(x', alpha, beta)``.

    ``differentiable_local`` selects how the batch uncertainty ``Sigma_mu, Sigma_sigma`` is taken:

    - ``False`` (the DR-FIM estimator, ``DSUHooks``): ``batch_std``, i.e. over the global batch
      under torch.distributed, detached, accumulated in fp64.
    - ``True`` (DSU's training augmentation, as in DSU's official code): ``sqrt(var + eps)`` over
      this process's batch in ``x``'s dtype, with gradients flowing through it. The expression is
      then evaluated in that code's order, ``(x - mu) / sigma * beta + alpha``, so that both uses
      keep their results bit for bit. Needs at least two samples (the variance is NaN otherwise).

    ``stds``: ``(Sigma_mu, Sigma_sigma)`` given by the caller instead (the whole batch's, for a micro-batch;
    see `DSUHooks.stds_mode`).
    """
    mu, sigma = token_statistics(x, eps)
    if stds is not None:
        alpha = mu + eps_mu * stds[0]
        beta = sigma + eps_sigma * stds[1]
        x_new = beta[:, None] * (x - mu[:, None]) / sigma[:, None] + alpha[:, None]
    elif differentiable_local:
        alpha = mu + eps_mu * (mu.var(0) + eps).sqrt()
        beta = sigma + eps_sigma * (sigma.var(0) + eps).sqrt()
        x_new = (x - mu[:, None]) / sigma[:, None] * beta[:, None] + alpha[:, None]
    else:
        alpha = mu + eps_mu * batch_std(mu, eps)
        beta = sigma + eps_sigma * batch_std(sigma, eps)
        x_new = beta[:, None] * (x - mu[:, None]) / sigma[:, None] + alpha[:, None]
    return x_new, alpha, beta


def split_patch_tokens(
    hidden: torch.Tensor, num_prefix: int
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``(tokens, put_back)``: the patch tokens ``[B, N, C]`` of a block output and how to put new ones back.

    ``hidden`` is ``[B, T, C]`` tokens whose first ``num_prefix`` (CLS, registers, EoMT's queries) are not patches,
    or a ``[B, H, W, C]`` map (SAM's blocks; no prefix, ``num_prefix`` is ignored) whose ``H * W`` positions are
    the tokens. ``put_back(new_tokens)`` returns a tensor shaped like ``hidden``, in its dtype, with the prefix
    tokens of ``hidden`` unchanged in front. DSU's hooks (`DSUHooks`) and its training augmentation
    (`fishertune.baselines.add_dsu_augmentation`) both split block outputs with it.
    """
    if hidden.dim() == 4:  # SAM: [B, H, W, C], no prefix tokens
        return hidden.reshape(hidden.shape[0], -1, hidden.shape[-1]), lambda x: x.to(hidden.dtype).reshape(hidden.shape)
    if hidden.dim() == 3:
        prefix = hidden[:, :num_prefix]
        return hidden[:, num_prefix:], lambda x: torch.cat([prefix, x.to(hidden.dtype)], dim=1)
    raise ValueError(f"DSU expects block outputs [B, T, C] or [B, H, W, C], got shape {tuple(hidden.shape)}.")


class DSUHooks:
    """Forward hooks that apply Eq. 6 to the output of each of ``blocks`` while ``enabled``.

    Each block is perturbed with probability ``p`` per step; the coin and the draws are made at a
    block's first call after ``new_draws()`` and reused for every forward of that step, so the
    antithetic pair and the label-sampling pass of the variational estimator see the same x'.
    Draws come from ``generator`` for the global batch and are sliced per rank (see
    ``dist.global_slice``). Use as a context manager: hooks are removed on exit, whatever happens.

    Block outputs are ``[B, T, C]`` tokens whose first ``num_prefix`` (CLS, registers) are left
    alone, or ``[B, H, W, C]`` maps (SAM), or a tuple whose first element is one of these.

    ``draw`` is the shape of eps_mu, eps_sigma: ``"channel"`` (DSU's own: one N(0, 1) per sample and
    channel, fresh for every block) or ``"scalar"`` (as Eq. 6-7 write them: one eps_mu and one eps_sigma
    per step, shared by every sample, channel and perturbed block, so that the step's shift has one size
    and Eq. 7's exp(-(|eps_mu| + |eps_sigma|)) is that size's weight).
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        num_prefix: int | Sequence[int],
        p: float = 1.0,
        eps: float = 1e-6,
        generator: Optional[torch.Generator] = None,
        record: bool = False,
        draw: str = "channel",
    ) -> None:
        if draw not in DRAWS:
            raise ValueError(f"draw must be one of {DRAWS}, got {draw!r}.")
        self.blocks, self.p, self.eps, self.draw = list(blocks), p, eps, draw
        # One count per block: EoMT prepends its queries to the tokens of its last blocks.
        self.num_prefix = [num_prefix] * len(self.blocks) if isinstance(num_prefix, int) else list(num_prefix)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.record = record
        self.enabled = False
        self.handles: list = []
        self.records: dict[int, dict[str, torch.Tensor]] = {}
        self._draws: dict[int, Optional[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._step_pair: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # draw="scalar": this step's eps
        # (offset, global batch) of this rank; set once per batch by the estimator to spare a collective per block.
        self.batch_slice: Optional[tuple[int, int]] = None
        # Sigma_mu/Sigma_sigma of Eq. 6: "live" (from the batch in the forward), "record" (live, and kept per block)
        # or "replay" (the kept ones): a micro-batch then perturbs with its whole batch's statistics.
        self.stds_mode = "live"
        self._stds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __enter__(self) -> "DSUHooks":
        for i, block in enumerate(self.blocks):
            # prepend: before transformers' output-capturing hooks (installed at a model's first forward), so a
            # tapped block's perturbed output is what the head reads, whether or not the model ran before.
            self.handles.append(block.register_forward_hook(self._make_hook(i), prepend=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def new_draws(self) -> None:
        """Start a new step: the next call of each block draws a fresh coin and fresh eps."""
        self._draws.clear()
        self._step_pair = None
        self._stds.clear()

    def step_shift(self) -> Optional[tuple[float, float]]:
        """``(mean|eps_mu| + mean|eps_sigma|, mean eps_mu + mean eps_sigma)`` over this step's applied draws
        (global batch, all perturbed blocks), or ``None`` when no block was perturbed. With ``draw="scalar"``
        this is ``(|eps_mu| + |eps_sigma|, eps_mu + eps_sigma)`` of the step's one pair, exactly."""
        used = [d for d in self._draws.values() if d is not None]
        if not used:
            return None
        mu = torch.cat([d[0].reshape(-1) for d in used])
        sg = torch.cat([d[1].reshape(-1) for d in used])
        return float(mu.abs().mean() + sg.abs().mean()), float(mu.mean() + sg.mean())

    def _slice(self, local_b: int) -> tuple[int, int]:
        return self.batch_slice if self.batch_slice is not None else global_slice(local_b)

    def _draw(self, idx: int, local_b: int, c: int) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        if idx not in self._draws:
            _, total = self._slice(local_b)
            apply = bool(torch.rand((), generator=self.generator) < self.p)
            # Always draw, so the generator advances identically whatever the coin says.
            if self.draw == "scalar":
                if self._step_pair is None:  # at the step's first block: one (eps_mu, eps_sigma) for all
                    self._step_pair = (
                        torch.randn((), generator=self.generator),
                        torch.randn((), generator=self.generator),
                    )
                eps_mu, eps_sigma = (e.expand(total, c) for e in self._step_pair)
            else:
                eps_mu = torch.randn(total, c, generator=self.generator)
                eps_sigma = torch.randn(total, c, generator=self.generator)
            self._draws[idx] = (eps_mu, eps_sigma) if apply else None
        return self._draws[idx]

    def _make_hook(self, idx: int):
        def hook(module, inputs, output):
            if not self.enabled:
                return None
            h = output[0] if isinstance(output, tuple) else output
            b, c = h.shape[0], h.shape[-1]
            draws = self._draw(idx, b, c)
            if draws is None:
                return None
            offset, _ = self._slice(b)
            eps_mu, eps_sigma = (d[offset : offset + b].to(h.device) for d in draws)
            tokens, put_back = split_patch_tokens(h, self.num_prefix[idx])
            with torch.autocast(h.device.type, enabled=False):
                x = tokens.float()
                if self.stds_mode == "replay":
                    stds = self._stds[idx]
                else:
                    mu, sigma = token_statistics(x, self.eps)
                    stds = (batch_std(mu, self.eps), batch_std(sigma, self.eps))
                    if self.stds_mode == "record":
                        self._stds[idx] = stds
                x_new, alpha, beta = dsu_transform(x, eps_mu, eps_sigma, self.eps, stds=stds)
            if self.record:
                self.records[idx] = {
                    "x": tokens.detach().float(),
                    "x_new": x_new.detach(),
                    "alpha": alpha.detach(),
                    "beta": beta.detach(),
                    "eps_mu": eps_mu,
                    "eps_sigma": eps_sigma,
                }
            new_h = put_back(x_new)
            return (new_h, *output[1:]) if isinstance(output, tuple) else new_h

        return hook


def unwrap_model(model: nn.Module) -> nn.Module:
    """The task model under PEFT / DDP wrappers (the module that owns ``semantic_logits`` and the config)."""
    while True:
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            inner = model.get_base_model()
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel") and hasattr(model, "module"):
            inner = model.module
        else:
            return model
        if inner is model:
            return model
        model = inner


def find_blocks(model: nn.Module) -> tuple[list[nn.Module], int | list[int]]:
    """``(blocks, num_prefix)``: the ViT blocks of the model's backbone and its CLS + register count.

    Both come from the backbone's registered family (`fishertune.backbones`): the blocks are its block list
    (``encoder.layer`` for DINOv2, ``layers`` for ViT/SAM, ``eva.blocks`` for timm's EVA02...), the prefix
    count its rule: the config's ``num_prefix_tokens`` when it has one (EVA02), none for SAM, and for EoMT
    one count per block (its last ``num_blocks`` blocks also carry ``num_queries`` query tokens in front).
    """
    _, family, backbone = locate(model)  # looks through PEFT / DDP wrappers
    try:
        blocks = backbone_blocks(backbone, family)
    except ValueError as err:
        raise ValueError(f"{err} Or pass `blocks=` and `num_prefix_tokens=` to estimate_scores.") from None
    return list(blocks), family.prefix_tokens(getattr(backbone, "config", None), len(blocks))
