"""The values gradient of the sparse-delta layer: the sampled product and the compact GEMM
equal the dense GEMM + gather."""

import contextlib

import pytest
import torch
from peft import get_peft_model

import fishertune
from fishertune.tuner import FisherTuneLayer
from fishertune.tuner import layer as L
from fishertune.tuner import sparse_grad as SG

from .conftest import tiny_vit


@contextlib.contextmanager
def grad_mode(mode):
    old = SG.set_sparse_grad_mode(mode)
    try:
        yield
    finally:
        SG.set_sparse_grad_mode(old)


def _layer(out_f, in_f, bias, density=0.2, seed=0):
    torch.manual_seed(seed)
    base = torch.nn.Linear(in_f, out_f, bias=bias)
    base.requires_grad_(False)
    lin = L.Linear(base, "default")
    n = max(1, int(out_f * in_f * density))
    idx = torch.randperm(out_f * in_f)[:n]
    lin.allocate("default", idx, torch.arange(n), init_weights=False)
    lin.fishertune_values["default"].requires_grad_(True)
    return lin


def _reference(lin, x, grad_out, n_active):
    """dL/dW of the plain dense layer with the same effective weight, gathered at the active entries."""
    base = lin.get_base_layer()
    w = (base.weight + lin.get_delta_weight("default")).detach().requires_grad_(True)
    y = torch.nn.functional.linear(x, w, base.bias)
    y.backward(grad_out)
    g = torch.zeros_like(lin.fishertune_values["default"])
    g[:n_active] = w.grad.reshape(-1)[lin.fishertune_indices["default"][:n_active].long()]
    return g


def _grad(lin, x, grad_out):
    lin.fishertune_values["default"].grad = None
    lin(x).backward(grad_out)
    return lin.fishertune_values["default"].grad.clone()


# The targeted shapes of the benchmark's ViT-S (q/k/v, fc1, fc2) scaled down, the tiny test ViT's, and odd ones.
SHAPES = [(32, 32), (64, 32), (32, 64), (48, 48), (96, 24), (24, 96), (7, 13)]


