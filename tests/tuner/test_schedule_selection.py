import math

import pytest
import torch

from fishertune.tuner import active_fraction, global_topk


def test_eq16_endpoints_and_closed_form():
    assert active_fraction(0, 100, 0.01, 0.05) == pytest.approx(0.01, abs=0)
    assert active_fraction(100, 100, 0.01, 0.05) == 0.05
    assert active_fraction(250, 100, 0.01, 0.05) == 0.05  # clamped past T
    expected = 0.01 + 0.04 * (1 - math.exp(-0.5)) / (1 - math.exp(-1))
    assert active_fraction(50, 100, 0.01, 0.05) == pytest.approx(expected, rel=1e-12)
    ps = [active_fraction(t, 100, 0.01, 0.05) for t in range(101)]
    assert all(b >= a for a, b in zip(ps, ps[1:]))
    # "fast at first": the first half of the steps covers more than half of the ramp
    assert ps[50] - ps[0] > ps[100] - ps[50]


def test_eq16_rejects_bad_budgets():
    with pytest.raises(ValueError, match="delta_min"):
        active_fraction(0, 10, 0.06, 0.05)


def test_global_topk_hand_case_with_ties():
    scores = {
        "a": torch.tensor([[5.0, 1.0], [3.0, 3.0]]),  # flat: 5 1 3 3
        "b": torch.tensor([[3.0, 9.0, 0.0]]),  # flat: 3 9 0
    }
    sel = global_topk(scores, fraction=4 / 7)  # k = 4 of 7
    # global order: b1 (9), a0 (5), then the 3.0 ties by position: a2, a3, b0 -> k=4 keeps a2, a3
    assert sel["a"].indices.tolist() == [0, 2, 3]
    assert sel["a"].ranks.tolist() == [1, 2, 3]
    assert sel["b"].indices.tolist() == [1]
    assert sel["b"].ranks.tolist() == [0]


def test_global_topk_is_global_not_per_layer():
    scores = {"small": torch.zeros(10), "big": torch.arange(1.0, 11.0)}
    sel = global_topk(scores, fraction=0.25)  # k = 5
    assert sel["small"].indices.numel() == 0
    assert sel["big"].indices.tolist() == [9, 8, 7, 6, 5]


def test_global_topk_deterministic_and_rejects_nan():
    g = torch.Generator().manual_seed(0)
    scores = {
        "x": torch.randint(0, 3, (50, 7), generator=g).float(),
        "y": torch.randint(0, 3, (9,), generator=g).float(),
    }
    a, b = global_topk(scores, 0.3), global_topk(scores, 0.3)
    for n in scores:
        assert torch.equal(a[n].indices, b[n].indices) and torch.equal(a[n].ranks, b[n].ranks)
    bad = dict(scores, y=torch.tensor([float("nan")] * 9))
    with pytest.raises(ValueError, match="'y'.*NaN"):
        global_topk(bad, 0.3)
    with pytest.raises(ValueError, match="shape"):
        global_topk(scores, 0.3, shapes={"x": (7, 50), "y": (9,)})
