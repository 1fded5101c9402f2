"""`pipeline("image-segmentation")` on a saved mask-classification segmenter (the paper's Mask2Former head).

The light head's pipeline path is tested on a trained output folder (tests/experiment/test_hf_loading.py);
this covers `FisherTuneImageProcessor.post_process_semantic_segmentation`'s mask-classification branch.
"""

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

import fishertune  # noqa: F401  (registers the Auto classes)
from fishertune.models import PyramidMask2Former, processor_for

from .conftest import TINY_M2F, tiny_config


def test_pipeline_segments_with_a_saved_mask2former(tmp_path):
    torch.manual_seed(0)
    model = PyramidMask2Former.from_backbone(tiny_config("dinov2"), id2label={i: f"c{i}" for i in range(5)}, **TINY_M2F)
    with torch.no_grad():  # queries that disagree on the class and masks that vary: several classes show up
        model.class_predictor.weight.normal_(std=3.0)
        for name, p in model.named_parameters():
            if "mask_embedder" in name and name.endswith("weight"):
                p.mul_(100.0)
    model.save_pretrained(tmp_path)
    processor_for((120.0, 110.0, 100.0), (60.0, 55.0, 50.0)).save_pretrained(tmp_path)
    image = Image.fromarray((np.random.RandomState(0).rand(40, 56, 3) * 255).astype(np.uint8))

    annotations = pipeline("image-segmentation", model=str(tmp_path), device="cpu")(image)

    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(loaded) is PyramidMask2Former
    pixel_values = AutoImageProcessor.from_pretrained(tmp_path)(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ids = loaded.semantic_logits(loaded(pixel_values=pixel_values), (40, 56))[0].argmax(0).numpy()
    expected = {loaded.config.id2label[int(c)]: ids == c for c in np.unique(ids)}
    assert len(expected) > 1 and {a["label"] for a in annotations} == set(expected)
    for a in annotations:
        assert a["mask"].size == (56, 40) and np.array_equal(np.asarray(a["mask"]) == 255, expected[a["label"]])