@pytest.mark.parametrize("mode", ["sampled", "compact", "dense"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_values_grad_equals_dense_reference(shape, bias, mode):
    lin = _layer(*shape, bias=bias)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 11, shape[1], generator=g)
    go = torch.randn(3, 11, shape[0], generator=g)
    n = lin.num_allocated("default")
    with grad_mode(mode):
        got = _grad(lin, x, go)
        assert (mode != "dense") == ("default" in lin._fishertune_patterns)
        assert lin.values_grad_calls() == {"sampled": int(mode == "sampled"), "compact": int(mode == "compact")}
    torch.testing.assert_close(got, _reference(lin, x, go, n), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_inactive_entries_get_zero_gradient(shape):
    lin = _layer(*shape, bias=True, density=0.3)
    total = lin.num_allocated("default")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, shape[1], generator=g)
    go = torch.randn(2, 9, shape[0], generator=g)
    for n in (total, total // 2, 1, total - 1):
        assert lin.set_active_rank("default", n) == n
        ref = _reference(lin, x, go, n)
        for mode in ("sampled", "compact", "dense"):
            with grad_mode(mode):
                got = _grad(lin, x, go)
            assert torch.all(got[n:] == 0), mode
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_input_and_bias_grads_do_not_depend_on_the_path():
    lin = _layer(40, 24, bias=True)
    lin.get_base_layer().bias.requires_grad_(True)
    x = torch.randn(5, 24, requires_grad=True)
    out = {}
    for mode in ("sampled", "compact", "dense"):
        x.grad = None
        lin.get_base_layer().bias.grad = None
        with grad_mode(mode):
            v = _grad(lin, x, torch.ones(5, 40))
        out[mode] = (v, x.grad.clone(), lin.get_base_layer().bias.grad.clone())
    for mode in ("sampled", "compact"):
        for a, b in zip(out[mode], out["dense"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["sampled", "compact"])
def test_trained_base_weight_takes_the_dense_path(mode):
    lin = _layer(16, 8, bias=False)
    lin.get_base_layer().weight.requires_grad_(True)
    x = torch.randn(4, 8)
    with grad_mode(mode):
        lin(x).sum().backward()
    assert lin.get_base_layer().weight.grad is not None
    assert "default" not in lin._fishertune_patterns
    torch.testing.assert_close(
        lin.fishertune_values["default"].grad,
        lin.get_base_layer().weight.grad.reshape(-1)[lin.fishertune_indices["default"].long()],
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cpu(dtype):
    """sampled_addmm has no half kernel on CPU: "sampled" falls back to dense; the compact GEMM runs in the half
    dtype."""
    if not SG.sampled_supported("cpu", torch.float32) or SG.sampled_supported("cpu", dtype):
        pytest.skip("the fallback is for dtypes sampled_addmm lacks on CPU")
    lin = _layer(32, 64, bias=True)
    x, go = torch.randn(2, 5, 64), torch.randn(2, 5, 32)
    grads = {}
    for mode in ("sampled", "dense"):
        with grad_mode(mode), torch.autocast("cpu", dtype=dtype):
            grads[mode] = _grad(lin, x, go)
    assert "default" not in lin._fishertune_patterns
    assert torch.equal(grads["sampled"], grads["dense"])
    assert grads["dense"].dtype == torch.float32
    ref = _reference(lin, x, go, lin.num_allocated("default"))
    torch.testing.assert_close(grads["dense"], ref, rtol=2e-2, atol=5e-2)
    with grad_mode("compact"), torch.autocast("cpu", dtype=dtype):
        compact = _grad(lin, x, go)
    assert lin.values_grad_calls()["compact"] == 1 and compact.dtype == torch.float32
    torch.testing.assert_close(compact, ref, rtol=2e-2, atol=5e-2)


def test_pattern_is_built_once_per_selection():
    lin = _layer(24, 40, bias=True)
    x, go = torch.randn(6, 40), torch.randn(6, 24)
    with grad_mode("sampled"):
        _grad(lin, x, go)
        first = lin._fishertune_patterns["default"]
        with grad_mode("compact"):  # one pattern serves both sparse paths
            _grad(lin, x, go)
        assert lin._fishertune_patterns["default"] is first
        lin.set_active_rank("default", 50)  # a new active prefix reuses the allocation's pattern
        _grad(lin, x, go)
        assert lin._fishertune_patterns["default"] is first
        # a new selection drops it ...
        n = 30
        lin.allocate("default", torch.randperm(24 * 40)[:n], torch.arange(n), init_weights=False)
        lin.fishertune_values["default"].requires_grad_(True)
        assert "default" not in lin._fishertune_patterns
        got = _grad(lin, x, go)
        assert lin._fishertune_patterns["default"] is not first
        torch.testing.assert_close(got, _reference(lin, x, go, n), rtol=1e-5, atol=1e-5)
        # ... and so does an index buffer written in place (a checkpoint loaded into an allocated layer)
        second = lin._fishertune_patterns["default"]
        lin.fishertune_indices["default"].copy_(torch.randperm(24 * 40)[:n].int())
        got = _grad(lin, x, go)
        assert lin._fishertune_patterns["default"] is not second
        torch.testing.assert_close(got, _reference(lin, x, go, n), rtol=1e-5, atol=1e-5)


def _never():
    raise AssertionError("the rule asked for the block where it did not need it")


def test_auto_rule():
    with grad_mode("dense"):
        assert not SG.use_sampled_grad("cpu", torch.float32, 384, 384, 10)
        assert SG.values_grad_path("cpu", torch.float32, 384, 384, 10, _never) == "dense"
    with grad_mode("sampled"):
        assert SG.use_sampled_grad("cpu", torch.float32, 384, 384, 384 * 384)
        assert not SG.use_sampled_grad("cpu", torch.bfloat16, 384, 384, 10)
        assert SG.values_grad_path("cpu", torch.bfloat16, 384, 384, 10, _never) == "dense"  # no kernel: dense
    with grad_mode("compact"):
        assert SG.values_grad_path("cpu", torch.float32, 384, 384, 10, _never) == "compact"
        assert SG.values_grad_path("cuda", torch.bfloat16, 384, 384, 10, _never) == "compact"
    with grad_mode("auto"):
        assert not SG.use_sampled_grad("cpu", torch.bfloat16, 384, 384, 10)
        assert not SG.use_sampled_grad("cuda", torch.float32, 384, 384, 10)  # not measured on CUDA yet
        assert SG.values_grad_path("cuda", torch.float32, 384, 384, 10, _never) == "dense"
        assert not SG.use_sampled_grad("cpu", torch.float32, 384, 384, 384 * 384)  # dense weights: the GEMM wins
        # the measured crossover: sparse enough, the sampled product wins on CPU (fp32)
        assert SG.use_sampled_grad("cpu", torch.float32, 1536, 384, int(0.005 * 1536 * 384))
        # both sparse paths beat dense: the cheaper one (cost 0 -> 1 at its crossover), so a small block wins
        low, full = int(0.005 * 1536 * 384), 1536 * 384
        assert SG.values_grad_path("cpu", torch.float32, 1536, 384, low, lambda: full) == "sampled"
        assert SG.values_grad_path("cpu", torch.float32, 1536, 384, low, lambda: full // 100) == "compact"
        sampled_cost = 0.005 / (SG.SAMPLED_CPU_A - SG.SAMPLED_CPU_B * (1 / 1536 + 1 / 384))
        tie = int(sampled_cost * SG.COMPACT_CPU_MAX * full)
        assert SG.values_grad_path("cpu", torch.float32, 1536, 384, low, lambda: tie - 200) == "compact"
        assert SG.values_grad_path("cpu", torch.float32, 1536, 384, low, lambda: tie + 200) == "sampled"
        # 5% spread over the whole weight: dense; the same 5% inside a tenth of the columns: compact
        nnz, full = int(0.05 * 1536 * 384), 1536 * 384
        assert SG.values_grad_path("cpu", torch.float32, 1536, 384, nnz, lambda: full) == "dense"
        assert SG.values_grad_path("cpu", torch.float32, 1536, 384, nnz, lambda: full // 10) == "compact"
        at = int(SG.COMPACT_CPU_MAX * full)
        assert SG.values_grad_path("cpu", torch.float32, 1536, 384, nnz, lambda: at - 1) == "compact"
        assert SG.values_grad_path("cpu", torch.float32, 1536, 384, nnz, lambda: at + 1) == "dense"
        assert SG.values_grad_path("cpu", torch.bfloat16, 1536, 384, 10, lambda: 10) == "compact"
    with pytest.raises(ValueError, match="mode"):
        SG.set_sparse_grad_mode("fast")


def test_block_of_a_prefix_by_hand():
    """A 3x4 weight with entries (row 1, col 1), (row 2, col 3), (row 0, col 1) in global-rank order."""
    pattern = SG.SelectionPattern(torch.tensor([5, 11, 1], dtype=torch.int32), 3, 4)
    assert pattern.block_size(1) == 1 and pattern.block_size(2) == 4 and pattern.block_size(3) == 6
    rows, cols, at = pattern.block(2)
    assert rows.tolist() == [1, 2] and cols.tolist() == [1, 3] and at.tolist() == [0, 3]
    rows, cols, at = pattern.block(3)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 3] and at.tolist() == [2, 5, 0]
    go, x = torch.randn(7, 3), torch.randn(7, 4)
    torch.testing.assert_close(SG.compact_values_grad(go, x, pattern, 3), (go.t() @ x).reshape(-1)[[5, 11, 1]])


def test_auto_takes_the_compact_gemm_for_a_blocky_selection():
    """Entries confined to 8 of 96 rows (a Fisher selection concentrates so): compact, and exact."""
    torch.manual_seed(0)
    base = torch.nn.Linear(48, 96).requires_grad_(False)
    lin = L.Linear(base, "default")
    rows = torch.randperm(96)[:8]
    idx = (rows[:, None] * 48 + torch.arange(48)).reshape(-1)[torch.randperm(8 * 48)[:300]]
    lin.allocate("default", idx, torch.arange(300), init_weights=False)
    lin.fishertune_values["default"].requires_grad_(True)
    x, go = torch.randn(2, 6, 48), torch.randn(2, 6, 96)
    with grad_mode("auto"):
        got = _grad(lin, x, go)
    assert lin.values_grad_calls() == {"sampled": 0, "compact": 1}
    torch.testing.assert_close(got, _reference(lin, x, go, 300), rtol=1e-5, atol=1e-5)


def _peft_grads(mode, num_layers=3, **cfg):
    model = get_peft_model(
        tiny_vit(num_layers), fishertune.FisherTuneConfig(modules_to_save=["classifier"], init_weights=False, **cfg)
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])
    with grad_mode(mode):
        model(pixel_values=x, labels=y).loss.backward()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, FisherTuneLayer)}
    return model, {
        n: m.fishertune_values["default"].grad for n, m in layers.items() if "default" in m.fishertune_values
    }


@pytest.mark.parametrize("sparse_mode", ["sampled", "compact"])
@pytest.mark.parametrize("delta_min", [None, 0.02])
def test_whole_model_sparse_paths_equal_dense(delta_min, sparse_mode):
    kw = dict(init_criterion="magnitude", delta_max=0.1)
    models = {}
    for mode in (sparse_mode, "dense"):
        model, grads = _peft_grads(mode, **kw)
        if delta_min is not None:  # narrow the active prefix (Eq. 16) and differentiate again
            model.set_active_fraction(delta_min)
            for p in model.parameters():
                p.grad = None
            g = torch.Generator().manual_seed(1)
            x, y = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])
            with grad_mode(mode):
                model(pixel_values=x, labels=y).loss.backward()
            grads = {
                n: m.fishertune_values["default"].grad
                for n, m in model.named_modules()
                if isinstance(m, FisherTuneLayer)
            }
        models[mode] = (model, grads)
    (ms, gs), (md, gd) = models[sparse_mode], models["dense"]
    assert gs.keys() == gd.keys() and gs
    for n in gs:
        torch.testing.assert_close(gs[n], gd[n], rtol=1e-5, atol=1e-7)
    if delta_min is not None:
        for n, m in ms.named_modules():
            if isinstance(m, FisherTuneLayer):
                assert torch.all(gs[n][m.fishertune_active["default"] :] == 0)
    used = [n for n, m in ms.named_modules() if isinstance(m, FisherTuneLayer) and m._fishertune_patterns]
    assert used and not any(m._fishertune_patterns for m in md.modules() if isinstance(m, FisherTuneLayer))


