"""Eq. 16: the active fraction of the tuning phase."""

from __future__ import annotations

import math


def active_fraction(step: int, total_steps: int, delta_min: float, delta_max: float) -> float:
    """Active fraction p(t) of the targeted entries at tuning step ``step`` (Eq. 16).

    The paper prints ``thresh(t) = delta_min + (delta_max - delta_min) * exp(-t / T)``, which
    shrinks the budget over time if read as a fraction. This project reads Eq. 16 as a budget
    that grows from ``delta_min`` at ``t = 0`` to exactly ``delta_max`` at ``t = T``, fast at
    first (METHOD.md):

        p(t) = delta_min + (delta_max - delta_min) * (1 - exp(-t / T)) / (1 - exp(-1))

    ``step`` is clamped to ``[0, total_steps]``; ``total_steps == 0`` means no ramp (p = delta_max).
    """
    if not 0.0 <= delta_min <= delta_max <= 1.0:
        raise ValueError(f"Need 0 <= delta_min <= delta_max <= 1, got delta_min={delta_min}, delta_max={delta_max}.")
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}.")
    if total_steps == 0:
        return delta_max
    t = min(max(step, 0), total_steps) / total_steps
    ramp = (1.0 - math.exp(-t)) / (1.0 - math.exp(-1.0))
    # min() guards the last ulp: at t = T the ramp is 1 up to rounding and p must not exceed delta_max.
    return min(delta_max, delta_min + (delta_max - delta_min) * ramp)
