"""Predictions for a folder of images: colour-coded masks, overlays on the image, the class legend.

Output layout (`out_dir`):

    masks/<name>.png      colour-coded prediction (RGB, the image's displayed size: EXIF orientation applied);
                          <name> is the image's stem,
                          or its whole file name where stems collide (x.jpg and x.png -> x.jpg, x.png)
    overlays/<name>.png   the image blended with the colour mask
    labels/<name>.png     the predicted class ids (8-bit, for further processing)
    legend.png            colour swatch + name of every class
    legend.json           [{"id", "name", "color": [r, g, b]}, ...]
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data import SegmentationTransforms
from ..data.images import open_rgb, to_rgb
from ..data.keyed import DECODE_ERRORS
from ..evaluation import slide_inference, whole_inference
from ..outputs import LABELS_DIR, LEGEND_JSON, LEGEND_PNG, MASKS_DIR, OVERLAYS_DIR

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# The official Cityscapes colours (cityscapesscripts labels.py) and CamVid's (SegNet README), by class name.
CITYSCAPES_COLORS = {
    "road": (128, 64, 128), "sidewalk": (244, 35, 232), "building": (70, 70, 70), "wall": (102, 102, 156),
    "fence": (190, 153, 153), "pole": (153, 153, 153), "traffic light": (250, 170, 30),
    "traffic sign": (220, 220, 0), "vegetation": (107, 142, 35), "terrain": (152, 251, 152),
    "sky": (70, 130, 180), "person": (220, 20, 60), "rider": (255, 0, 0), "car": (0, 0, 142),
    "truck": (0, 0, 70), "bus": (0, 60, 100), "train": (0, 80, 100), "motorcycle": (0, 0, 230),
    "bicycle": (119, 11, 32),
}  # fmt: skip
CAMVID_COLORS = {
    "sky": (128, 128, 128), "building": (128, 0, 0), "pole": (192, 192, 128), "road": (128, 64, 128),
    "pavement": (60, 40, 222), "tree": (128, 128, 0), "signsymbol": (192, 128, 128), "fence": (64, 64, 128),
    "car": (64, 0, 128), "pedestrian": (64, 64, 0), "bicyclist": (0, 128, 192),
}  # fmt: skip


def palette_for(names: Sequence[str]) -> np.ndarray:
    """[C, 3] uint8 colours: CamVid's for the CamVid classes, Cityscapes' by name, else distinct tab20 colours."""
    from matplotlib import colormaps

    table = CAMVID_COLORS if set(names) == set(CAMVID_COLORS) else CITYSCAPES_COLORS
    tab = colormaps["tab20"]
    colors = [table.get(n) or tuple(int(255 * c) for c in tab(i % 20)[:3]) for i, n in enumerate(names)]
    return np.asarray(colors, dtype=np.uint8)


def list_images(folder: str) -> list[str]:
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
    return files


def output_names(paths: Sequence[str]) -> list[str]:
    """One distinct output name per input: the stem, or the file name where two stems collide."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    counts = Counter(stems)
    names = [stem if counts[stem] == 1 else os.path.basename(p) for stem, p in zip(stems, paths)]
    if len(set(names)) < len(names):  # e.g. "x.jpg.png" beside "x.jpg" and "x.png": file names never collide
        names = [os.path.basename(p) for p in paths]
    return names


class PredictedImages(list):
    """The output names of the images predicted (a list), with `skipped`: `[(path, reason), ...]` of the
    files that could not be read."""

    def __init__(self, names=(), skipped=()):
        super().__init__(names)
        self.skipped = list(skipped)


def min_input_size(model) -> int:
    """The smallest input side the backbone takes: its patch size (the patch-embedding kernel), 1 if unknown."""
    config = getattr(model, "config", None)
    for cfg in (getattr(config, "backbone_config", None), config):
        patch = getattr(cfg, "patch_size", None)
        if patch is not None:
            return max(patch) if isinstance(patch, (list, tuple)) else int(patch)
    return 1


