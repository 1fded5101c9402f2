"""Corrupted copies of CamVid's Seq05VD target (`target_day_new_route`), deterministic and cached.

The targets of the real-data domain-generalization benchmark (benchmarks/dg_camvid.py) beyond
the two clean ones: the `imagecorruptions` package (Hendrycks & Dietterich's ImageNet-C
corruptions for arbitrary image sizes, Michaelis et al. 2019) at one severity, plus a
night-like darkening (exposure and gamma). Labels are never touched: only corruptions that keep
every pixel where it was are offered (no elastic transform, no glass blur's pixel shuffling,
no zoom blur's rescaling), so the clean labels stay valid.

Three incompatibilities of imagecorruptions 1.1.2 with today's libraries are worked around at
runtime, without forking the package (see `install_shims`):

1. It does `from pkg_resources import resource_filename` at import; setuptools >= 81 no longer
   ships `pkg_resources`. If the real module is importable (setuptools < 81) it is used;
   otherwise a minimal stand-in module providing `resource_filename` (on `importlib.resources`)
   is put in `sys.modules`.
2. Its `fog` (via `plasma_fractal`) uses `np.float_`, removed in NumPy 2: `np.float_ = np.float64`
   is set before the import when missing.
3. Its `gaussian_blur` and `glass_blur` call `skimage.filters.gaussian(..., multichannel=True)`;
   scikit-image >= 0.19 renamed it `channel_axis=-1` and 0.21+ removed it. The module's
   `gaussian` name is replaced by a wrapper that translates the argument.

Determinism: every (corruption, image) pair seeds NumPy's global RNG (which the package draws
from) with crc32(f"{seed}/{corruption}/{stem}"), so the output does not depend on order, on
which other images or corruptions are made, or on the process. Images are written losslessly (PNG).

Usage::

    python benchmarks/camvid_corruptions.py --root /work/shared/data/camvid            # all, severity 3
    python benchmarks/camvid_corruptions.py --root ... --corruptions fog dark --limit 2

    from camvid_corruptions import corrupted_targets
    targets = corrupted_targets(root)   # {"target_fog": datasets.Dataset, ...}
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import types
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

#: The benchmark's corruption targets: five from imagecorruptions plus `dark`.
DEFAULT_CORRUPTIONS = ("fog", "frost", "snow", "motion_blur", "gaussian_noise", "dark")
#: Corruptions of imagecorruptions that keep pixels in place (labels stay valid), usable here.
PIXEL_ALIGNED = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "motion_blur",
    "gaussian_blur", "snow", "frost", "fog", "brightness", "contrast", "saturate", "spatter",
    "jpeg_compression", "pixelate",
)  # fmt: skip
#: Corruptions that move pixels: the labels would no longer match, so they are refused.
PIXEL_MOVING = ("elastic_transform", "glass_blur", "zoom_blur")
#: Night-like darkening: out = 255 * DARK_EXPOSURE * (x / 255) ** DARK_GAMMA.
DARK_EXPOSURE = 0.35
DARK_GAMMA = 1.8
DEFAULT_SEVERITY = 3
DEFAULT_SEED = 0
SOURCE_SPLIT = "target_day_new_route"  # Seq05VD
DEFAULT_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", ".cache", "camvid_corruptions")

_SHIMS: dict[str, bool] = {}


# -- the three runtime shims ----------------------------------------------------------------------
def _shim_pkg_resources() -> bool:
    """Make `from pkg_resources import resource_filename` work; True if a stand-in was installed."""
    try:
        import pkg_resources  # noqa: F401  (setuptools < 81)

        return False
    except ImportError:
        pass

    def resource_filename(package_or_requirement: str, resource_name: str) -> str:
        # pkg_resources' semantics for an importable name: relative to the package folder, or to
        # the folder of a plain module (imagecorruptions passes its `corruptions` module's __name__).
        module = importlib.import_module(package_or_requirement)
        base = os.path.dirname(os.path.abspath(module.__file__))
        return os.path.normpath(os.path.join(base, *resource_name.split("/")))

    module = types.ModuleType("pkg_resources")
    module.resource_filename = resource_filename
    module.__fishertune_shim__ = True
    sys.modules["pkg_resources"] = module
    return True


def _shim_numpy_float() -> bool:
    """`np.float_` (removed in NumPy 2) for imagecorruptions' fog; True if it had to be added."""
    if "float_" in np.__dict__:
        return False
    np.float_ = np.float64  # type: ignore[attr-defined]
    return True


