"""The "calibrate" values-gradient mode: times every exact path per layer key, keeps the fastest, stays exact and
is opt-in (the default "auto" rule never calibrates, so resumed runs do not depend on timings)."""

import pytest
import torch

from fishertune.tuner import grad_calibration as GC
from fishertune.tuner import sparse_grad as SG

from .test_sparse_grad import _grad, _layer, _reference, grad_mode


@pytest.fixture(autouse=True)
def _fresh_calibration():
    GC.reset_calibration()
    yield
    GC.reset_calibration()


class _Clock:
    """A fake perf_counter that each candidate advances by its own cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_paths_keeps_the_lowest_median_after_the_calibration_calls(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(GC.time, "perf_counter", clock)
    # per call: dense 3, 3, 3; compact 1, 9, 2 (median 2); sampled 5, 1, 6 (median 5) -> compact
    costs = {"dense": [3, 3, 3], "compact": [1, 9, 2], "sampled": [5, 1, 6]}
    calls = {k: 0 for k in costs}

    def fn(name):
        def run():
            clock.now += costs[name][calls[name]]
            calls[name] += 1
            return torch.tensor(float(len(name)))

        return run

    key = GC.calibration_key("cpu", torch.float32, 4, 4, 3, 6)
    for i in range(GC.CALIBRATION_CALLS):
        assert GC.chosen_path(key) is None
        out = GC.time_paths(key, {k: fn(k) for k in costs}, torch.device("cpu"))
        assert set(out) == set(costs) and float(out["dense"]) == 5.0
    assert calls == {k: GC.CALIBRATION_CALLS for k in costs}
    assert GC.chosen_path(key) == "compact"
    assert GC.calibrated() == {key: "compact"}


def test_a_tie_keeps_the_dense_path(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(GC.time, "perf_counter", clock)

    def run():
        clock.now += 1.0
        return torch.zeros(1)

    key = GC.calibration_key("cpu", torch.float32, 4, 4, 3, 6)
    for _ in range(GC.CALIBRATION_CALLS):
        GC.time_paths(key, {"dense": run, "compact": run, "sampled": run}, torch.device("cpu"))
    assert GC.chosen_path(key) == "dense"


@pytest.mark.parametrize("forced", ["dense", "compact", "sampled"])
def test_calibrate_is_exact_and_runs_the_fastest_path_afterwards(monkeypatch, forced):
    """Make ``forced`` the fastest by the fake clock; calibrating steps return the dense result bitwise, later
    steps run ``forced`` (the layer's counts say so) and equal the dense reference."""
    clock = _Clock()
    monkeypatch.setattr(GC.time, "perf_counter", clock)
    real = dict(SG._PATH_FNS)

    def slow(name, fn):
        def run(*a):
            clock.now += 1.0 if name == forced else 2.0
            return fn(*a)

        return run

    monkeypatch.setattr(SG, "compact_values_grad", slow("compact", real["compact"]))
    monkeypatch.setattr(SG, "sampled_values_grad", slow("sampled", real["sampled"]))
    monkeypatch.setattr(SG, "_PATH_FNS", real)  # the chosen path runs unslowed
    # the dense candidate of the calibration is timed through its GEMM: slow it by patching the clock around it
    lin = _layer(48, 24, bias=True, density=0.05)
    x, g = torch.randn(5, 7, 24), torch.randn(5, 7, 48)
    n = lin.fishertune_active["default"]
    ref = _reference(lin, x, g, n)
    with grad_mode("dense"):
        dense = _grad(lin, x, g)
    if forced != "dense":
        tick = GC.time_paths

        def time_paths(key, fns, device):
            d = fns["dense"]

            def dense_slow():
                clock.now += 2.0
                return d()

            return tick(key, dict(fns, dense=dense_slow), device)

        monkeypatch.setattr(GC, "time_paths", time_paths)
    with grad_mode("calibrate"):
        for _ in range(GC.CALIBRATION_CALLS):
            assert torch.equal(_grad(lin, x, g), dense)
        assert lin.values_grad_calls() == {"sampled": 0, "compact": 0}  # timing runs are not counted
        assert list(GC.calibrated().values()) == [forced]
        got = _grad(lin, x, g)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    calls = lin.values_grad_calls()
    assert calls == {"sampled": int(forced == "sampled"), "compact": int(forced == "compact")}


def test_auto_never_calibrates_and_is_the_default():
    """Resume rule: the default mode is the deterministic "auto" rule; it must not consult or fill the timings."""
    assert SG._MODES[0] == "auto" and "calibrate" in SG._MODES
    lin = _layer(48, 24, bias=False, density=0.05)
    x, g = torch.randn(3, 24), torch.randn(3, 48)
    with grad_mode("auto"):
        _grad(lin, x, g)
    assert GC.calibrated() == {} and GC._timings == {}


def test_the_env_variable_accepts_calibrate():
    import os
    import subprocess
    import sys

    code = "from fishertune.tuner import sparse_grad as SG; print(SG.get_sparse_grad_mode())"
    env = dict(os.environ, FISHERTUNE_SPARSE_GRAD="calibrate")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "calibrate"


def test_the_sampled_path_differs_from_dense_in_the_last_bits():
    """Why "calibrate" is opt-in: a timing-dependent choice between these would change a resumed run's bits."""
    from fishertune.tuner.sparse_grad import SelectionPattern, sampled_values_grad

    torch.manual_seed(0)
    go, x = torch.randn(2056, 64), torch.randn(2056, 64)
    idx = torch.randperm(64 * 64)[:200]
    dense = (go.t() @ x).reshape(-1).index_select(0, idx)
    sampled = sampled_values_grad(go, x, SelectionPattern(idx, 64, 64), 200)
    torch.testing.assert_close(sampled, dense, rtol=1e-4, atol=1e-3)
    assert not torch.equal(sampled, dense)
