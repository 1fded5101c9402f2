"""Your own data through the recipes, without code: a `save_to_disk` dataset with `image`/`annotation` columns
(a subprocess of recipes/train.py, as a user runs it, then evaluate.py), and a folder of images + masks with
`id2label.json` (any image extension, reduced labels, a held-out validation split)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from fishertune.data import get_id2label, load_custom

from ._helpers import REPO, recipe_main

CLASSES = {"0": "ground", "1": "wall", "2": "sky"}
QUICK = [
    "--quick",
    "true",
    "--backbone",
    "config:vit-micro-test",
    "--crop_size",
    "32",
    "32",
    "--scale_range",
    "32",
    "48",
    "--per_device_train_batch_size",
    "2",
    "--eval_mode",
    "whole",
    "--logging_steps",
    "2",
]


def _scene(i: int, h: int = 32, w: int = 40):
    """A picture whose class follows the rows (ground / wall / sky bands) and its id map."""
    rng = np.random.default_rng(i)
    ids = np.zeros((h, w), np.uint8)
    ids[: h // 3], ids[h // 3 : 2 * h // 3] = 2, 1
    colors = np.array([[90, 60, 30], [150, 150, 150], [80, 140, 220]], np.uint8)
    img = np.clip(colors[ids].astype(int) + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    return img, ids


def _saved_dataset(folder, n=8):
    rows = [_scene(i) for i in range(n)]
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a, _ in rows], "annotation": [Image.fromarray(b) for _, b in rows]},
        features=datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()}),
    )
    datasets.DatasetDict({"train": ds}).save_to_disk(str(folder))
    (folder / "id2label.json").write_text(json.dumps(CLASSES))


def test_save_to_disk_dataset_trains_and_evaluates_through_the_recipes(tmp_path):
    data, out = tmp_path / "my_data", tmp_path / "run"
    _saved_dataset(data)
    argv = [
        sys.executable,
        os.path.join(REPO, "recipes", "train.py"),
        "--dataset_name",
        str(data),
        "--label_column_name",
        "annotation",
        "--train_val_split",
        "0.25",
        "--val_split",
        "validation",
        "--targets",
        f"{data}:validation",
        "--output_dir",
        str(out),
        *QUICK,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {f"{data}:validation", "mean", f"source:{data}:validation"}
    assert set(metrics[f"{data}:validation"]["per_class_iou"]) == set(CLASSES.values())
    assert metrics[f"{data}:validation"]["num_pixels"] == 2 * 32 * 40  # 2 of 8 held out, every pixel valid
    again = recipe_main("evaluate")(["--model", str(out), "--device", "cpu"])
    assert again[f"{data}:validation"]["mIoU"] == pytest.approx(metrics[f"{data}:validation"]["mIoU"], abs=1e-3)


def test_wrong_column_is_named(tmp_path):
    _saved_dataset(tmp_path / "d", n=2)
    with pytest.raises(ValueError, match=r"no column 'label'.*\['image', 'annotation'\].*--label_column_name"):
        load_custom(str(tmp_path / "d"), "train")


def _masks_folder(root, n=6, reduce=False):
    for i in range(n):
        img, ids = _scene(i)
        ext = [".jpg", ".png", ".webp"][i % 3]
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / f"scene_{i}{ext}")
        Image.fromarray(ids + 1 if reduce else ids).save(root / "masks" / f"scene_{i}.png")
    (root / "id2label.json").write_text(json.dumps(CLASSES))


def test_masks_folder_with_reduced_labels_and_a_held_out_split(tmp_path):
    root = tmp_path / "masks_data"
    _masks_folder(root, reduce=True)
    train = load_custom(str(root), "train", reduce_labels=True, train_val_split=0.34)
    val = load_custom(str(root), "validation", reduce_labels=True, train_val_split=0.34)
    assert (len(train), len(val)) == (3, 3) and get_id2label(val) == {0: "ground", 1: "wall", 2: "sky"}
    _, ids = _scene(0)
    seen = sorted(np.unique(np.asarray(train[i]["label"])).tolist() for i in range(3))
    assert all(s == [0, 1, 2] for s in seen)  # raw 1..3 reduced to 0..2
    out = tmp_path / "run"
    recipe_main("train")(
        [
            "--dataset_name",
            str(root),
            "--do_reduce_labels",
            "true",
            "--train_val_split",
            "0.34",
            "--val_split",
            "",
            "--targets",
            f"{root}:validation",
            "--output_dir",
            str(out),
            *QUICK,
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics[f"{root}:validation"]["num_pixels"] == 3 * 32 * 40


def test_masks_folder_names_a_missing_mask(tmp_path):
    root = tmp_path / "m"
    _masks_folder(root, n=2)
    os.remove(root / "masks" / "scene_1.png")
    with pytest.raises(FileNotFoundError, match=r"scene_1\.png"):
        load_custom(str(root), "train")


def test_hub_dataset_id_reads_its_config_and_the_repos_id2label(tmp_path, monkeypatch):
    """The Hub path without a network: `datasets.load_dataset` and the id2label download stand in (the
    `save_to_disk` test above runs the same code after loading)."""
    import huggingface_hub

    _saved_dataset(tmp_path / "d", n=4)
    calls = []

    def fake_load(source, config_name=None):
        calls.append((source, config_name))
        return datasets.load_from_disk(str(tmp_path / "d"))

    def fake_download(repo_id, filename, repo_type=None):
        calls.append((repo_id, filename, repo_type))
        return str(tmp_path / "d" / "id2label.json")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ds = load_custom(
        "someone/streets", "validation", config_name="small", label_column="annotation", train_val_split=0.5
    )
    assert calls == [("someone/streets", "small"), ("someone/streets", "id2label.json", "dataset")]
    assert len(ds) == 2 and ds.column_names == ["image", "label"]
    assert get_id2label(ds) == {0: "ground", 1: "wall", 2: "sky"}
