"""The package's segmenters on EVA02 (timm, random init): built from an `Eva02Backbone`, an
`Eva02BackboneConfig` or `"timm:<name>"`; taps equal timm's own intermediates; save/load; FisherTune
targets and a short three-phase DR-FIM run. Needs timm (run with `make test-eva02`)."""

import math
import re

import peft
import pytest
import torch
from transformers import AutoModel

timm = pytest.importorskip("timm")

import fishertune  # noqa: E402
from fishertune.backbones import Eva02Backbone, Eva02BackboneConfig, eva02_pyramid_taps  # noqa: E402
from fishertune.fisher import DSUHooks, find_blocks  # noqa: E402
from fishertune.models import REIN_SCALES, build_model, tapped_features  # noqa: E402
from fishertune.models.backbone import resample  # noqa: E402
from fishertune.training import FisherTuneTrainer, FisherTuneTrainingArguments  # noqa: E402
from fishertune.tuner import FisherTuneLayer  # noqa: E402

from .conftest import EVA02_TINY, TINY_M2F  # noqa: E402

NAME = "eva02_base_patch14_224"  # separate q/k/v and SwiGLU, as EVA02-L
TINY = {**EVA02_TINY, "depth": 6}  # the pyramid taps 4 of 6 blocks
LEAVES = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "mlp.fc1_g", "mlp.fc1_x", "mlp.fc2")
HEADS = {"light": {}, "mask2former": TINY_M2F}
TAPS = eva02_pyramid_taps(6)  # (2, 3, 4, 6): Rein's 1/3, 1/2, 2/3, all of the depth
# Prefix tokens: CLS (1), CLS + 2 registers (3), none (0); patch_tokens must read the config's count.
PREFIX = {"cls": {}, "cls+reg": {"num_reg_tokens": 2}, "none": {"class_token": False}}


def _backbone(form, **kw):
    """An EVA02 in one of the forms `build_model` takes (seeded: two calls give the same weights)."""
    torch.manual_seed(0)
    if form == "instance":
        return Eva02Backbone.from_timm(NAME, pretrained=False, **{**TINY, **kw}).eval()
    return Eva02BackboneConfig(timm_model_name=NAME, timm_kwargs={**TINY, **kw}, hidden_size=32,
                               num_hidden_layers=TINY["depth"], patch_size=14)  # fmt: skip


def _seg(head, form="instance", **kw):
    backbone = _backbone(form, **kw)
    torch.manual_seed(1)
    return build_model(head, backbone, num_labels=3, taps=TAPS, **HEADS[head]).eval()


def _data(n=2, h=28, w=42, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, h, w, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    y[:, :2] = 255
    return x, y


@pytest.mark.parametrize("form", ["instance", "config"])
@pytest.mark.parametrize("head", sorted(HEADS))
def test_segmenter_on_eva02_loss_and_taps_match_timm(head, form):
    seg = _seg(head, form)
    assert isinstance(seg.backbone, Eva02Backbone) and seg.config.backbone_config.model_type == "eva02"
    if form == "instance":  # the given weights were copied
        src = _backbone("instance").state_dict()
        assert all(torch.equal(v, src[k]) for k, v in seg.backbone.state_dict().items())
    x, y = _data()
    seg.train()
    out = seg(pixel_values=x, labels=y)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for n, p in seg.named_parameters() if n.startswith(seg.decoder_modules[0]))
    seg.eval()
    with torch.no_grad():
        ref = seg.backbone.eva.forward_intermediates(x, indices=[t - 1 for t in TAPS], norm=False,
                                                     intermediates_only=True)  # fmt: skip
        feats = tapped_features(seg.backbone, x, seg.config.taps)
        assert [tuple(f.shape) for f in feats] == [(2, 32, 2, 3)] * 4
        assert all(torch.equal(f, r) for f, r in zip(feats, ref))
        if head == "mask2former":  # Rein's pyramid is built from exactly these maps
            assert all(torch.equal(p, r) for p, r in zip(seg.pyramid(x), resample(ref, REIN_SCALES)))


@pytest.mark.parametrize("prefix", sorted(PREFIX))
def test_prefix_tokens_come_from_the_config(prefix):
    seg = _seg("light", **PREFIX[prefix])
    count = seg.backbone.eva.num_prefix_tokens
    assert seg.config.backbone_config.num_prefix_tokens == count == {"cls": 1, "cls+reg": 3, "none": 0}[prefix]
    x, _ = _data()
    with torch.no_grad():
        ref = seg.backbone.eva.forward_intermediates(x, indices=[t - 1 for t in TAPS], norm=False,
                                                     intermediates_only=True)  # fmt: skip
        assert all(torch.equal(f, r) for f, r in zip(tapped_features(seg.backbone, x, TAPS), ref))
    # DR-FIM's DSU hooks: the EVA02 blocks, perturbing the patch tokens only.
    blocks, num_prefix = find_blocks(seg)
    assert blocks == list(seg.backbone.eva.blocks) and num_prefix == count
    with DSUHooks(blocks, num_prefix, p=1.0, record=True) as hooks, torch.no_grad():
        hooks.enabled = True
        hooks.new_draws()
        seg(pixel_values=x)
    assert all(r["x"].shape[1] == 2 * 3 for r in hooks.records.values()) and len(hooks.records) == 6


