"""benchmarks/gpu_pack.py: the packed CamVid holds exactly what `dg_camvid.py --eval-every k` reads, and loads."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from _benchmark_modules import load_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from fake_trees import ids_grid, write_image, write_label  # noqa: E402

gp = load_benchmark("gpu_pack")
# not in sorted order: the pack must follow splits.json's order, as `ds.select(range(0, n, k))` does
SPLITS = {"source_train": [f"train/0006R0_f{i}" for i in (2, 0, 1)],
          "source_val": [f"val/0016E5_{i}" for i in (3, 1, 4, 0, 2)],
          "target_dusk": [f"train/0001TP_{i}" for i in (1, 3, 0, 2)]}  # fmt: skip
import dg_camvid_recipe as recipe_mod  # noqa: E402  (benchmarks/ is on sys.path once gpu_pack is loaded)
import dg_camvid_report as rp  # noqa: E402


@pytest.fixture
def tree(tmp_path):
    root, backbone = tmp_path / "camvid", tmp_path / "vit"
    for i, stem in enumerate(s for stems in SPLITS.values() for s in stems):
        write_image(root / "images" / f"{stem}.jpg", h=12, w=16, seed=i)
        write_label(root / "labels" / f"{stem}.png", np.roll(ids_grid(range(12), h=12, w=16), i, axis=1))
    (root / "splits.json").write_text(json.dumps(SPLITS))
    backbone.mkdir()
    (backbone / "config.json").write_text("{}")
    (backbone / "model.safetensors").write_bytes(b"weights")
    (backbone / "model.safetensors").chmod(0o444)  # ../shared is read-only: the copy must not inherit that
    return root, backbone


def test_pack_keeps_the_training_split_and_every_kth_evaluation_image(tree, tmp_path):
    from fishertune.data import load_dataset

    root, backbone = tree
    gp.main(["--camvid-root", str(root), "--backbone", str(backbone), "--every", "2", "--out", str(tmp_path / "p")])
    packed = tmp_path / "p" / "camvid"
    splits = json.loads((packed / "splits.json").read_text())
    assert splits == {"source_train": SPLITS["source_train"], "source_val": SPLITS["source_val"][::2],
                      "target_dusk": SPLITS["target_dusk"][::2]}  # fmt: skip
    assert json.loads((packed / gp.PACK_MARKER).read_text())["eval_every"] == 2
    copied = tmp_path / "p" / "backbone" / "vit"
    assert sorted(p.name for p in copied.iterdir()) == ["config.json", "model.safetensors"]
    assert (
        os.stat(copied / "model.safetensors").st_mode & 0o200
        and (copied / "model.safetensors").read_bytes() == b"weights"
    )
    # the packed split read whole is the full split read every 2nd image (what gpu_check.sh relies on)
    full = load_dataset("camvid", str(root), "source_val")
    whole = load_dataset("camvid", str(packed), "source_val")
    every = full.select(range(0, len(full), 2))
    assert len(whole) == len(every) == 3
    for a, b in zip(whole, every):
        assert np.array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    assert len(list((packed / "images").rglob("*.jpg"))) == 3 + 3 + 2
    # the recipe and the report say that 1 in 2 original images was scored, not every image
    ns = argparse.Namespace(quick=True, steps=None, estimation_batches=None, eval_every=1, fisher_type="true",
                            corruptions=["fog"], extra=None, root=str(packed), backbone=str(backbone),
                            workers=0)  # fmt: skip
    recipe = recipe_mod.recipe_from_args(ns)
    assert recipe["packed_eval_every"] == 2 and "packed_eval_every" not in recipe_mod.recipe_from_args(
        argparse.Namespace(**{**vars(ns), "root": str(root)})
    )
    assert rp._protocol_line(recipe).startswith(
        "Scored on 1 in 2 evaluation images (a gpu_pack.py copy holding 1 in 2)"
    )


def test_pack_names_what_is_missing(tree, tmp_path):
    root, backbone = tree
    (root / "labels" / f"{SPLITS['target_dusk'][2]}.png").unlink()
    with pytest.raises(SystemExit, match=r"lists 'train/0001TP_0' but .*0001TP_0.png is missing"):
        gp.pack(root, backbone, tmp_path / "p", every=2)
    with pytest.raises(SystemExit, match="no backbone config.json"):
        gp.pack(root, tmp_path, tmp_path / "q", every=2)
    with pytest.raises(SystemExit) as exit_:
        gp.main(["--every", "0"])
    assert exit_.value.code == 2
