"""torch.distributed helpers: every statistic is a sum plus a count, all-reduced once.

Summing (not averaging) per rank and dividing by the global count makes the 2-process result
the 1-process result over the same samples. The sums that feed scores are fp64 (Eq. 9's squares,
DSU's batch moments), so the order in which ranks add them changes nothing at fp32: the scores
are bitwise those of one process (tested with two gloo processes on CPU; on GPUs a batched
matmul may pick another kernel for another batch size, so expect equal masks, not bits).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(t: torch.Tensor) -> torch.device:
    # NCCL only moves CUDA tensors, gloo only CPU ones (for all_reduce of arbitrary dtypes).
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM over ranks (no-op without an initialized process group); returns ``t``."""
    if not is_distributed():
        return t
    dev = _comm_device(t)
    buf = t if t.device == dev else t.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not t:
        t.copy_(buf)
    return t


def global_slice(local_size: int) -> tuple[int, int]:
    """``(offset, global_size)`` of this rank's samples in the global batch (rank order).

    Random draws per sample (labels of the true Fisher, DSU's eps) are made for the global batch
    from a generator seeded identically on every rank and then sliced, so a sample gets the same
    draw whichever rank holds it.
    """
    if not is_distributed():
        return 0, local_size
    sizes = torch.zeros(dist.get_world_size(), dtype=torch.long)
    sizes[dist.get_rank()] = local_size
    all_reduce_sum_(sizes)
    return int(sizes[: dist.get_rank()].sum()), int(sizes.sum())
