"""A procedurally generated street-scene segmentation dataset with controllable domains.

The offline default for demos and tests: no download, deterministic, fast (a 96x128 sample takes
well under a millisecond to lay out and paint in numpy). A scene is a horizon with sky above,
buildings and trees on it, a road in perspective below, cars on the road and, in half the
scenes, an ego-vehicle hood at the bottom labelled 255 (ignored). The layout (the label map)
depends only on the seed, the sample index and, unless `paired=True`, the domain; the domain
controls appearance only: palette, texture, noise, blur, darkness, fog. Training on `"source"`
and evaluating on the other domains is a miniature domain-generalization benchmark.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from ._common import make_dataset
from .labels import IGNORE_INDEX

SYNTHETIC_CLASSES = ("road", "building", "vegetation", "sky", "car")
ROAD, BUILDING, VEGETATION, SKY, CAR = range(5)


@dataclass(frozen=True)
class SyntheticDomain:
    """Appearance of a synthetic domain.

    Args:
        palette (`tuple`): base RGB colour (0..1) of each class, in `SYNTHETIC_CLASSES` order.
        color_jitter (`float`): per-image uniform jitter of each base colour.
        texture_amp (`float`): amplitude of the per-class stripe texture.
        texture_freq (`float`): stripe frequency in cycles per 128 pixels.
        noise (`float`): std of the per-pixel Gaussian noise.
        blur (`float`): Gaussian blur sigma in pixels at width 128 (scaled with the width).
        gain (`float`): brightness multiplier (darkness below 1).
        gamma (`float`): gamma applied after the gain (above 1 darkens shadows further).
        fog (`float`): blend weight towards a flat grey (0 = clear).
    """

    palette: tuple = (
        (0.50, 0.25, 0.50),
        (0.45, 0.45, 0.45),
        (0.30, 0.55, 0.15),
        (0.40, 0.60, 0.90),
        (0.10, 0.10, 0.60),
    )
    color_jitter: float = 0.05
    texture_amp: float = 0.06
    texture_freq: float = 6.0
    noise: float = 0.02
    blur: float = 0.0
    gain: float = 1.0
    gamma: float = 1.0
    fog: float = 0.0


_SOURCE = SyntheticDomain()
DOMAIN_STYLES: dict[str, SyntheticDomain] = {
    "source": _SOURCE,
    # Same scenes, other colours: every class keeps its identity only through shape and context.
    "palette": replace(
        _SOURCE,
        palette=((0.35, 0.35, 0.30), (0.70, 0.45, 0.30), (0.55, 0.60, 0.20), (0.85, 0.75, 0.60), (0.75, 0.15, 0.10)),
    ),  # fmt: skip
    "texture": replace(_SOURCE, texture_amp=0.25, texture_freq=20.0),
    "noise": replace(_SOURCE, noise=0.15),
    "blur": replace(_SOURCE, blur=2.5),
    "dark": replace(_SOURCE, gain=0.35, gamma=1.5, noise=0.04),
    "fog": replace(_SOURCE, fog=0.6),
}
SYNTHETIC_DOMAINS = list(DOMAIN_STYLES)


def _rng(*keys) -> np.random.Generator:
    # crc32 instead of hash(): Python salts str hashes per process, which would break determinism.
    return np.random.default_rng([k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys])


def generate_layout(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Label map [H, W] (uint8) of one random street scene."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(h * rng.uniform(0.38, 0.55))
    label = np.where(yy < horizon, SKY, VEGETATION).astype(np.uint8)
    for _ in range(rng.integers(2, 6)):  # buildings standing on the horizon
        x0, bw = rng.uniform(-0.1, 0.9) * w, rng.uniform(0.1, 0.3) * w
        top, bottom = horizon - rng.uniform(0.1, 0.35) * h, horizon + 0.04 * h
        label[(xx >= x0) & (xx < x0 + bw) & (yy >= top) & (yy < bottom)] = BUILDING
    for _ in range(rng.integers(0, 4)):  # round tree crowns in front of the buildings
        cx, cy, r = rng.uniform(0, w), horizon - rng.uniform(0, 0.12) * h, rng.uniform(0.05, 0.12) * h
        label[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = VEGETATION
    vx, spread = rng.uniform(0.35, 0.65) * w, rng.uniform(0.45, 0.8) * w
    depth = np.clip((yy - horizon) / max(h - horizon, 1), 0, None)  # 0 at the horizon, 1 at the bottom
    label[(yy >= horizon) & (np.abs(xx - vx) < depth * spread + 0.5)] = ROAD
    for d in np.sort(rng.uniform(0.25, 1.0, rng.integers(1, 4))):  # far cars first, near cars over them
        y_bot = horizon + d * (h - horizon)
        cw = d * spread * rng.uniform(0.35, 0.6)
        cx = vx + rng.uniform(-0.6, 0.6) * d * spread
        label[(np.abs(xx - cx) < cw / 2) & (yy < y_bot) & (yy >= y_bot - 0.5 * cw)] = CAR
    if rng.random() < 0.5:  # ego-vehicle hood: void, as in real driving datasets
        label[h - int(h * rng.uniform(0.02, 0.08)) :] = IGNORE_INDEX
    return label


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(r, r) if a == axis else (0, 0) for a in range(3)]
        p = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        img = sum(wt * np.take(p, np.arange(i, i + n), axis=axis) for i, wt in enumerate(k))
    return img


def render(label: np.ndarray, style: SyntheticDomain, rng: np.random.Generator) -> np.ndarray:
    """RGB image [H, W, 3] (uint8) of a label map in a domain's style."""
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w] * (128.0 / w)  # texture scale follows the width
    palette = np.clip(np.asarray(style.palette) + rng.uniform(-1, 1, (5, 3)) * style.color_jitter, 0, 1)
    cls = np.where(label == IGNORE_INDEX, 0, label)
    img = palette[cls]
    img[label == IGNORE_INDEX] = (0.05, 0.05, 0.05)
    # One stripe orientation per class, so that texture is a (weak, domain-dependent) cue.
    theta = np.array([0.0, 1.57, 0.8, 0.3, 2.2])[cls] + rng.uniform(-0.2, 0.2)
    phase = rng.uniform(0, 2 * np.pi)
    freq = 2 * np.pi * style.texture_freq / 128.0
    img = img + style.texture_amp * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)[..., None]
    img = img * (1.0 - 0.25 * (yy / yy.max()))[..., None] if h > 1 else img  # soft vertical shading
    if style.blur > 0:
        img = _blur(img, style.blur * w / 128.0)
    img = img + rng.normal(0, style.noise, img.shape) if style.noise > 0 else img
    img = np.clip(img * style.gain, 0, 1) ** style.gamma
    img = (1 - style.fog) * img + style.fog * 0.7
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate_sample(index: int, domain="source", size=(96, 128), seed: int = 0, paired: bool = False):
    """One (image [H,W,3] uint8, label [H,W] uint8) pair, a pure function of its arguments.

    Args:
        index (`int`): sample index.
        domain (`str` or `SyntheticDomain`): a name of `SYNTHETIC_DOMAINS` or a custom style.
        size (`tuple[int, int]`, *optional*, defaults to `(96, 128)`): (height, width).
        seed (`int`, *optional*, defaults to `0`): dataset seed.
        paired (`bool`, *optional*, defaults to `False`): share layouts across domains (sample i of
            every domain has the same label map); by default layouts differ per domain so that
            targets are not the source scenes repainted.
    """
    style = DOMAIN_STYLES[domain] if isinstance(domain, str) else domain
    name = domain if isinstance(domain, str) else "custom"
    layout_key = ("layout", seed, index) if paired else ("layout", seed, index, name)
    label = generate_layout(_rng(*layout_key), tuple(size))
    return render(label, style, _rng("render", seed, index, name)), label


def make_synthetic_dataset(num_samples: int, domain="source", size=(96, 128), seed: int = 0, paired: bool = False):
    """A `datasets.Dataset` of synthetic scenes with `image`/`label` columns.

    Args:
        num_samples (`int`): number of samples.
        domain (`str` or `SyntheticDomain`, *optional*, defaults to `"source"`): see `SYNTHETIC_DOMAINS`.
        size (`tuple[int, int]`, *optional*, defaults to `(96, 128)`): (height, width).
        seed (`int`, *optional*, defaults to `0`): dataset seed (use different seeds for train and val).
        paired (`bool`, *optional*, defaults to `False`): see `generate_sample`.
    """
    if isinstance(domain, str) and domain not in DOMAIN_STYLES:
        raise ValueError(f"Unknown synthetic domain {domain!r}; choose one of {SYNTHETIC_DOMAINS}.")
    samples = [generate_sample(i, domain, size, seed, paired) for i in range(num_samples)]
    name = domain if isinstance(domain, str) else "custom"
    return make_dataset([s[0] for s in samples], [s[1] for s in samples], name="synthetic",
                        split=name, id2label=dict(enumerate(SYNTHETIC_CLASSES)))  # fmt: skip
