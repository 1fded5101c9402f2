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


def make_table3_trees(root: Path, raw: np.ndarray) -> dict[str, Path]:
    """Foggy Zurich, Foggy Driving, Dark Zurich and Nighttime Driving in their official layouts, every label `raw`
    (Cityscapes label ids); returns each dataset's root."""
    roots = {n: root / n for n in ("foggy_zurich", "foggy_driving", "dark_zurich", "nighttime_driving")}
    h, w = raw.shape
    fz = roots["foggy_zurich"]
    rel = ["GOPR0229/1508040913.0_frame_000955.png", "GP010475/1508039851_frame_000120.png"]
    for i, r in enumerate(rel):
        write_image(fz / "RGB" / r, h, w, seed=i)
        write_label(fz / "gt_labelIds" / r, raw)
    (fz / "lists_file_names").mkdir(parents=True)
    (fz / "lists_file_names" / "RGB_testv2_filenames.txt").write_text("".join(f"RGB/{r}\n" for r in rel))
    (fz / "lists_file_names" / "gt_labelIds_testv2_filenames.txt").write_text(
        "".join(f"gt_labelIds/{r}\n" for r in rel)
    )
    (fz / "lists_file_names" / "RGB_testv1_filenames.txt").write_text(f"RGB/{rel[0]}\n")
    (fz / "lists_file_names" / "gt_labelIds_testv1_filenames.txt").write_text(f"gt_labelIds/{rel[0]}\n")
    fd = roots["foggy_driving"]
    for split, gt, stem in (("test", "gtFine", "pedestrian_1_2"), ("test_extra", "gtCoarse", "web_3_4")):
        record = stem.split("_")[0]
        write_image(fd / "leftImg8bit" / split / record / f"{stem}_leftImg8bit.png", h, w)
        write_label(fd / gt / split / record / f"{stem}_{gt}_labelIds.png", raw)
        write_label(fd / gt / split / record / f"{stem}_{gt}_labelTrainIds.png", raw)  # must be ignored
    dz = roots["dark_zurich"]
    stem = "GOPR0356/GOPR0356_frame_000321"
    write_image(dz / "rgb_anon" / "val" / "night" / f"{stem}_rgb_anon.png", h, w)
    write_label(dz / "gt" / "val" / "night" / f"{stem}_gt_labelIds.png", raw)
    write_label(dz / "gt" / "val" / "night" / f"{stem}_gt_invGray.png", raw)  # must be ignored
    nd = roots["nighttime_driving"]
    name = "0_frame_0120"
    write_image(nd / "leftImg8bit" / "test" / "night" / f"{name}_leftImg8bit.png", h, w)
    write_label(nd / "gtCoarse_daytime_trainvaltest" / "test" / "night" / f"{name}_gtCoarse_labelIds.png", raw)
    return roots
