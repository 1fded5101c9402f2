"""recipes/predict.py on a folder with unreadable files and colliding stems: every readable image gets its own
outputs, unreadable ones are skipped with a warning and counted, the legend is written, the summary is true."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import fishertune.experiment.saved as saved_module
from fishertune.experiment import ExperimentArguments
from fishertune.experiment.build import backbone_source, build_base_model
from fishertune.experiment.predict import output_names

from ._helpers import recipe_main


@pytest.fixture
def tiny_output(monkeypatch):
    """`load_output` gives a random micro model instead of a trained folder (loading is tested elsewhere)."""
    exp = ExperimentArguments(backbone="config:vit-micro-test", eval_mode="whole")
    assert backbone_source(exp.backbone).image_size == 32
    model = build_base_model(exp, {0: "road", 1: "sky", 2: "car"}, seed=0).eval()
    monkeypatch.setattr(saved_module, "load_output", lambda folder, device=None: (model, exp))


def _write(path, seed, fmt=None):
    arr = np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def test_unreadable_images_are_skipped_and_stems_stay_distinct(tiny_output, tmp_path, capsys):
    images, preds = tmp_path / "images", tmp_path / "preds"
    images.mkdir()
    _write(images / "a.png", 0)
    _write(images / "x.jpg", 1, "JPEG")
    _write(images / "x.png", 2)
    _write(images / "truncated.jpg", 3, "JPEG")
    data = (images / "truncated.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (images / "not_an_image.png").write_bytes(b"this is text")
    with pytest.warns(UserWarning, match="Skipping unreadable image"):
        done = recipe_main("predict")(["--model", str(tmp_path), "--images", str(images), "--output_dir", str(preds)])
    assert sorted(done) == ["a", "x.jpg", "x.png"]
    assert sorted(p for p, _ in done.skipped) == [str(images / "not_an_image.png"), str(images / "truncated.jpg")]
    for sub in ("masks", "overlays", "labels"):
        assert sorted(f.name for f in (preds / sub).iterdir()) == ["a.png", "x.jpg.png", "x.png.png"]
    # each output is its own image's: the overlays blend different pictures
    assert not np.array_equal(
        np.asarray(Image.open(preds / "overlays" / "x.jpg.png")),
        np.asarray(Image.open(preds / "overlays" / "x.png.png")),
    )
    assert (preds / "legend.png").is_file() and (preds / "legend.json").is_file()
    printed = capsys.readouterr().out
    assert "Predicted 3 image(s)" in printed and "Skipped 2 unreadable file(s)" in printed
    assert str(images / "truncated.jpg") in printed


def test_output_names():
    assert output_names(["d/a.png", "d/b.jpg"]) == ["a", "b"]
    assert output_names(["d/x.jpg", "d/x.png", "d/y.png"]) == ["x.jpg", "x.png", "y"]
    assert output_names(["d/x.jpg", "d/x.jpg.png", "d/x.png"]) == ["x.jpg", "x.jpg.png", "x.png"]