@pytest.mark.parametrize("head", sorted(HEADS))
def test_save_and_reload_needs_no_timm_download(head, tmp_path, monkeypatch):
    seg = _seg(head, num_reg_tokens=1)
    x, _ = _data()
    with torch.no_grad():
        before = seg.semantic_logits(seg(pixel_values=x), (28, 42))
    seg.save_pretrained(tmp_path)
    calls, create = [], timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append(k["pretrained"]) or create(*a, **k))
    for loader in (type(seg), AutoModel):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is type(seg) and loaded.config.taps == list(TAPS)
        for key in ("model_type", "timm_model_name", "timm_kwargs", "hidden_size", "num_hidden_layers", "patch_size",
                    "num_prefix_tokens"):  # fmt: skip
            assert getattr(loaded.config.backbone_config, key) == getattr(seg.config.backbone_config, key), key
        # Non-persistent buffers (timm's RoPE bands) included: from_pretrained leaves them uninitialised.
        for k, v in dict(seg.named_buffers()).items():
            assert torch.equal(v, dict(loaded.named_buffers())[k]), k
        state = loaded.state_dict()
        assert state.keys() == seg.state_dict().keys()
        assert all(torch.equal(v, state[k]) for k, v in seg.state_dict().items())
        with torch.no_grad():
            after = loaded.semantic_logits(loaded(pixel_values=x), (28, 42))
        # Same weights and inputs; only CPU kernels may sum in another order for mmap'd (unaligned) tensors.
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert calls == [False, False]


@pytest.mark.parametrize("head", sorted(HEADS))
def test_fishertune_targets_only_the_eva02_block_linears(head):
    seg = _seg(head)
    tuned = peft.get_peft_model(seg, fishertune.FisherTuneConfig(modules_to_save=seg.decoder_modules))
    layers = {n for n, m in tuned.named_modules() if isinstance(m, FisherTuneLayer)}
    assert layers == {f"base_model.model.backbone.eva.blocks.{i}.{leaf}" for i in range(6) for leaf in LEAVES}
    x, y = _data()
    tuned.select({n: w.detach().abs() for n, w in tuned.fishertune_target_weights().items()})
    tuned(pixel_values=x, labels=y).loss.backward()
    trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert any("fishertune_values" in n for n in trainable)
    assert all("fishertune_values" in n or ".modules_to_save." in n for n in trainable)


class _Tiny(torch.utils.data.Dataset):
    def __init__(self, n=8):
        self.x, self.y = _data(n, 28, 28, seed=3)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def test_three_phase_dr_fim_run_changes_only_selected_backbone_entries(tmp_path, monkeypatch):
    import fishertune.fisher.estimate as estimate

    found = []
    monkeypatch.setattr(estimate, "find_blocks", lambda m: found.append(find_blocks(m)) or found[-1])
    seg = _seg("light", num_reg_tokens=2)
    pristine = {k: v.clone() for k, v in seg.state_dict().items()}
    args = FisherTuneTrainingArguments(
        output_dir=str(tmp_path), max_steps=5, warmup_phase_steps=2, estimation_batches=2,
        per_device_train_batch_size=4, save_strategy="no", report_to="none", use_cpu=True, logging_steps=1,
        criterion="dr_fim", estimator="diagonal", fisher_type="true", delta_min=0.02, delta_max=0.1,
        learning_rate=1e-2, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = FisherTuneTrainer(model=seg, args=args, train_dataset=_Tiny())
    trainer.train()
    # Phase 2 perturbed the EVA02 blocks' patch tokens, after CLS + 2 registers.
    assert found and found[0][1] == 3 and found[0][0] == list(seg.backbone.eva.blocks)
    model = trainer.model
    assert [h["phase"] for h in trainer.state.log_history if "loss" in h] == [1.0] * 2 + [3.0] * 3
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    assert model.num_allocated() == round(0.1 * model.num_targeted())
    assert set(trainer.scores) == set(model.fishertune_target_weights())

    layers = {n: m for n, m in model.named_modules() if isinstance(m, FisherTuneLayer)}
    # A layer without an allocation has no index buffer: none of its entries may change.
    selected = {n: m.fishertune_indices["default"].long() if "default" in m.fishertune_indices else torch.zeros(0)
                for n, m in layers.items()}  # fmt: skip
    merged = model.merge_and_unload().state_dict()
    changed = 0
    for key, value in merged.items():
        diff = (value != pristine[key]).flatten().nonzero().flatten()
        full = "base_model.model." + key.rsplit(".", 1)[0]
        if key.endswith(".weight") and full in selected:
            assert set(diff.tolist()) <= set(selected[full].tolist()), key
            changed += diff.numel()
        elif key.startswith("backbone."):
            assert diff.numel() == 0, key  # biases, norms, embeddings, RoPE: untouched
    assert changed > 0
    assert any(not torch.equal(merged[k], pristine[k]) for k in merged if k.startswith("decode_head."))


def test_timm_string_creates_a_pretrained_eva02(monkeypatch):
    calls, create = [], timm.create_model

    def fake(name, pretrained=False, **kw):  # records the call, returns a tiny random model: no network
        calls.append((name, pretrained))
        return create(NAME, pretrained=False, **{**kw, **TINY})

    monkeypatch.setattr(timm, "create_model", fake)
    name = "eva02_large_patch14_224.mim_m38m"
    torch.manual_seed(0)
    seg = build_model("mask2former", "timm:" + name, num_labels=3, taps=TAPS, **TINY_M2F)
    assert calls[0] == (name, True) and all(not p for _, p in calls[1:])  # then the segmenter's random twin
    assert seg.config.backbone_config.timm_model_name == name
    with pytest.raises(ValueError, match="Only EVA02"):
        build_model("light", "timm:vit_large_patch14_dinov2.lvd142m", num_labels=3)
    with pytest.raises(ValueError, match="DINOv2 only"):
        build_model("eomt", "timm:" + name, num_labels=3)
    assert re.fullmatch(fishertune.target_regex(seg), "backbone.eva.blocks.0.attn.q_proj")
