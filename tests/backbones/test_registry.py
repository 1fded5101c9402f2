"""The backbone-family registry (issue 19): every family builds, is found, targets exactly its Eq. 3 linears,
finds its blocks and counts its prefix tokens; a new family is one `register_family` call."""

from __future__ import annotations

import re

import pytest
import torch
import transformers as T
from peft import get_peft_model
from torch import nn
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from fishertune import FisherTuneConfig
from fishertune.backbones import (
    BackboneFamily,
    Eva02BackboneConfig,
    backbone_blocks,
    families,
    family_of,
    find_backbone,
    fused_qkv_leaves,
    get_family,
    locate,
    num_prefix_tokens,
    register_family,
    registered,
    unregister_family,
)
from fishertune.fisher.perturb import find_blocks
from fishertune.models.backbone import build_backbone
from fishertune.tuner import FisherTuneLayer, block_patterns, target_regex

SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
DEPTH = SHAPE["num_hidden_layers"]


def _eva02_config():
    pytest.importorskip("timm", reason="EVA02 needs timm (run in .venv-eva02: make test-eva02)")
    return Eva02BackboneConfig(
        timm_model_name="eva02_tiny_patch14_224", timm_kwargs=dict(img_size=28, embed_dim=32, depth=DEPTH, num_heads=2),
        hidden_size=32, num_hidden_layers=DEPTH, patch_size=14, num_prefix_tokens=1,
    )  # fmt: skip


#: family -> (tiny config, block list path, Eq. 3 leaves of a block, linears of a block left out, prefix count).
#: The leaf names were read from the installed transformers / timm; `test_leaves_are_the_installed_names`
#: checks them against the built model, so a renaming upstream fails here and not silently in the presets.
TINY = {
    "dinov2": (
        lambda: T.Dinov2Config(**SHAPE, mlp_ratio=2),
        "encoder.layer",
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1", "mlp.fc2"],
        ["attention.o_proj"],
        1,
    ),
    "dinov2_with_registers": (
        lambda: T.Dinov2WithRegistersConfig(**SHAPE, mlp_ratio=2, num_register_tokens=4),
        "encoder.layer",
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1", "mlp.fc2"],
        ["attention.o_proj"],
        5,
    ),
    "dinov3_vit": (
        lambda: CONFIG_MAPPING["dinov3_vit"](**SHAPE, intermediate_size=64, num_register_tokens=4),
        "model.layer",
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.up_proj", "mlp.down_proj"],
        ["attention.o_proj"],
        5,
    ),
    "vit": (
        lambda: T.ViTConfig(**SHAPE, intermediate_size=64),
        "layers",
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1", "mlp.fc2"],
        ["attention.o_proj"],
        1,
    ),
    "vit_mae": (
        lambda: T.ViTMAEConfig(**SHAPE, intermediate_size=64, mask_ratio=0.75),
        "layers",
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1", "mlp.fc2"],
        ["attention.o_proj"],
        1,
    ),
    "clip_vision_model": (
        lambda: T.CLIPVisionConfig(**SHAPE, intermediate_size=64),
        "encoder.layers",
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc1", "mlp.fc2"],
        ["self_attn.out_proj"],
        1,
    ),
    "sam_vision_model": (
        lambda: T.SamVisionConfig(**SHAPE, mlp_dim=64, output_channels=16, global_attn_indexes=[1], window_size=2),
        "vision_encoder.layers",
        ["attn.qkv", "mlp.lin1", "mlp.lin2"],
        ["attn.proj"],
        0,
    ),
    "eomt": (
        lambda: T.EomtConfig(**SHAPE, intermediate_size=64, num_blocks=1, num_queries=3, num_register_tokens=2),
        "layers",
        ["attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1", "mlp.fc2"],
        ["attention.out_proj"],
        [1 + 2, 1 + 2 + 3],  # CLS + registers; the queries join in front of the last num_blocks blocks
    ),
    "eva02": (_eva02_config, "eva.blocks", ["attn.qkv", "mlp.fc1", "mlp.fc2"], ["attn.proj"], 1),
}


def _linears(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]


class Segmenter(nn.Module):
    """A backbone at `.backbone` and a decoder whose names would match every family's pattern unanchored."""

    def __init__(self, backbone: nn.Module, block_path: str, leaves: list[str]):
        super().__init__()
        self.backbone = backbone
        self.decoder = nn.Module()
        # e.g. decoder.encoder.layer.0.attention.q_proj: same relative names as the backbone's first block
        block = nn.Module()
        for leaf in leaves:
            parent = block
            *path, name = leaf.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(name, nn.Linear(4, 4))
        holder = self.decoder
        *path, last = block_path.split(".")
        for part in path:
            holder.add_module(part, nn.Module())
            holder = getattr(holder, part)
        holder.add_module(last, nn.ModuleList([block]))


def test_every_registered_family_has_a_tiny_case():
    assert set(TINY) == set(families()), "give a new family a tiny config in TINY"