@torch.no_grad()
def predict_image(model, image: Image.Image, transform: SegmentationTransforms, mode: str = "whole",
                  crop_size=512, stride=341) -> np.ndarray:  # fmt: skip
    """Predicted class ids [H, W] (uint8) at the image's displayed size (EXIF orientation applied).

    An input smaller than the backbone's patch is zero-padded (bottom/right, after normalization, as
    `collate_fn` pads) up to one patch and the padding cut from the logits.
    """
    image = to_rgb(image)
    x, _ = transform.eval_one(image, None)
    device = next(model.parameters()).device
    x = x[None].to(device)
    size = (image.height, image.width)
    if mode == "whole":
        side = min_input_size(model)
        h, w = x.shape[-2:]
        x = F.pad(x, (0, max(side - w, 0), 0, max(side - h, 0)))
        logits = whole_inference(model, x)[:, :, :h, :w]
    else:
        logits = slide_inference(model, x, model.config.num_labels, crop_size, stride)
    logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def save_legend(names: Sequence[str], palette: np.ndarray, out_dir: str) -> None:
    """legend.json and legend.png (a swatch and the name per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    with open(os.path.join(out_dir, LEGEND_JSON), "w") as f:
        json.dump([{"id": i, "name": n, "color": palette[i].tolist()} for i, n in enumerate(names)], f, indent=2)
    fig = plt.figure(figsize=(3.0, 0.3 * len(names) + 0.4))
    handles = [Patch(facecolor=palette[i] / 255.0, edgecolor="black", label=f"{i}: {n}") for i, n in enumerate(names)]
    fig.legend(handles=handles, loc="center", frameon=False)
    fig.savefig(os.path.join(out_dir, LEGEND_PNG), dpi=100)
    plt.close(fig)


def predict_folder(model, images_dir: str, out_dir: str, id2label: dict, mean, std, scale=None, mode: str = "whole",
                   crop_size=512, stride=341, alpha: float = 0.5) -> list[str]:  # fmt: skip
    """Predict every image of `images_dir` and write masks, overlays, ids and the legend to `out_dir`.

    Args:
        model: a segmenter with `semantic_logits` (eval mode, on its device).
        images_dir (`str`): folder of images (png/jpg/...).
        out_dir (`str`): where to write (see the module docstring).
        id2label (`dict[int, str]`): class names of the model.
        mean, std: normalization on the 0..255 scale. scale: (long, short) keep-ratio input size, or None.
        mode (`str`): `"whole"` or `"slide"` inference; crop_size, stride: the sliding window.
        alpha (`float`): weight of the colour mask in the overlay.

    Returns:
        [`PredictedImages`]: the output names of the images predicted; `.skipped` lists the files that could
        not be read or predicted (each also a warning, with the reason), which do not stop the folder.
    """
    names = [id2label[i] for i in range(len(id2label))]
    palette = palette_for(names)
    transform = SegmentationTransforms(False, scale=tuple(scale) if scale else None, mean=mean, std=std)
    for sub in (MASKS_DIR, OVERLAYS_DIR, LABELS_DIR):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    done = PredictedImages()
    paths = list_images(images_dir)
    for path, name in zip(paths, output_names(paths)):
        try:
            image = open_rgb(path)
            ids = predict_image(model, image, transform, mode, crop_size, stride)
        except (*DECODE_ERRORS, RuntimeError) as err:  # RuntimeError: what the model raises for an input it refuses
            if isinstance(err, torch.OutOfMemoryError):  # the device, not the file: every later image would fail too
                raise
            what = "unreadable image" if isinstance(err, DECODE_ERRORS) else "image the model cannot take"
            warnings.warn(f"Skipping {what} {path}: {type(err).__name__}: {err}", stacklevel=2)
            done.skipped.append((path, f"{type(err).__name__}: {err}"))
            continue
        color = palette[ids]
        blend = (1 - alpha) * np.asarray(image, dtype=np.float32) + alpha * color.astype(np.float32)
        Image.fromarray(color).save(os.path.join(out_dir, MASKS_DIR, f"{name}.png"))
        Image.fromarray(blend.round().astype(np.uint8)).save(os.path.join(out_dir, OVERLAYS_DIR, f"{name}.png"))
        Image.fromarray(ids, mode="L").save(os.path.join(out_dir, LABELS_DIR, f"{name}.png"))
        done.append(name)
    save_legend(names, palette, out_dir)
    return done


def predict_output(folder: str, images_dir: str, out_dir: str, device=None, mode=None) -> PredictedImages:
    """`predict_folder` with the model and settings of a trained output folder."""
    from .build import normalization
    from .saved import load_output

    model, exp = load_output(folder, device)
    mean, std = normalization(exp.backbone)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    scale = exp.eval_scale or (None if exp.dataset == "synthetic" else _dataset_scale(exp.dataset))
    return predict_folder(
        model,
        images_dir,
        out_dir,
        id2label,
        mean,
        std,
        scale=scale,
        mode=mode or exp.eval_mode,
        crop_size=exp.eval_crop_size,
        stride=exp.eval_stride,
    )


def _dataset_scale(name: str):
    from ..data import EVAL_SCALES

    return EVAL_SCALES.get(name.lower())
