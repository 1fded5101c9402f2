"""Each baseline on tiny backbones: freezing, counts, init behaviour, one step, save/reload."""

import pytest
import torch

from fishertune.baselines import (
    AdaptFormerConfig,
    ReinConfig,
    VPTConfig,
    VQTConfig,
    apply_method,
    count_trainable,
    load_method_state,
    save_method_state,
    vqt_features,
)

from .conftest import DEPTH, DIM, run, tiny_backbone

T, R, B, Q = 5, 4, 8, 3  # Rein tokens / rank, AdaptFormer bottleneck, VPT prompts and VQT queries
CONFIGS = {
    "rein": lambda: ReinConfig(token_length=T, lora_dim=R, link_token_to_query=False),
    "vpt": lambda: VPTConfig(num_tokens=Q),
    "adaptformer": lambda: AdaptFormerConfig(bottleneck=B),
    "vqt": lambda: VQTConfig(num_queries=Q, link_to_head=False),
}
# Hand formulas (L blocks, width C): written out here, independent of the package's own.
EXPECTED = {
    "rein": DEPTH * (T * R + R * DIM) + 2 * (DIM * DIM + DIM) + 1,  # tokens A, B; 2 shared linears; scale
    "vpt": DEPTH * Q * DIM,
    "adaptformer": DEPTH * (DIM * B + B + B * DIM + DIM),
    "vqt": DEPTH * Q * DIM,
}
CASES = [(m, f) for m in CONFIGS for f in ("dinov2", "vit")] + [
    ("rein", "clip"), ("adaptformer", "clip"), ("vpt", "vit_mae"), ("vqt", "vit_mae"),
    ("rein", "dinov2_reg"), ("vpt", "dinov2_reg"),
]  # fmt: skip


def test_every_registered_baseline_has_a_case_here():
    from fishertune.baselines import api

    assert set(CONFIGS) == set(api.METHODS) == set(EXPECTED), "a new baseline needs its tiny config and hand formula"


def _installed(method, family, seed=0):
    model = tiny_backbone(family)
    torch.manual_seed(100 + seed)  # the method's own init, independent of the backbone's
    return apply_method(model, CONFIGS[method]())


def _loss(model, method, x):
    out = run(model, x).last_hidden_state
    # VQT leaves the backbone output alone by design: its signal reaches the loss via its features.
    return out.pow(2).mean() + (vqt_features(model).pow(2).mean() if method == "vqt" else 0)


@pytest.mark.parametrize("method,family", CASES)
def test_only_method_parameters_train_and_count_matches(method, family):
    model = _installed(method, family)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(any(part.startswith(method + "_") for part in n.split(".")) for n in trainable)
    assert count_trainable(model) == EXPECTED[method]


@pytest.mark.parametrize("method,family", CASES)
def test_output_at_init(method, family, images):
    ref = run(tiny_backbone(family), images, output_hidden_states=True)
    out = run(_installed(method, family), images, output_hidden_states=True)
    # Token-adding methods must hide their tokens from every block output (pyramid taps).
    assert [h.shape for h in out.hidden_states] == [h.shape for h in ref.hidden_states]
    if method == "adaptformer":  # zero-initialised up projection: exactly the frozen model
        assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    elif method == "vqt":  # masked attention: patch tokens never see the queries
        torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-5)
    else:
        assert not torch.allclose(out.last_hidden_state, ref.last_hidden_state)


def test_rein_zero_mlp_delta_f_is_identity_and_prefix_tokens_untouched(images):
    ref = tiny_backbone("dinov2_reg")(pixel_values=images).last_hidden_state
    cfg = ReinConfig(token_length=T, lora_dim=R, zero_mlp_delta_f=True, link_token_to_query=False)
    model = apply_method(tiny_backbone("dinov2_reg"), cfg)
    assert torch.equal(model(pixel_values=images).last_hidden_state, ref)
    # Refine only the last block: its CLS and registers must come out untouched (the norm is per token).
    cfg.layers = [1]
    model = apply_method(tiny_backbone("dinov2_reg"), cfg)
    with torch.no_grad():
        model.rein_tokens.mlp_delta_f.bias.fill_(1.0)
    out = model(pixel_values=images).last_hidden_state
    assert torch.equal(out[:, :3], ref[:, :3])
    assert not torch.allclose(out[:, 3:], ref[:, 3:])


@pytest.mark.parametrize("method,family", CASES)
def test_one_step_changes_only_method_parameters(method, family, images):
    model = _installed(method, family).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Adam: a step of ~lr on every entry with a nonzero gradient, however small (Rein scales by 1e-3).
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _loss(model, method, images).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed == with_grad
    assert all(method + "_" in n for n in changed)
    if method == "adaptformer":  # at init only up_proj gets gradient (down's is multiplied by up = 0)
        assert all("up_proj" in n for n in changed)


@pytest.mark.parametrize("method,family", CASES)
def test_save_reload_reproduces_outputs(method, family, images, tmp_path):
    model = _installed(method, family).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # two steps so AdaptFormer's down projection moves too
        opt.zero_grad()
        _loss(model, method, images).backward()
        opt.step()
    model.eval()
    expected = run(model, images).last_hidden_state
    save_method_state(model, tmp_path)
    fresh = tiny_backbone(family)  # same frozen backbone, method not installed yet
    torch.manual_seed(999)
    load_method_state(fresh, tmp_path)
    assert torch.equal(run(fresh, images).last_hidden_state, expected)
    if method == "vqt":
        run(model, images)
        assert torch.equal(vqt_features(fresh), vqt_features(model))
    # Only the method's tensors were written.
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "baseline_model.safetensors")) == {
        "backbone." + n for n, p in model.named_parameters() if p.requires_grad
    }


def test_load_into_wrong_model_fails_clearly(tmp_path):
    save_method_state(_installed("adaptformer", "dinov2"), tmp_path)
    with pytest.raises(ValueError, match="another backbone.*model_type"):
        load_method_state(tiny_backbone("vit"), tmp_path)
    with pytest.raises(ValueError, match="hidden_size"):
        load_method_state(tiny_backbone("dinov2", hidden_size=48), tmp_path)
    other = apply_method(tiny_backbone("dinov2"), AdaptFormerConfig(bottleneck=4))
    with pytest.raises(ValueError, match="differs from the saved"):
        load_method_state(other, tmp_path)


def test_second_baseline_is_refused():
    model = _installed("vpt", "vit")
    with pytest.raises(ValueError, match="already installed"):
        apply_method(model, VQTConfig())


@pytest.mark.parametrize(
    "make",
    [
        lambda: ReinConfig(token_length=1),
        lambda: ReinConfig(lora_dim=-1),
        lambda: VPTConfig(num_tokens=0),
        lambda: VPTConfig(dropout=1.0),
        lambda: AdaptFormerConfig(input="ffn"),
        lambda: VQTConfig(num_queries=0),
        lambda: VQTConfig(layers=[-1]),
    ],
)
def test_config_validation(make):
    with pytest.raises(ValueError):
        make()


def test_config_round_trip_and_unknown_fields():
    cfg = AdaptFormerConfig(bottleneck=16, layers=[1, 0])
    assert cfg.layers == [0, 1] and AdaptFormerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="Unknown"):
        VPTConfig.from_dict({"num_tokens": 3, "tokens": 4})


def test_layer_subset(images):
    model = apply_method(tiny_backbone("vit"), VPTConfig(num_tokens=Q, layers=[1]))
    assert count_trainable(model) == 1 * Q * DIM
    with pytest.raises(ValueError, match="out of range"):
        apply_method(tiny_backbone("vit"), VPTConfig(layers=[2]))