@pytest.fixture(params=sorted(TINY))
def built(request):
    name = request.param
    make_config, block_path, leaves, left_out, prefix = TINY[name]
    torch.manual_seed(0)
    backbone = build_backbone(make_config())
    return name, backbone, block_path, leaves, left_out, prefix


def test_family_builds_a_random_backbone_without_pooler(built):
    name, backbone, *_ = built
    assert family_of(backbone) is get_family(name)
    assert getattr(backbone, "pooler", None) is None  # an unused pooler stalls DDP
    assert family_of(backbone.config) is get_family(name)


def test_leaves_are_the_installed_names(built):
    _, backbone, block_path, leaves, left_out, _ = built
    blocks = backbone.get_submodule(block_path)
    for block in blocks:
        assert sorted(_linears(block)) == sorted(leaves + left_out)


def test_find_backbone_in_a_segmenter_and_regex_is_exactly_eq3(built):
    name, backbone, block_path, leaves, _, _ = built
    model = Segmenter(backbone, block_path, leaves)
    path, family = find_backbone(model)
    assert (path, family.name) == ("backbone", name)
    assert locate(model) == (path, family, backbone)
    pattern = re.compile(target_regex(model))
    matched = {n for n in _linears(model) if pattern.fullmatch(n)}
    expected = {f"backbone.{block_path}.{i}.{leaf}" for i in range(DEPTH) for leaf in leaves}
    assert matched == expected  # no out-projection, pooler, head, nor the decoder's look-alike linears
    assert block_patterns()[name] == family.target_pattern


def test_blocks_and_prefix_tokens(built):
    _, backbone, block_path, _, _, prefix = built
    blocks = backbone_blocks(backbone)
    assert blocks is backbone.get_submodule(block_path) and len(blocks) == DEPTH
    found, count = find_blocks(Segmenter(backbone, block_path, []))
    assert found == list(blocks) and count == prefix
    assert num_prefix_tokens(backbone) == (prefix[0] if isinstance(prefix, list) else prefix)


