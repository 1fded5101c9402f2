"""The PEFT contract of a saved adapter (issue 17): frozen inference loads, the active share, complete and finite
files, and a default config that generic PEFT code can train."""

import os
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import fishertune
from fishertune.tuner import FisherTuneLayer

from .conftest import tiny_vit

FILE = "adapter_model.safetensors"


def _layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, FisherTuneLayer)}


def _saved(tmp_path, num_layers=3, fraction=None, **cfg):
    cfg.setdefault("init_weights", False)
    model = get_peft_model(tiny_vit(num_layers), fishertune.FisherTuneConfig(modules_to_save=["classifier"], **cfg))
    if fraction is not None:
        model.set_active_fraction(fraction)
    path = tmp_path / f"adapter{num_layers}"
    model.save_pretrained(path)
    return model, path


def _rewrite(src, dst, edit):
    shutil.copytree(src, dst)
    sd = load_file(os.path.join(src, FILE))
    save_file(edit(sd), os.path.join(dst, FILE))
    return dst


def _trainable_values(model):
    return sorted(n for n, p in model.named_parameters() if "fishertune_values" in n and p.requires_grad)


# -- item 2: loading for inference gives a frozen model, as LoRA does ---------------------------------------------
def test_inference_load_is_frozen_like_lora_and_load_adapter_keeps_it_frozen(tmp_path):
    lora = get_peft_model(tiny_vit(3), LoraConfig(target_modules=["q_proj"], modules_to_save=["classifier"]))
    lora.save_pretrained(tmp_path / "lora")
    lora = PeftModel.from_pretrained(tiny_vit(3), tmp_path / "lora")
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == []  # the reference behaviour

    _, path = _saved(tmp_path)
    model = PeftModel.from_pretrained(tiny_vit(3), path)
    assert model.num_allocated() > 0
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []
    model.load_adapter(path, "other")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == []
    model.load_adapter(path, "third", is_trainable=True)  # PEFT trains the adapter loaded with is_trainable only
    trainable = _trainable_values(model)
    assert len(trainable) == len(_layers(model)) and all(n.endswith(".third") for n in trainable)

    trained = PeftModel.from_pretrained(tiny_vit(3), path, is_trainable=True)
    assert len(_trainable_values(trained)) == len(_layers(trained))


def test_inference_mode_config_selects_frozen_deltas():
    model = get_peft_model(tiny_vit(3), fishertune.FisherTuneConfig(inference_mode=True))
    assert model.num_allocated() > 0 and _trainable_values(model) == []


# -- item 3: the default config allocates (magnitude) and trains; select(scores) replaces it ----------------------
def test_default_config_selects_by_magnitude_trains_and_select_replaces_it(batch):
    x, y = batch
    model = get_peft_model(tiny_vit(3), fishertune.FisherTuneConfig())
    weights = model.fishertune_target_weights()
    n = model.num_targeted()
    k = round(0.05 * n)
    assert model.num_allocated() == k
    # exactly the k largest |W| over all targeted entries
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    threshold = flat.topk(k).values[-1]
    for name, layer in _layers(model).items():
        w = layer.get_base_layer().weight.detach().abs().reshape(-1)
        chosen = set(layer.fishertune_indices["default"].tolist()) if "default" in layer.fishertune_indices else set()
        assert chosen == set(torch.nonzero(w >= threshold).squeeze(1).tolist())
    model.train()
    model(pixel_values=x, labels=y).loss.backward()  # failed with "element 0 of tensors does not require grad"
    assert all(p.grad is not None for n, p in model.named_parameters() if "fishertune_values" in n)

    # select(scores) replaces the data-free choice: score one layer above all others
    scores = {name: torch.zeros_like(w) for name, w in weights.items()}
    last = list(scores)[-1]
    scores[last] = torch.arange(scores[last].numel(), dtype=torch.float32).view_as(scores[last])
    model.select(scores)
    layers = {name.removeprefix("base_model.model."): m for name, m in _layers(model).items()}
    numel = scores[last].numel()
    assert layers[last].fishertune_indices["default"].tolist() == list(range(numel - 1, numel - 1 - k, -1))
    assert all("default" not in m.fishertune_indices for name, m in layers.items() if name != last)


# -- item 4: the active share is saved and restored -----------------------------------------------------------------
def test_active_fraction_is_restored(tmp_path, batch):
    x, _ = batch
    model, path = _saved(tmp_path, fraction=0.01)
    counts = {n: m.fishertune_active["default"] for n, m in _layers(model).items()}
    assert model.num_active() == round(0.01 * model.num_targeted()) < model.num_allocated()
    with torch.no_grad():
        ref = model.eval()(pixel_values=x).logits
    loaded = PeftModel.from_pretrained(tiny_vit(3), path).eval()
    assert {n: m.fishertune_active["default"] for n, m in _layers(loaded).items()} == counts
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, ref)
    assert loaded.num_allocated() == model.num_allocated()  # all entries still there, for a later set_schedule_step
    loaded.set_active_fraction(0.05)
    assert loaded.num_active() == model.num_allocated()


