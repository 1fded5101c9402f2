"""PEFT's adapter API beyond train/save/load: transformers' PEFT mixin, per-sample adapters, layers_to_transform,
add_weighted_adapter and the mixed-model refusal."""

import peft
import pytest
import torch
import transformers as T

import fishertune
from fishertune.models import build_model
from fishertune.tuner import FisherTuneLayer, global_topk

from .conftest import tiny_vit


def _segmenter(seed=0):
    torch.manual_seed(seed)
    cfg = T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
                      intermediate_size=64)  # fmt: skip
    return build_model("light", cfg, num_labels=5).eval()


def _random_scores(model, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) for n, w in model.fishertune_target_weights().items()}


def _logits(model, x, **kw):
    with torch.no_grad():
        return model(pixel_values=x, **kw).logits


def test_transformers_mixin_adds_switches_disables_and_reloads_an_adapter(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    seg = _segmenter()
    base = _logits(seg, x)
    seg.add_adapter(fishertune.FisherTuneConfig(init_weights=False, delta_max=0.2), adapter_name="a")
    assert seg.active_adapters() == ["a"]
    out_a = _logits(seg, x)
    assert not torch.allclose(out_a, base)
    seg.disable_adapters()
    torch.testing.assert_close(_logits(seg, x), base, rtol=0, atol=0)
    seg.enable_adapters()
    torch.testing.assert_close(_logits(seg, x), out_a, rtol=0, atol=0)

    # A second adapter whose selection is not the config's data-free one (as after DR-FIM), at a partial active share.
    seg.add_adapter(fishertune.FisherTuneConfig(init_weights=False, delta_max=0.2, delta_min=0.05), adapter_name="b")
    seg.set_adapter("b")
    tuner = next(m for m in seg.modules() if isinstance(m, FisherTuneLayer))
    assert seg.active_adapters() == ["b"] and tuner.active_adapters == ["b"]
    layers = {n: m for n, m in seg.named_modules() if isinstance(m, FisherTuneLayer)}
    g = torch.Generator().manual_seed(3)
    # ... in which the first layer gets no entry (it keeps only its shape in the file)
    shapes = [(n, m.get_base_layer().weight.shape) for n, m in layers.items()]
    scores = {n: torch.rand(shape, generator=g) + (i > 0) for i, (n, shape) in enumerate(shapes)}
    sel = global_topk(scores, 0.2)
    assert sel[next(iter(layers))].indices.numel() == 0
    total = sum(s.indices.numel() for s in sel.values())
    for n, m in layers.items():
        m.allocate("b", sel[n].indices, sel[n].ranks, init_weights=False)
        m.set_active_rank("b", int(0.6 * total))
    out_b = _logits(seg, x)
    sd = seg.get_adapter_state_dict("b")
    assert any(k.endswith("fishertune_values") for k in sd) and not any(".b." in k for k in sd)
    seg.save_pretrained(tmp_path)

    fresh = _segmenter()
    fresh.load_adapter(str(tmp_path), adapter_name="b")
    torch.testing.assert_close(_logits(fresh, x), out_b, rtol=0, atol=0)
    for n, m in fresh.named_modules():
        if isinstance(m, FisherTuneLayer):
            assert m.num_allocated("b") == layers[n].num_allocated("b"), n
            assert m.fishertune_active["b"] == layers[n].fishertune_active["b"], n
            if m.num_allocated("b"):
                assert torch.equal(m.fishertune_indices["b"].long(), layers[n].fishertune_indices["b"].long()), n
    # The same folder through PEFT's own loader.
    loaded = peft.PeftModel.from_pretrained(_segmenter(), tmp_path)
    torch.testing.assert_close(_logits(loaded, x), out_b, rtol=0, atol=0)


def _two_adapters():
    model = peft.get_peft_model(tiny_vit(), fishertune.FisherTuneConfig(init_weights=False, delta_max=0.2))
    model.add_adapter("other", fishertune.FisherTuneConfig(init_weights=False, delta_max=0.2, init_criterion="random"))
    return model.eval()


def test_adapter_names_give_each_sample_its_adapter(batch):
    x, _ = batch
    model = _two_adapters()
    names = ["default", "other", "__base__", "other"]
    mixed = model(pixel_values=x, adapter_names=names).logits
    with torch.no_grad():
        alone = {n: model(pixel_values=x).logits for n in ("default", "other") if model.set_adapter(n) is None}
        with model.disable_adapter():
            alone["__base__"] = model(pixel_values=x).logits
    want = torch.stack([alone[n][i] for i, n in enumerate(names)])
    torch.testing.assert_close(mixed, want, rtol=0, atol=0)  # each sample as it is alone, bitwise
    assert not torch.allclose(mixed[1], alone["default"][1])


def test_adapter_names_are_refused_where_they_cannot_apply(batch):
    x, _ = batch
    model = _two_adapters()
    with pytest.raises(ValueError, match="non-existing adapter"):
        model(pixel_values=x, adapter_names=["default", "typo", "default", "default"])
    with pytest.raises(ValueError, match="Length of `adapter_names`"):
        model(pixel_values=x, adapter_names=["default", "other"])
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(pixel_values=x, adapter_names=["default"] * 4)


@pytest.mark.parametrize("targets", [None, ["q_proj", "k_proj", "v_proj", "fc1", "fc2"]])
def test_layers_to_transform_wraps_only_those_blocks(targets):
    model = peft.get_peft_model(
        tiny_vit(), fishertune.FisherTuneConfig(target_modules=targets, layers_to_transform=[0])
    )
    wrapped = [n for n, m in model.named_modules() if isinstance(m, FisherTuneLayer)]
    assert len(wrapped) == 5 and all(".layers.0." in n for n in wrapped), wrapped  # q, k, v, fc1, fc2 of block 0
    config = fishertune.FisherTuneConfig(target_modules=targets, layers_to_transform=[1, 2], layers_pattern="layers")
    model = peft.get_peft_model(tiny_vit(), config)
    blocks = [n.split(".layers.")[1].split(".")[0] for n, m in model.named_modules() if isinstance(m, FisherTuneLayer)]
    assert sorted(blocks) == ["1"] * 5 + ["2"] * 5


def test_weighted_adapter_equals_the_weighted_sum_of_dense_deltas(batch):
    x, _ = batch
    model = _two_adapters()
    model.set_active_fraction(0.1, "default")  # a partial prefix: only active entries count
    model.add_weighted_adapter(["default", "other"], [0.7, -1.3], "mix")
    layers = [m for m in model.modules() if isinstance(m, FisherTuneLayer)]
    overlap = 0
    for m in layers:
        want = 0.7 * m.get_delta_weight("default") + -1.3 * m.get_delta_weight("other")
        assert torch.equal(m.get_delta_weight("mix"), want)
        a, b = (set(m.fishertune_indices[k][: m.fishertune_active[k]].tolist()) for k in ("default", "other"))
        assert m.num_allocated("mix") == len(a | b)
        overlap += len(a & b)
    assert overlap > 0  # the union really merged shared entries
    ranks = torch.cat([m.fishertune_ranks["mix"].long() for m in layers])
    assert torch.equal(ranks.sort().values, torch.arange(ranks.numel()))  # one gap-free global ranking
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.endswith(".mix"))
    model.set_adapter("mix")
    got = model(pixel_values=x).logits
    for m in layers:  # the dense reference: W + 0.7 d_default - 1.3 d_other in every layer
        w = m.get_base_layer().weight
        w.data += 0.7 * m.get_delta_weight("default") - 1.3 * m.get_delta_weight("other")
    with model.disable_adapter(), torch.no_grad():
        ref = model(pixel_values=x).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_weighted_adapter_refuses_modules_to_save_and_unknown_names():
    model = _two_adapters()
    with pytest.raises(ValueError, match="do not exist"):
        model.add_weighted_adapter(["default", "nope"], [1.0, 1.0], "mix")
    with pytest.raises(ValueError, match="one weight per adapter"):
        model.add_weighted_adapter(["default", "other"], [1.0], "mix")
    model.add_adapter("head", fishertune.FisherTuneConfig(modules_to_save=["classifier"]))
    with pytest.raises(ValueError, match="modules_to_save"):
        model.add_weighted_adapter(["default", "head"], [1.0, 1.0], "mix")


def test_mixed_model_refuses_fishertune_clearly():
    with pytest.raises(ValueError, match="not compatible with the `PeftMixedModel`"):
        peft.get_peft_model(tiny_vit(), fishertune.FisherTuneConfig(), mixed=True)
