"""EVA02 (timm, random init) with the package: the tuner preset, FisherTune end to end, pyramid taps,
Rein and AdaptFormer trained one step and reloaded. Needs timm (run with `make test-eva02`)."""

import re

import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

from peft import PeftModel, get_peft_model  # noqa: E402

import fishertune  # noqa: E402
from fishertune.backbones import locate  # noqa: E402
from fishertune.backbones.eva02 import Eva02Backbone, eva02_pyramid_taps, eva02_target_regex  # noqa: E402
from fishertune.baselines import (  # noqa: E402
    AdaptFormerConfig,
    ReinConfig,
    apply_method,
    load_method_state,
    save_method_state,
)
from fishertune.models import REIN_SCALES, tapped_features  # noqa: E402
from fishertune.models.backbone import resample  # noqa: E402
from fishertune.tuner import FisherTuneLayer, target_regex  # noqa: E402

from .conftest import EVA02_TINY  # noqa: E402

TINY = EVA02_TINY
# EVA02-B/L: separate q/k/v and SwiGLU (fc1_g, fc1_x); EVA02-Ti/S: fused qkv and a packed GLU fc1.
LEAVES = {
    "eva02_base_patch14_224": ("attn.q_proj", "attn.k_proj", "attn.v_proj", "mlp.fc1_g", "mlp.fc1_x", "mlp.fc2"),
    "eva02_tiny_patch14_224": ("attn.qkv", "mlp.fc1", "mlp.fc2"),
}
NAMES = sorted(LEAVES)


def _eva(name="eva02_base_patch14_224", **kw):
    torch.manual_seed(0)
    return Eva02Backbone.from_timm(name, pretrained=False, **{**TINY, **kw}).eval()


def _x(h=28, w=28, n=2, seed=1):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


class _Segmenter(nn.Module):
    """A backbone at `.backbone` plus a head whose leaf names collide with the block pattern's."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Module()
        self.head.mlp = nn.Module()
        self.head.mlp.fc1 = nn.Linear(32, 4)


@pytest.mark.parametrize("name", NAMES)
def test_tuner_preset_finds_eva02_and_only_its_block_linears(name):
    model = _eva(name)
    path, family, found = locate(model)
    assert (path, family.name, found) == ("", "eva02", model)
    assert target_regex(model) == eva02_target_regex(model)
    hits = {n for n, _ in model.named_modules() if re.fullmatch(target_regex(model), n)}
    assert hits == {f"eva.blocks.{i}.{leaf}" for i in range(2) for leaf in LEAVES[name]}
    seg = _Segmenter(_eva(name))
    path, family, found = locate(seg)
    assert (path, family.name, found) == ("backbone", "eva02", seg.backbone)
    seg_hits = {n for n, _ in seg.named_modules() if re.fullmatch(target_regex(seg), n)}
    assert seg_hits == {"backbone." + h for h in hits}  # the head's mlp.fc1 is never caught


@pytest.mark.parametrize("name", NAMES)
def test_wrapper_matches_timm_forward(name):
    model, x = _eva(name), _x(28, 42)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        assert torch.equal(out.last_hidden_state, model.eva.forward_features(x))
        assert torch.equal(out.last_hidden_state, model.eva.norm(out.hidden_states[-1]))


@pytest.mark.parametrize("name", NAMES)
def test_fishertune_on_eva02_select_train_save_load(name, tmp_path):
    x = _x()
    plain = _eva(name)
    pristine = {k: v.clone() for k, v in plain.state_dict().items()}
    with torch.no_grad():
        ref = plain(x).last_hidden_state

    model = get_peft_model(_eva(name), fishertune.FisherTuneConfig(delta_max=0.2, delta_min=0.05))
    targets = model.fishertune_target_weights()
    assert {n.split("eva.", 1)[1] for n in targets} == {f"blocks.{i}.{leaf}" for i in range(2) for leaf in LEAVES[name]}
    allocated = model.select({n: w.detach().abs() for n, w in targets.items()})
    assert all(allocated.values()), allocated  # every targeted layer holds entries, so all are exercised below
    with torch.no_grad():  # zero deltas: the adapter is the identity
        assert torch.equal(model(pixel_values=x).last_hidden_state, ref)

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("fishertune_values" in n for n in trainable)
    model.set_active_fraction(0.2)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model(pixel_values=x).last_hidden_state.pow(2).mean().backward()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, FisherTuneLayer)}
    for n, layer in layers.items():  # fused qkv included: timm must call the wrapped module
        assert layer.fishertune_values["default"].grad.abs().sum() > 0, n
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=x).last_hidden_state
    assert not torch.allclose(out, ref)

    model.save_pretrained(tmp_path)
    fresh = _eva(name)
    fresh.load_state_dict(pristine)
    loaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).last_hidden_state, out)

    # Merged, only the selected entries of the targeted weights differ from the plain backbone.
    selected = {n: m.fishertune_indices["default"].long() for n, m in layers.items()}
    merged = loaded.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(x).last_hidden_state, out, rtol=1e-5, atol=1e-6)
    changed_somewhere = False
    for key, value in merged.state_dict().items():
        diff = (value != pristine[key]).flatten().nonzero().flatten()
        module = key.rsplit(".", 1)[0]
        full = "base_model.model." + module
        if key.endswith(".weight") and full in selected:
            assert set(diff.tolist()) <= set(selected[full].tolist()), key
            assert diff.numel() > 0, key
            changed_somewhere = True
        else:
            assert diff.numel() == 0, key
    assert changed_somewhere


def test_pyramid_taps_on_eva02_match_timm_intermediates():
    model = _eva(depth=6)
    taps = eva02_pyramid_taps(6)
    assert taps == (2, 3, 4, 6) and eva02_pyramid_taps(24) == (8, 12, 16, 24)
    x = _x(28, 42)  # non-square: a 2 x 3 patch grid
    with torch.no_grad():
        feats = tapped_features(model, x, taps)
        ref = model.eva.forward_intermediates(x, indices=[t - 1 for t in taps], norm=False, intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 2, 3)] * 4
    for f, r in zip(feats, ref):
        assert torch.equal(f, r)
    pyramid = resample(feats, REIN_SCALES)
    assert [tuple(f.shape[-2:]) for f in pyramid] == [(8, 12), (4, 6), (2, 3), (1, 1)]
    with pytest.raises(ValueError, match="divisible by 6"):
        eva02_pyramid_taps(8)


METHODS = {
    "rein": lambda: ReinConfig(token_length=5, lora_dim=4, link_token_to_query=False),
    "adaptformer": lambda: AdaptFormerConfig(bottleneck=8),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_rein_and_adaptformer_on_eva02_train_and_reload(method, name, tmp_path):
    x = _x()
    with torch.no_grad():
        ref = _eva(name)(x).last_hidden_state
    model = apply_method(_eva(name), METHODS[method]())
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(any(s.startswith(method + "_") for s in n.split(".")) for n in trainable)
    assert all(n.startswith("eva.") for n in frozen)

    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(x).last_hidden_state.pow(2).mean().backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    # AdaptFormer's up-projection starts at zero, so its down-projection gets no signal on step one.
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    opt.step()
    model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    with torch.no_grad():
        out = model(x).last_hidden_state
    assert not torch.allclose(out, ref)

    save_method_state(model, tmp_path)
    fresh = load_method_state(_eva(name), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(fresh(x).last_hidden_state, out)
    with pytest.raises(ValueError, match="another backbone"):
        load_method_state(_eva(name, depth=3), tmp_path)