def test_two_active_adapters_take_the_dense_path():
    lin = _layer(16, 24, bias=True)
    lin.update_layer("other")
    n = 40
    lin.allocate("other", torch.randperm(16 * 24)[:n], torch.arange(n), init_weights=False)
    lin.fishertune_values["other"].requires_grad_(True)
    lin.set_adapter(["default", "other"])
    for p in lin.fishertune_values.values():
        p.requires_grad_(True)
    x = torch.randn(5, 24)
    base = lin.get_base_layer()
    w = (base.weight + lin.get_delta_weight("default") + lin.get_delta_weight("other")).detach().requires_grad_(True)
    torch.nn.functional.linear(x, w, base.bias).sum().backward()
    for mode in ("sampled", "compact"):
        for p in lin.fishertune_values.values():
            p.grad = None
        with grad_mode(mode):
            lin(x).sum().backward()
        assert not lin._fishertune_patterns
        for name in ("default", "other"):
            idx = lin.fishertune_indices[name].long()
            torch.testing.assert_close(lin.fishertune_values[name].grad, w.grad.reshape(-1)[idx], rtol=1e-5, atol=1e-5)


def test_the_layer_counts_the_backward_passes_per_path():
    """`values_grad_calls`: what ran (benchmarks/tuner_speed_worker.py reports it beside what the rule said)."""
    lin = _layer(32, 32, bias=True)
    x, g = torch.randn(5, 32), torch.randn(5, 32)
    assert lin.values_grad_calls() == {"sampled": 0, "compact": 0}
    with grad_mode("dense"):
        _grad(lin, x, g)
    assert lin.values_grad_calls() == {"sampled": 0, "compact": 0}
    with grad_mode("sampled"):
        _grad(lin, x, g)
        _grad(lin, x, g)
    with grad_mode("compact"):
        _grad(lin, x, g)
    assert lin.values_grad_calls() == {"sampled": 2, "compact": 1} and lin.sampled_grad_calls() == 2
    lin.allocate("default", torch.arange(8), torch.arange(8), init_weights=False)  # a new selection, a new count
    assert lin.values_grad_calls() == {"sampled": 0, "compact": 0}
