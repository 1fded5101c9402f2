"""DSU feature perturbation as a training augmentation (Table 5's "+FP"), for any method.

DSU (Li et al., ICLR 2022) on a block's patch tokens x [B, N, C] (CLS/register tokens excluded):
    mu, sigma = mean and std of x over the tokens           (per sample, per channel; eps 1e-6)
    Sigma_mu, Sigma_sigma = std over the batch of mu, sigma  (DSU's `sqrtvar`, unbiased + eps)
    x' = (sigma + eps_s * Sigma_sigma) * (x - mu) / sigma + (mu + eps_m * Sigma_mu),  eps ~ N(0, 1)
applied to each chosen block's output with probability p per forward, only in train mode, and
left out for batches of one (the batch statistics are undefined). Gradients flow through mu and
sigma and through the batch stds, as in DSU's code. This is the *training-time* augmentation:
FisherTune itself never tunes on perturbed features (Table 5), this module exists to reproduce the
"+FP" column for any method. The formula is not implemented here: it is
`fishertune.fisher.perturb.dsu_transform` with ``differentiable_local=True`` (the DR-FIM estimator's
hooks use the same function with the batch stds detached and over the global batch).
"""

from __future__ import annotations

import torch
from torch import nn

from ..fisher.perturb import dsu_transform, find_blocks, split_patch_tokens
from ._common import first_tensor, replace_first


def dsu_perturb(x: torch.Tensor, eps: float = 1e-6, generator: torch.Generator | None = None) -> torch.Tensor:
    """DSU's training-time perturbation of tokens `x` [B, N, C] (at least two samples), drawing its own noise.

    A thin wrapper kept for `fishertune.baselines.dsu_perturb`'s callers: it draws ``eps_mu`` then
    ``eps_sigma`` [B, C] from `generator` (in x's dtype, on x's device) and returns the ``x'`` of
    ``dsu_transform(x, eps_mu, eps_sigma, eps, differentiable_local=True)``.
    """
    b, c = x.shape[0], x.shape[-1]
    eps_mu = torch.randn(b, c, generator=generator, device=x.device, dtype=x.dtype)
    eps_sigma = torch.randn(b, c, generator=generator, device=x.device, dtype=x.dtype)
    return dsu_transform(x, eps_mu, eps_sigma, eps, differentiable_local=True)[0]


class DSUHandle:
    """Returned by `add_dsu_augmentation`; `remove()` uninstalls every hook."""

    def __init__(self, handles, blocks: list[int], p: float):
        self._handles, self.blocks, self.p = handles, blocks, p

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def add_dsu_augmentation(
    model: nn.Module,
    p: float = 0.5,
    blocks: list[int] | None = None,
    generator: torch.Generator | None = None,
) -> DSUHandle:
    """Perturb the patch tokens after the given backbone blocks with probability `p` (train mode only).

    The blocks and the tokens in front of their patches come from the backbone's family, as for the DR-FIM
    estimator's hooks (`fishertune.fisher.perturb.find_blocks` / `split_patch_tokens`): CLS and registers are
    left alone, EoMT's queries too in the blocks that carry them, and SAM's ``[B, H, W, C]`` block outputs are
    perturbed over all ``H * W`` positions.

    Args:
        model: a model holding a supported ViT backbone (or the backbone itself).
        p: probability of perturbing at each block per forward (DSU's 0.5).
        blocks: 0-based block indices; `None` uses every block.
        generator: optional `torch.Generator` (CPU) for reproducible draws.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}.")
    module_list, num_prefix = find_blocks(model)
    prefixes = [num_prefix] * len(module_list) if isinstance(num_prefix, int) else list(num_prefix)
    chosen = list(range(len(module_list))) if blocks is None else sorted({int(b) for b in blocks})
    if any(b < 0 or b >= len(module_list) for b in chosen):
        raise ValueError(f"blocks {chosen} out of range for {len(module_list)} backbone blocks.")

    def make_hook(npt: int):
        def hook(module, args, output):
            # module.training: the augmentation follows model.train()/eval() like dropout does.
            if not module.training or p == 0.0:
                return None
            hidden = first_tensor(output)
            if hidden.shape[0] < 2 or torch.rand((), generator=generator).item() >= p:
                return None
            patches, put_back = split_patch_tokens(hidden, npt)
            return replace_first(output, put_back(dsu_perturb(patches, generator=_device_gen(generator, patches))))

        return hook

    # prepend: run before transformers' output-capturing hooks, so taps see the perturbed features too.
    handles = [module_list[b].register_forward_hook(make_hook(prefixes[b]), prepend=True) for b in chosen]
    return DSUHandle(handles, chosen, p)


def _device_gen(generator: torch.Generator | None, x: torch.Tensor) -> torch.Generator | None:
    # A CPU generator cannot drive randn on another device; fall back to the global RNG there.
    if generator is None or generator.device == x.device:
        return generator
    return None
