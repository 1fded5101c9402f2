"""Save/load, merge/unmerge, several adapters, checkpointing, low precision, push_to_hub."""

import os

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

import fishertune
from fishertune.tuner import FisherTuneLayer

from .conftest import tiny_vit


def _trained(tmp_path, batch, steps=3, **cfg):
    x, y = batch
    base = tiny_vit(3)
    pristine = {k: v.clone() for k, v in base.state_dict().items()}
    cfg.setdefault("init_criterion", "magnitude")
    model = get_peft_model(base, fishertune.FisherTuneConfig(modules_to_save=["classifier"], **cfg))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for t in range(steps):
        model.set_schedule_step(t, steps)
        model(pixel_values=x, labels=y).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, pristine


def _fresh(pristine, **kw):
    base = tiny_vit(3, **kw)
    base.load_state_dict(pristine)
    return base


def test_adapter_file_holds_only_allocated_entries_and_reloads_exactly(tmp_path, batch):
    x, _ = batch
    model, pristine = _trained(tmp_path, batch)
    with torch.no_grad():
        ref = model(pixel_values=x).logits
    model.save_pretrained(tmp_path)
    sd = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    values = {k: v for k, v in sd.items() if k.endswith("fishertune_values")}
    indices = {k: v for k, v in sd.items() if k.endswith("fishertune_indices")}
    assert sum(v.numel() for v in values.values()) == model.num_allocated()
    assert all(indices[k.replace("values", "indices")].numel() == v.numel() for k, v in values.items())
    others = [k for k in sd if "fishertune_" not in k]
    assert others and all("classifier" in k for k in others)  # modules_to_save, nothing else
    assert not any(k.endswith(".weight") and "classifier" not in k for k in sd)  # no dense backbone weight

    loaded = PeftModel.from_pretrained(_fresh(pristine), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, ref)
    merged = loaded.merge_and_unload()
    assert type(merged).__name__ == "ViTForImageClassification"
    assert not any(isinstance(m, FisherTuneLayer) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(pixel_values=x).logits, ref, rtol=1e-5, atol=1e-6)


def test_loading_into_another_shape_fails_clearly(tmp_path, batch):
    model, _ = _trained(tmp_path, batch)
    model.save_pretrained(tmp_path)
    other = tiny_vit(3, hidden=48)
    with pytest.raises(ValueError, match="another model"):
        PeftModel.from_pretrained(other, tmp_path)


def test_merge_unmerge_safe_merge_disable(tmp_path, batch):
    x, _ = batch
    model, pristine = _trained(tmp_path, batch, init_weights=False)
    base_out = _fresh(pristine)(pixel_values=x).logits
    with torch.no_grad():
        out = model(pixel_values=x).logits
        assert not torch.allclose(out, base_out)
        with model.disable_adapter():
            # the classifier is a modules_to_save copy, so compare the backbone path through hidden states
            dis = model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        ref_h = _fresh(pristine)(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        assert torch.equal(dis, ref_h)
        model.base_model.merge_adapter()
        torch.testing.assert_close(model(pixel_values=x).logits, out, rtol=1e-5, atol=1e-6)
        model.base_model.unmerge_adapter()
        torch.testing.assert_close(model(pixel_values=x).logits, out, rtol=1e-5, atol=1e-6)
        for m in model.modules():
            if isinstance(m, FisherTuneLayer):
                m.merge(safe_merge=True)
        torch.testing.assert_close(model(pixel_values=x).logits, out, rtol=1e-5, atol=1e-6)


def test_safe_merge_detects_nan(tmp_path, batch):
    model, _ = _trained(tmp_path, batch)
    layer = next(m for m in model.modules() if isinstance(m, FisherTuneLayer) and "default" in m.fishertune_values)
    layer.fishertune_values["default"].data[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        layer.merge(safe_merge=True)


def test_two_adapters_and_delete(tmp_path, batch):
    x, _ = batch
    base = tiny_vit(3)
    model = get_peft_model(base, fishertune.FisherTuneConfig(init_criterion="magnitude", init_weights=False))
    model.add_adapter("other", fishertune.FisherTuneConfig(init_criterion="random", init_weights=False, seed=1))
    with torch.no_grad():
        out_a = model(pixel_values=x).logits
        model.set_adapter("other")
        out_b = model(pixel_values=x).logits
    assert not torch.allclose(out_a, out_b)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("fishertune_values.other") for n in trainable)
    model.delete_adapter("default")
    assert not any("default" in m.fishertune_values for m in model.modules() if isinstance(m, FisherTuneLayer))
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, out_b)