def _gaussian_compat(gaussian):
    """Wrap skimage.filters.gaussian so that the removed `multichannel=` argument is translated."""
    if getattr(gaussian, "__fishertune_shim__", False):
        return gaussian

    def wrapper(image, *args, multichannel=None, **kwargs):
        if multichannel is not None and "channel_axis" not in kwargs:
            kwargs["channel_axis"] = -1 if multichannel else None
        return gaussian(image, *args, **kwargs)

    wrapper.__fishertune_shim__ = True
    wrapper.__wrapped__ = gaussian
    return wrapper


def install_shims():
    """Apply the shims and import imagecorruptions; returns its `corruptions` module.

    `SHIMS_APPLIED` (module attribute, filled here) records which shims were needed.
    """
    if "imagecorruptions.corruptions" in sys.modules and _SHIMS:
        return sys.modules["imagecorruptions.corruptions"]
    _SHIMS["pkg_resources"] = _shim_pkg_resources()
    _SHIMS["np.float_"] = _shim_numpy_float()
    corruptions = importlib.import_module("imagecorruptions.corruptions")
    wrapped = _gaussian_compat(corruptions.gaussian)
    _SHIMS["skimage.gaussian(multichannel)"] = wrapped is not corruptions.gaussian
    corruptions.gaussian = wrapped
    return corruptions


SHIMS_APPLIED = _SHIMS


# -- corruptions ----------------------------------------------------------------------------------
def darken(image: np.ndarray, exposure: float = DARK_EXPOSURE, gamma: float = DARK_GAMMA) -> np.ndarray:
    """Night-like exposure: scale the (gamma-expanded) intensities down. uint8 in, uint8 out."""
    x = image.astype(np.float64) / 255.0
    return np.clip(np.rint(255.0 * exposure * x**gamma), 0, 255).astype(np.uint8)


def image_seed(seed: int, corruption: str, stem: str) -> int:
    return zlib.crc32(f"{seed}/{corruption}/{stem}".encode())


def corrupt_image(image: np.ndarray, corruption: str, severity: int = DEFAULT_SEVERITY, seed: int = DEFAULT_SEED,
                  stem: str = "") -> np.ndarray:  # fmt: skip
    """One corrupted copy of a uint8 RGB image [H, W, 3]; same inputs give the same output."""
    if corruption in PIXEL_MOVING:
        raise ValueError(f"{corruption!r} moves pixels, so the labels would no longer match; not allowed.")
    if corruption == "dark":
        return darken(image)
    if corruption not in PIXEL_ALIGNED:
        raise ValueError(f"Unknown corruption {corruption!r}; choose from {PIXEL_ALIGNED + ('dark',)}.")
    module = install_shims()
    state = np.random.get_state()
    np.random.seed(image_seed(seed, corruption, stem))
    try:
        out = getattr(module, corruption)(Image.fromarray(image), severity)
    finally:
        np.random.set_state(state)
    out = np.uint8(out)  # what imagecorruptions.corrupt returns (truncation, like the package)
    if out.shape != image.shape:
        raise RuntimeError(f"{corruption} changed the image shape {image.shape} -> {out.shape}.")
    return out


def _stems(root: Path, split: str) -> list[str]:
    return json.loads((root / "splits.json").read_text())[split]


def corruption_dir(cache_dir: str | os.PathLike, corruption: str, severity: int, seed: int) -> Path:
    tag = corruption if corruption == "dark" else f"{corruption}_s{severity}"
    return Path(cache_dir) / f"{tag}_seed{seed}"