@pytest.mark.parametrize("name", ["vit", "dinov2", "dinov2_with_registers", "dinov3_vit", "clip_vision_model"])
def test_prefix_count_is_what_the_model_puts_in_front_of_the_patches(name):
    make_config, *_, prefix = TINY[name]
    backbone = build_backbone(make_config()).eval()
    with torch.no_grad():
        out = backbone(pixel_values=torch.zeros(1, 3, 32, 32), output_hidden_states=True)
    assert out.hidden_states[1].shape[1] - (32 // 8) ** 2 == prefix


def test_eva02_prefix_count_comes_from_its_config():
    config = Eva02BackboneConfig(num_prefix_tokens=3)  # CLS + 2 registers; no timm needed to read it
    assert num_prefix_tokens(config) == 3 and family_of(config).name == "eva02"
    assert family_of("timm:eva02_tiny_patch14_224").name == "eva02" and family_of("facebook/dinov2-small") is None


def test_fused_qkv_families_and_clip_checkpoints_come_from_the_registry():
    assert get_family("sam_vision_model").fused_qkv == "attn.qkv" and get_family("dinov2").fused_qkv is None
    assert fused_qkv_leaves() == ("qkv",)  # SAM's and EVA02-Ti/S's attn.qkv
    assert get_family("clip").name == "clip_vision_model"  # a full CLIP checkpoint loads its vision tower


def test_an_unknown_backbone_says_how_to_register_one():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(
        ValueError, match=r"^no registered ViT backbone found in Sequential \(registered: \[.*'dinov2'"
    ) as err:
        find_backbone(model)
    assert "register_family" in str(err.value) and "target_modules" not in str(err.value)  # not every caller has one
    for where in (locate, find_blocks):
        with pytest.raises(ValueError, match="no registered ViT backbone found in Sequential.*register_family"):
            where(model)
    # only where target_modules is what is being inferred
    with pytest.raises(ValueError, match="no registered ViT backbone.*register_family.*target_modules"):
        target_regex(model)
    with pytest.raises(ValueError, match="register_family") as err:
        get_family("no_such_vit")
    assert "is not a registered ViT backbone family" in str(err.value) and "target_modules" not in str(err.value)


def test_a_name_clash_is_refused_unless_replaced():
    with pytest.raises(ValueError, match="replace=True"):
        register_family(BackboneFamily(name="my_dino", model_types=("dinov2",), target_pattern="x", block_paths=("x",)))
    assert "my_dino" not in families() and get_family("dinov2").name == "dinov2"


# A new family: a custom module with its own config model_type, known to nothing in fishertune but this registry.
class ToyViTConfig(T.PreTrainedConfig):
    model_type = "toy_vit"

    def __init__(self, hidden_size=16, num_hidden_layers=3, num_register_tokens=2, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_register_tokens = num_register_tokens


class ToyBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attn = nn.ModuleDict({k: nn.Linear(dim, dim) for k in ("q", "k", "v", "out")})
        self.mlp = nn.ModuleDict({"fc1": nn.Linear(dim, 2 * dim), "fc2": nn.Linear(2 * dim, dim)})


class ToyViT(nn.Module):
    def __init__(self, config: ToyViTConfig):
        super().__init__()
        self.config = config
        self.stem = nn.Linear(3, config.hidden_size)
        blocks = nn.ModuleList(ToyBlock(config.hidden_size) for _ in range(config.num_hidden_layers))
        self.trunk = nn.ModuleDict({"blocks": blocks})


TOY = BackboneFamily(
    name="toy_vit",
    target_pattern=r"trunk\.blocks\.\d+\.(attn\.(q|k|v)|mlp\.(fc1|fc2))",
    block_paths=("trunk.blocks",),
    build=ToyViT,
)


def test_adding_a_family_is_one_register_call():
    config = ToyViTConfig()
    with pytest.raises(ValueError, match="register_family"):
        get_peft_model(Segmenter(ToyViT(config), "trunk.blocks", ["attn.q", "mlp.fc1"]), FisherTuneConfig())

    with registered(TOY):
        backbone = build_backbone(config)  # the family's builder, through the segmenters' entry point
        assert isinstance(backbone, ToyViT)
        model = get_peft_model(Segmenter(backbone, "trunk.blocks", ["attn.q", "mlp.fc1"]), FisherTuneConfig())
        tuned = {
            n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, FisherTuneLayer)
        }
        leaves = ("attn.q", "attn.k", "attn.v", "mlp.fc1", "mlp.fc2")
        # not attn.out, the stem, nor the decoder's attn.q / mlp.fc1
        assert tuned == {f"backbone.trunk.blocks.{i}.{leaf}" for i in range(3) for leaf in leaves}
        blocks, prefix = find_blocks(model)
        assert blocks == list(backbone.trunk.blocks) and prefix == 1 + 2  # CLS + registers: the default rule
        path, family, found = locate(model)  # through the PEFT wrapper; the path is the wrapper's
        assert (path, family, found) == ("base_model.model.backbone", TOY, backbone)
        assert model.get_submodule(path) is backbone

    assert "toy_vit" not in families()
    with pytest.raises(ValueError, match="register_family"):
        find_blocks(Segmenter(ToyViT(config), "trunk.blocks", []))


def test_unregister_family():
    register_family(TOY)
    try:
        assert get_family("toy_vit") is TOY
    finally:
        assert unregister_family("toy_vit") is TOY
    assert "toy_vit" not in families()
    with pytest.raises(ValueError, match="toy_vit"):
        unregister_family("toy_vit")


def test_a_fused_qkv_leaf_registered_later_is_split_into_q_k_v():
    """random_q/k/v read the fused leaf names from the registry when they run, not at import."""
    import dataclasses

    from fishertune.tuner.data_free import qkv_group_mask

    fused = dataclasses.replace(TOY, name="toy_fused", model_types=("toy_fused",), fused_qkv="attn.wqkv")
    shape = (6, 4)
    assert not qkv_group_mask("trunk.blocks.0.attn.wqkv", shape, "k").any()
    with registered(fused):
        mask = qkv_group_mask("trunk.blocks.0.attn.wqkv", shape, "k")
    assert mask[2:4].all() and not mask[:2].any() and not mask[4:].any()  # rows ordered q, k, v


@pytest.mark.parametrize("gated", [False, True])
def test_dinov3_segmenter_tunes_its_own_blocks(gated):
    """DINOv3 came in as one family entry: a segmenter on it taps patch tokens of any crop (RoPE), and FisherTune
    targets exactly the Eq. 3 linears (SwiGLU's gate_proj too when the MLP is gated)."""
    from fishertune.models import build_model

    config = CONFIG_MAPPING["dinov3_vit"](**SHAPE, intermediate_size=64, num_register_tokens=4, use_gated_mlp=gated)
    seg = build_model("light", config, num_labels=3, taps=(1, 2))
    out = seg(pixel_values=torch.randn(2, 3, 40, 56), labels=torch.randint(0, 3, (2, 40, 56)))
    assert torch.isfinite(out.loss) and seg.semantic_logits(out, (40, 56)).shape == (2, 3, 40, 56)
    model = get_peft_model(seg, FisherTuneConfig())
    tuned = {n.split("model.layer.")[1] for n, m in model.named_modules() if isinstance(m, FisherTuneLayer)}
    ffn = ["gate_proj", "up_proj", "down_proj"] if gated else ["up_proj", "down_proj"]
    leaves = ["attention.q_proj", "attention.k_proj", "attention.v_proj", *(f"mlp.{x}" for x in ffn)]
    assert tuned == {f"{i}.{leaf}" for i in range(2) for leaf in leaves}
    blocks, prefix = find_blocks(model)
    assert len(blocks) == 2 and prefix == 1 + 4
