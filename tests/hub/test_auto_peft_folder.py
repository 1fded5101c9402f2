"""`AutoPeftModel.from_pretrained(folder)` on a plain `PeftModel.save_pretrained` folder, after `import fishertune`.

PEFT records the base's own class in `auto_mapping`; for a segmenter of this package that is a module outside
AutoPeftModel's import allowlist. `FisherTuneConfig.save_pretrained` names it through the transformers Auto class
it is registered with instead.
"""

from __future__ import annotations

import json

import torch
import transformers as T
from peft import AutoPeftModel, get_peft_model

import fishertune
from fishertune.models import LightSegmenter
from fishertune.tuner.config import transformers_auto_mapping


def _logits(model, x):
    with torch.no_grad():
        return model.semantic_logits(model(pixel_values=x), tuple(x.shape[-2:]))


def test_auto_peft_model_loads_a_plain_save_pretrained_folder(tmp_path):
    torch.manual_seed(0)
    cfg = T.Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                         image_size=16, patch_size=4)  # fmt: skip
    LightSegmenter.from_backbone(cfg, num_labels=3).save_pretrained(tmp_path / "base")
    base = LightSegmenter.from_pretrained(str(tmp_path / "base"))  # its name_or_path is the folder
    config = fishertune.FisherTuneConfig(init_criterion="magnitude", modules_to_save=["decode_head"])
    model = get_peft_model(base, config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.25)
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["auto_mapping"] == {"base_model_class": "AutoModelForSemanticSegmentation",
                                     "parent_library": "transformers"}  # fmt: skip
    loaded = AutoPeftModel.from_pretrained(str(tmp_path / "adapter")).eval()
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(_logits(loaded, x), _logits(model.eval(), x))


def test_auto_mapping_of_a_transformers_model_is_left_alone():
    vit = {"base_model_class": "ViTForImageClassification", "parent_library": "transformers.models.vit.modeling_vit"}
    assert transformers_auto_mapping(vit) == vit
    assert transformers_auto_mapping(None) is None
    unknown = {"base_model_class": "Nope", "parent_library": "no_such_package_xyz"}
    assert transformers_auto_mapping(unknown) == unknown
