"""Lazy training/evaluation transforms (Rein's mmseg pipeline) and the collate function.

Use them with `ds.set_transform(train_transforms(...))`: they read the `image`/`label` columns
and return `pixel_values` (float [3, H, W], normalized) and `labels` (long [H, W], 255 = ignore).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image

from .images import to_rgb
from .labels import IGNORE_INDEX

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalization_from_processor(processor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0..255 scale from an HF image processor's `image_mean`/`image_std` (0..1 scale)."""
    return tuple(255.0 * m for m in processor.image_mean), tuple(255.0 * s for s in processor.image_std)


def _to_tensor(image: np.ndarray, label: np.ndarray, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    x = (x - torch.tensor(mean, dtype=torch.float32)[:, None, None]) / torch.tensor(std, dtype=torch.float32)[
        :, None, None
    ]
    return x, torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))


def _resize(image: Image.Image, label: Image.Image | None, size_wh: tuple[int, int]):
    image = image.resize(size_wh, Image.BILINEAR)
    return image, (label.resize(size_wh, Image.NEAREST) if label is not None else None)


def fit_scale(size_wh: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long edge <= max(scale), short edge <= min(scale)."""
    w, h = size_wh
    factor = min(max(scale) / max(w, h), min(scale) / min(w, h))
    return max(int(w * factor + 0.5), 1), max(int(h * factor + 0.5), 1)


def random_crop(label: np.ndarray, crop: tuple[int, int], cat_max_ratio: float, rng, ignore_index=IGNORE_INDEX):
    """mmseg's RandomCrop box (y0, y1, x0, x1): up to 10 tries for a crop no class fills beyond `cat_max_ratio`."""
    h, w = label.shape
    ch, cw = min(crop[0], h), min(crop[1], w)

    def draw():
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        return y0, y0 + ch, x0, x0 + cw

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            seg = label[box[0] : box[1], box[2] : box[3]]
            cnt = np.bincount(seg[seg != ignore_index].ravel(), minlength=1)
            cnt = cnt[cnt > 0]
            if len(cnt) > 1 and cnt.max() / cnt.sum() < cat_max_ratio:
                break
            box = draw()
    return box


def photometric_distortion(img: np.ndarray, rng, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18) -> np.ndarray:  # fmt: skip
    """mmseg's PhotoMetricDistortion on a uint8 RGB image: each step with probability 1/2,
    contrast before or after the colour steps, uint8 rounding after each step like mmcv."""

    def convert(x, alpha=1.0, beta=0.0):
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    if rng.integers(2):
        img = convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = rng.integers(2)
    if contrast_first and rng.integers(2):
        img = convert(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = rgb_to_hsv(img / 255.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*saturation_range), 0, 1)
        img = convert(hsv_to_rgb(hsv), alpha=255.0)
    if rng.integers(2):
        hsv = rgb_to_hsv(img / 255.0)
        hsv[..., 0] = (hsv[..., 0] + rng.integers(-hue_delta, hue_delta) / 180.0) % 1.0  # OpenCV hue is 0..180
        img = convert(hsv_to_rgb(hsv), alpha=255.0)
    if not contrast_first and rng.integers(2):
        img = convert(img, alpha=rng.uniform(*contrast_range))
    return img


class SegmentationTransforms:
    """Batched `set_transform` callable: image/label columns -> pixel_values/labels tensors.

    Args:
        train (`bool`): random short-edge resize, crop, flip and photometric distortion if
            `True`; deterministic keep-ratio resize to `scale` if `False`.
        crop_size (`int` or `tuple[int, int]`, *optional*, defaults to `512`): (h, w) of the
            training crop. Images smaller than it give smaller crops; `collate_fn` pads them.
        scale_range (`tuple[int, int]`, *optional*, defaults to `(256, 1024)`): training short-edge range.
        num_scales (`int`, *optional*, defaults to `16`): the short edge is drawn from
            `num_scales` evenly spaced values of `scale_range` (16 gives Rein's 256, 307, ..., 1024);
            `None` draws any integer in the range.
        max_size (`int`, *optional*, defaults to `2048`): cap on the long edge after the resize.
        cat_max_ratio (`float`, *optional*, defaults to `0.75`): crop re-draw threshold (1 disables).
        flip_prob (`float`, *optional*, defaults to `0.5`): horizontal flip probability.
        photometric (`bool`, *optional*, defaults to `True`): apply `photometric_distortion`.
        scale (`tuple[int, int]`, *optional*): evaluation (long, short) keep-ratio fit, e.g.
            (1024, 512) for Cityscapes; `None` keeps the original size.
        resize_label (`bool`, *optional*, defaults to `False`): at evaluation, also resize the
            label (nearest). The official protocol keeps labels at full resolution and resizes
            the logits to them, which `fishertune.evaluation.evaluate_model` does.
        mean, std (`tuple[float, float, float]`): normalization on the 0..255 scale.
        label_lut (`np.ndarray`, *optional*): 256 uint8 entries applied to the label ids (another dataset's
            classes into the model's, `fishertune.data.name_mapping_lut`); 255 stays ignored.
        seed (`int`, *optional*): seed a private generator (reproducible in one process). By
            default each call draws its seed from torch's RNG, which the DataLoader reseeds per worker.
            Neither is a function of the sample alone, so a resumed run draws other augmentations:
            wrap the dataset in `KeyedTrainingDataset` (what the recipes do) for bitwise resume.
    """

    def __init__(self, train: bool, crop_size=512, scale_range=(256, 1024), num_scales: int | None = 16,
                 max_size: int = 2048, cat_max_ratio: float = 0.75, flip_prob: float = 0.5, photometric: bool = True,
                 scale: tuple[int, int] | None = None, resize_label: bool = False,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 ignore_index: int = IGNORE_INDEX, label_lut=None, seed: int | None = None):  # fmt: skip
        self.train = train
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        lo, hi = scale_range
        self.short_edges = None if num_scales is None else np.linspace(lo, hi, num_scales).astype(int)
        self.scale_range, self.max_size = (lo, hi), max_size
        self.cat_max_ratio, self.flip_prob, self.photometric = cat_max_ratio, flip_prob, photometric
        self.scale, self.resize_label = scale, resize_label
        self.mean, self.std, self.ignore_index = tuple(mean), tuple(std), ignore_index
        self.label_lut = None if label_lut is None else np.asarray(label_lut, dtype=np.uint8)
        self._rng = np.random.default_rng(seed) if seed is not None else None

    def _generator(self):
        if self._rng is not None:
            return self._rng
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def train_one(self, image: Image.Image, label: Image.Image, rng):
        w, h = image.size
        short = (
            int(rng.choice(self.short_edges))
            if self.short_edges is not None
            else int(rng.integers(*self.scale_range, endpoint=True))
        )
        factor = min(short / min(w, h), self.max_size / max(w, h))
        image, label = _resize(image, label, (int(w * factor + 0.5), int(h * factor + 0.5)))
        img, lbl = np.asarray(image), np.asarray(label)
        y0, y1, x0, x1 = random_crop(lbl, self.crop_size, self.cat_max_ratio, rng, self.ignore_index)
        img, lbl = img[y0:y1, x0:x1], lbl[y0:y1, x0:x1]
        if rng.random() < self.flip_prob:
            img, lbl = img[:, ::-1], lbl[:, ::-1]
        if self.photometric:
            img = photometric_distortion(np.ascontiguousarray(img), rng)
        return _to_tensor(img, lbl, self.mean, self.std)

    def eval_one(self, image: Image.Image, label: Image.Image | None):
        if self.scale is not None:
            image, resized = _resize(image, label if self.resize_label else None, fit_scale(image.size, self.scale))
            label = resized if self.resize_label else label
        lbl = np.asarray(label) if label is not None else np.full(image.size[::-1], self.ignore_index, np.uint8)
        return _to_tensor(np.asarray(image), lbl, self.mean, self.std)

    def sample(self, image: Image.Image, label: Image.Image | None, rng=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One example -> (pixel_values, labels); training draws every random number from `rng`
        (a `numpy.random.Generator`; `KeyedTrainingDataset` passes one keyed by seed, epoch and index).
        The image is displayed and made 8-bit RGB by `data.images.to_rgb` (EXIF orientation, 16-bit, float)."""
        image = to_rgb(image)
        if label is not None and label.mode not in ("L", "P"):
            raise ValueError(f"label must be a single-channel image, got mode {label.mode!r}")
        if label is not None and label.size != image.size:
            raise ValueError(f"label size {label.size} differs from image size {image.size}")
        if label is not None and self.label_lut is not None:
            label = Image.fromarray(self.label_lut[np.asarray(label)])
        if not self.train:
            return self.eval_one(image, label)
        return self.train_one(image, label, self._generator() if rng is None else rng)

    def __call__(self, batch: dict) -> dict:
        rng = self._generator() if self.train else None
        labels = batch.get("label") or [None] * len(batch["image"])
        pixel_values, targets = [], []
        for image, label in zip(batch["image"], labels):
            x, y = self.sample(image, label, rng)
            pixel_values.append(x)
            targets.append(y)
        return {"pixel_values": pixel_values, "labels": targets}


def train_transforms(crop_size=512, scale_range=(256, 1024), **kw) -> SegmentationTransforms:
    """Rein's training pipeline as a `set_transform` callable (see `SegmentationTransforms`)."""
    return SegmentationTransforms(True, crop_size=crop_size, scale_range=scale_range, **kw)


def eval_transforms(scale: tuple[int, int] | None = None, resize_label: bool = False, **kw) -> SegmentationTransforms:
    """Evaluation pipeline as a `set_transform` callable; `scale` per dataset from `EVAL_SCALES`."""
    return SegmentationTransforms(False, scale=scale, resize_label=resize_label, **kw)


def collate_fn(examples: list[dict], ignore_index: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """Stack examples into `pixel_values` [B,3,H,W] and `labels` [B,H,W], padding bottom/right to the
    largest size with 0 (images, after normalization, like mmseg's data preprocessor) and 255 (labels)."""
    h = max(max(e["pixel_values"].shape[-2] for e in examples), max(e["labels"].shape[-2] for e in examples))
    w = max(max(e["pixel_values"].shape[-1] for e in examples), max(e["labels"].shape[-1] for e in examples))
    pixel_values = torch.zeros(len(examples), 3, h, w, dtype=examples[0]["pixel_values"].dtype)
    labels = torch.full((len(examples), h, w), ignore_index, dtype=torch.long)
    for i, e in enumerate(examples):
        x, y = e["pixel_values"], e["labels"]
        pixel_values[i, :, : x.shape[-2], : x.shape[-1]] = x
        labels[i, : y.shape[-2], : y.shape[-1]] = y
    return {"pixel_values": pixel_values, "labels": labels}