# -- item 5: incomplete or foreign adapters fail clearly ------------------------------------------------------------
def test_adapter_of_a_shallower_model_is_refused(tmp_path):
    _, path = _saved(tmp_path, num_layers=4)
    with pytest.raises(ValueError, match=r"no keys for 10 of the 30 .*layers\.4\..*made for .* 20 targeted layers"):
        PeftModel.from_pretrained(tiny_vit(6), path)


def test_adapter_missing_a_layer_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    bad = _rewrite(path, tmp_path / "bad", lambda sd: {k: v for k, v in sd.items() if ".layers.1.mlp.fc1." not in k})
    expected = r"no keys for 1 of the 15 .*layers\.1\.mlp\.fc1.*15 targeted layers.*holds only 14 of those layers"
    with pytest.raises(ValueError, match=expected):
        PeftModel.from_pretrained(tiny_vit(3), bad)


def test_adapter_missing_a_decoder_tensor_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    bad = _rewrite(path, tmp_path / "bad", lambda sd: {k: v for k, v in sd.items() if "classifier.bias" not in k})
    with pytest.raises(ValueError, match=r"lacks 1 tensors of its modules_to_save \(classifier\.bias\)"):
        PeftModel.from_pretrained(tiny_vit(3), bad)


def test_older_file_without_layout_loads_and_a_missing_selected_layer_is_caught(tmp_path, batch):
    x, _ = batch
    model, path = _saved(tmp_path)
    legacy = _rewrite(
        path,
        tmp_path / "legacy",
        lambda sd: {k: v for k, v in sd.items() if "fishertune_active" not in k and "fishertune_layout" not in k},
    )
    with torch.no_grad():
        assert torch.equal(
            PeftModel.from_pretrained(tiny_vit(3), legacy)(pixel_values=x).logits, model.eval()(pixel_values=x).logits
        )
    gap = _rewrite(legacy, tmp_path / "gap", lambda sd: {k: v for k, v in sd.items() if ".layers.0.mlp.fc2." not in k})
    with pytest.raises(ValueError, match=r"ranks have gaps.*layers\.0\.mlp\.fc2"), pytest.warns(UserWarning):
        PeftModel.from_pretrained(tiny_vit(3), gap)


# -- item 1 (tuner side): non-finite adapters are never written nor loaded, duplicate indices are refused ----------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_values_are_refused_on_load(tmp_path, value):
    _, path = _saved(tmp_path)
    key = "base_model.model.vit.layers.2.mlp.fc1.fishertune_values"

    def poison(sd):
        sd[key] = sd[key].clone()
        sd[key][3] = value
        return sd

    with pytest.raises(ValueError, match=rf"1 NaN/inf values in '{key}'"):
        PeftModel.from_pretrained(tiny_vit(3), _rewrite(path, tmp_path / "bad", poison))


def test_duplicate_indices_are_refused_on_load(tmp_path):
    _, path = _saved(tmp_path)
    key = "base_model.model.vit.layers.0.attention.q_proj.fishertune_indices"

    def dup(sd):
        sd[key] = sd[key].clone()
        sd[key][1] = sd[key][0]
        return sd

    with pytest.raises(ValueError, match=r"indices of '.*layers\.0\.attention\.q_proj' hold duplicate entries"):
        PeftModel.from_pretrained(tiny_vit(3), _rewrite(path, tmp_path / "bad", dup))


@pytest.mark.parametrize("where", ["delta", "decoder"])
def test_save_refuses_nonfinite_values_and_writes_nothing(tmp_path, where):
    model = get_peft_model(tiny_vit(3), fishertune.FisherTuneConfig(modules_to_save=["classifier"]))
    with torch.no_grad():
        if where == "delta":
            _layers(model)["base_model.model.vit.layers.1.attention.v_proj"].fishertune_values["default"][0] = torch.nan
            name = "base_model.model.vit.layers.1.attention.v_proj.fishertune_values.default"
        else:
            model.base_model.model.classifier.modules_to_save["default"].bias[2] = torch.inf
            name = "base_model.model.classifier.modules_to_save.default.bias"
    with pytest.raises(ValueError, match=rf"Refusing to save adapter 'default': '{name}' holds 1 NaN/inf"):
        model.save_pretrained(tmp_path / "out")
    assert not os.path.exists(tmp_path / "out" / FILE)
