"""Helpers that write tiny fake dataset trees in each dataset's official layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, h: int = 4, w: int = 6, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=100) if path.suffix == ".jpg" else Image.fromarray(arr).save(path)
    return arr


def write_label(path: Path, ids: np.ndarray, palette: bool = False) -> None:
    """A uint8 id map; `palette=True` writes a 'P' PNG (GTAV, Mapillary) whose indices are the ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    im = Image.fromarray(ids)
    if palette:
        im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
        im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    im.save(path)


def ids_grid(values, h: int = 4, w: int = 6) -> np.ndarray:
    """A label map cycling through `values` (so every value appears)."""
    return np.resize(np.asarray(values, dtype=np.uint8), h * w).reshape(h, w)