def test_gradient_checkpointing_gives_the_same_gradients(batch):
    x, y = batch
    grads = []
    for ckpt in (False, True):
        base = tiny_vit(3)
        model = get_peft_model(base, fishertune.FisherTuneConfig(init_criterion="magnitude", init_weights=False))
        if ckpt:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        model(pixel_values=x, labels=y).loss.backward()
        grads.append([p.grad.clone() for n, p in model.named_parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_forward_and_autocast(batch, dtype):
    x, y = batch
    base = tiny_vit(3)
    model = get_peft_model(base, fishertune.FisherTuneConfig(init_criterion="magnitude", init_weights=False))
    with torch.no_grad():
        ref = model(pixel_values=x).logits
    with torch.autocast("cpu", dtype=dtype):
        out = model(pixel_values=x, labels=y)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.logits.float(), ref, rtol=0.1, atol=0.1)
    out.loss.backward()
    values = [p for n, p in model.named_parameters() if p.requires_grad]
    assert all(v.grad is not None and v.grad.dtype == torch.float32 and torch.isfinite(v.grad).all() for v in values)
    # a model cast to low precision runs forward in that dtype
    half = get_peft_model(tiny_vit(3), fishertune.FisherTuneConfig(init_criterion="magnitude", init_weights=False)).to(
        dtype
    )
    with torch.no_grad():
        torch.testing.assert_close(half(pixel_values=x.to(dtype)).logits.float(), ref, rtol=0.1, atol=0.1)


def test_push_to_hub_uploads_the_adapter(tmp_path, batch, monkeypatch):
    model, _ = _trained(tmp_path, batch)
    uploaded = {}

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            return type("R", (), {"repo_id": repo_id})()

    def fake_upload(self, working_dir, repo_id, files_timestamps, **kw):
        uploaded["repo"] = repo_id
        uploaded["files"] = {
            f: load_file(os.path.join(working_dir, f)) if f.endswith(".safetensors") else None
            for f in os.listdir(working_dir)
        }

    import transformers.utils.hub as hub

    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(
        hub,
        "create_and_tag_model_card",
        lambda *a, **k: type("C", (), {"save": lambda self, p: open(p, "w").write("card")})(),
    )
    monkeypatch.setattr(type(model), "_upload_modified_files", fake_upload)
    model.push_to_hub("user/repo")
    assert uploaded["repo"] == "user/repo"
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(uploaded["files"])
    sd = uploaded["files"]["adapter_model.safetensors"]
    assert sum(v.numel() for k, v in sd.items() if k.endswith("fishertune_values")) == model.num_allocated()


def test_merge_and_unload_with_a_weightless_module_to_save(batch):
    """A saved head without its own `.weight` (a Sequential) replaces its wrapper on unload."""
    x, _ = batch
    base = tiny_vit(3)
    base.classifier = torch.nn.Sequential(torch.nn.Linear(32, 5))
    model = get_peft_model(
        base,
        fishertune.FisherTuneConfig(init_criterion="magnitude", init_weights=False, modules_to_save=["classifier"]),
    )
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["default"][0].weight.add_(1.0)
        ref = model(pixel_values=x).logits
        merged = model.merge_and_unload()
        assert isinstance(merged.classifier, torch.nn.Sequential)
        torch.testing.assert_close(merged(pixel_values=x).logits, ref, rtol=1e-5, atol=1e-6)