def make_corrupted(root, corruption: str, severity: int = DEFAULT_SEVERITY, seed: int = DEFAULT_SEED,
                   cache_dir=DEFAULT_CACHE, split: str = SOURCE_SPLIT, limit: int | None = None,
                   overwrite: bool = False) -> list[str]:  # fmt: skip
    """Write the corrupted images of `split` (PNG, one per stem) and return their paths, in split order."""
    root = Path(root)
    out_dir = corruption_dir(cache_dir, corruption, severity, seed)
    stems = _stems(root, split)[:limit]
    paths = []
    for stem in stems:
        out = out_dir / f"{stem}.png"
        if overwrite or not out.is_file():
            image = np.asarray(Image.open(root / "images" / f"{stem}.jpg").convert("RGB"))
            out.parent.mkdir(parents=True, exist_ok=True)
            # per process: two benchmark runs scoring at once write the same image; a shared tmp name let one
            # rename the other's file away (FileNotFoundError after a finished training run)
            tmp = out.parent / f"{out.stem}.{os.getpid()}.tmp.png"
            Image.fromarray(corrupt_image(image, corruption, severity, seed, stem)).save(tmp)
            os.replace(tmp, out)  # atomic: a killed run never leaves a half-written image
        paths.append(str(out))
    return paths


def corrupted_targets(root, corruptions=DEFAULT_CORRUPTIONS, severity: int = DEFAULT_SEVERITY,
                      seed: int = DEFAULT_SEED, cache_dir=DEFAULT_CACHE, limit: int | None = None) -> dict:  # fmt: skip
    """`{"target_<corruption>": datasets.Dataset}` with the corrupted images and Seq05VD's labels.

    The labels come from `fishertune.data.load_dataset("camvid", root, "target_day_new_route")`
    (mapped exactly as for the clean target); only the image column is replaced.
    """
    import datasets

    from fishertune.data import get_id2label, load_dataset, make_dataset

    clean = load_dataset("camvid", str(root), SOURCE_SPLIT)
    if limit is not None:
        clean = clean.select(range(min(limit, len(clean))))
    labels = clean.cast_column("label", datasets.Image(decode=False))["label"]
    out = {}
    for corruption in corruptions:
        images = make_corrupted(root, corruption, severity, seed, cache_dir, limit=limit)
        if len(images) != len(labels):
            raise RuntimeError(f"{corruption}: {len(images)} images for {len(labels)} labels.")
        out[f"target_{corruption}"] = make_dataset(images, labels, name="camvid", split=f"target_{corruption}",
                                                   id2label=get_id2label(clean))  # fmt: skip
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"),
        help="CamVid folder (images/, labels/, splits.json)",
    )
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE)
    parser.add_argument("--corruptions", nargs="+", default=list(DEFAULT_CORRUPTIONS))
    parser.add_argument("--severity", type=int, default=DEFAULT_SEVERITY)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--limit", type=int, default=None, help="first N images only (smoke tests)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--preview", default=None, help="write a PNG grid of the first image per corruption here")
    args = parser.parse_args(argv)
    previews = []
    for corruption in args.corruptions:
        paths = make_corrupted(args.root, corruption, args.severity, args.seed, args.cache_dir, limit=args.limit,
                               overwrite=args.overwrite)  # fmt: skip
        print(f"{corruption}: {len(paths)} images in {Path(paths[0]).parent}")
        previews.append(paths[0])
    print("shims applied:", json.dumps(SHIMS_APPLIED))
    if args.preview:
        tiles = [np.asarray(Image.open(p).convert("RGB"))[::2, ::2] for p in previews]
        cols = 3
        rows = [np.concatenate(tiles[i : i + cols] + [np.zeros_like(tiles[0])] * (cols - len(tiles[i : i + cols])), 1)
                for i in range(0, len(tiles), cols)]  # fmt: skip
        Image.fromarray(np.concatenate(rows, 0)).save(args.preview)


if __name__ == "__main__":
    main()
