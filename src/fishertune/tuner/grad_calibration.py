"""On-line choice of the values-gradient path: time every exact path on the layer's real tensors, keep the fastest.

The constants of `sparse_grad.values_grad_path` were fitted on synthetic blocks at ViT-S shapes; on other shapes,
token counts and selection patterns (a real Fisher selection's block, small ViT-Ti weights where the gathers of
the compact GEMM and the transposes of the sampled product are not amortised) they can pick a slower path. In the
``"calibrate"`` mode the first `CALIBRATION_CALLS` backward passes of each key time every candidate path on the
real ``grad_out`` and ``x`` (in a rotating order, so no path always runs first), return the dense result, and from
then on the path with the lowest median time runs.

A key is ``(device type, dtype, out, in, active entries, rows * cols of their block)``: layers of the same shape
and selection footprint share one calibration, and a change of the active count (Eq. 16) is a new key. The token
count is not part of the key: the choice is made at the token count of the first training batches.

The paths are exact but not bitwise equal to each other (the sampled product sums in another order than the GEMM),
and the choice depends on timings, so two runs of the same configuration may run different paths and differ in
the last bits. That is why this mode is opt-in (`sparse_grad.set_sparse_grad_mode("calibrate")` or
``$FISHERTUNE_SPARSE_GRAD=calibrate``) and the default "auto" rule is deterministic: bitwise-reproducible resumes
need "auto" or a forced path.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch

#: Timed backward passes per key before its path is fixed.
CALIBRATION_CALLS = 3

_timings: dict[tuple, dict[str, list[float]]] = {}
_chosen: dict[tuple, str] = {}


def calibration_key(
    device_type: str, dtype: torch.dtype, out_features: int, in_features: int, nnz: int, block: int
) -> tuple:
    return (device_type, str(dtype), out_features, in_features, nnz, block)


def chosen_path(key: tuple) -> Optional[str]:
    """The fastest path of ``key`` once it is calibrated, else None."""
    return _chosen.get(key)


def calibrated() -> dict[tuple, str]:
    """Every calibrated key and its path (a copy)."""
    return dict(_chosen)


def reset_calibration() -> None:
    """Forget every timing and choice (the next backward passes calibrate again)."""
    _timings.clear()
    _chosen.clear()


def time_paths(key: tuple, fns: dict[str, Callable[[], torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    """Run and time every candidate of ``fns`` once; fix the key's path after `CALIBRATION_CALLS` timings.
    Returns every candidate's result."""
    times = _timings.setdefault(key, {name: [] for name in fns})
    names = list(fns)
    shift = len(next(iter(times.values()))) % len(names)
    out = {}
    for name in names[shift:] + names[:shift]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out[name] = fns[name]()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times[name].append(time.perf_counter() - t0)
    if len(times[names[0]]) >= CALIBRATION_CALLS:
        # ties go to the earlier candidate in ``fns`` (dense first): a sparse path must be strictly faster
        _chosen[key] = min(names, key=lambda n: (statistics.median(times[n]), names.index(n)))
        del _timings[key]
    return out
