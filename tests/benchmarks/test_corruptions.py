"""benchmarks/camvid_corruptions.py: deterministic, labels untouched, pixel-moving corruptions refused, shims work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from _benchmark_modules import REPO, load_benchmark

CAMVID = REPO.parent / "shared" / "data" / "camvid"
cc = load_benchmark("camvid_corruptions")
if importlib.util.find_spec("imagecorruptions") is None:  # not importable before the shims: no importorskip
    pytest.skip("imagecorruptions is not installed (pip install -e '.[benchmark]')", allow_module_level=True)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    # smooth-ish content, 64x80, uint8 RGB (the package needs >= 32 pixels a side)
    base = np.linspace(0, 255, 64 * 80).reshape(64, 80)
    return np.clip(base[..., None] + rng.normal(0, 20, (64, 80, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("corruption", cc.DEFAULT_CORRUPTIONS)
def test_deterministic_and_shape_preserving(image, corruption):
    a = cc.corrupt_image(image, corruption, 3, seed=0, stem="x")
    b = cc.corrupt_image(image, corruption, 3, seed=0, stem="x")
    assert a.dtype == np.uint8 and a.shape == image.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, image)


def test_seed_and_stem_change_random_corruptions(image):
    a = cc.corrupt_image(image, "gaussian_noise", 3, seed=0, stem="x")
    assert not np.array_equal(a, cc.corrupt_image(image, "gaussian_noise", 3, seed=1, stem="x"))
    assert not np.array_equal(a, cc.corrupt_image(image, "gaussian_noise", 3, seed=0, stem="y"))


def test_global_rng_left_alone(image):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    cc.corrupt_image(image, "snow", 3, stem="x")
    assert np.random.rand() == expected


@pytest.mark.parametrize("corruption", cc.PIXEL_MOVING)
def test_pixel_moving_refused(image, corruption):
    with pytest.raises(ValueError, match="moves pixels"):
        cc.corrupt_image(image, corruption, 3)
    assert not set(cc.PIXEL_MOVING) & set(cc.DEFAULT_CORRUPTIONS + cc.PIXEL_ALIGNED)


def test_dark_is_a_monotone_darkening(image):
    out = cc.darken(image)
    assert (out <= image).all() and out.mean() < 0.3 * image.mean()
    assert np.all(
        np.diff(cc.darken(np.arange(256, dtype=np.uint8)[None, :, None].repeat(3, 2)).astype(int)[0, :, 0]) >= 0
    )


def test_shims_exercised(image):
    corruptions = cc.install_shims()
    # 1. pkg_resources: the frost textures resolve (real setuptools < 81 or the stand-in)
    frost_file = corruptions.resource_filename(corruptions.__name__, "./frost/frost1.png")
    assert Path(frost_file).is_file()
    assert cc.corrupt_image(image, "frost", 3, stem="x").shape == image.shape
    # 2. np.float_ exists (fog's plasma fractal allocates with it)
    assert np.float_ is np.float64 or "float_" in np.__dict__
    assert corruptions.plasma_fractal(mapsize=32).dtype == np.float64
    # 3. skimage's gaussian accepts the removed multichannel= (gaussian blur uses it)
    assert getattr(corruptions.gaussian, "__fishertune_shim__", False)
    blurred = corruptions.gaussian(image / 255.0, sigma=2, multichannel=True)
    assert blurred.shape == image.shape
    out = cc.corrupt_image(image, "gaussian_blur", 3, stem="x")
    assert out.shape == image.shape and out.std() < image.std()
    # the record says which shims this environment needed
    assert set(cc.SHIMS_APPLIED) == {"pkg_resources", "np.float_", "skimage.gaussian(multichannel)"}


def test_stand_in_resource_filename(monkeypatch):
    monkeypatch.delitem(sys.modules, "pkg_resources", raising=False)
    real = importlib.util.find_spec("pkg_resources") is not None
    if real:
        pytest.skip("setuptools < 81 provides pkg_resources here; the stand-in is not used")
    assert cc._shim_pkg_resources() is True
    import pkg_resources

    path = pkg_resources.resource_filename("imagecorruptions.corruptions", "./frost/frost2.png")
    assert Path(path).is_file()


@pytest.mark.skipif(not (CAMVID / "splits.json").is_file(), reason="CamVid not available")
def test_camvid_targets_labels_untouched(tmp_path):
    from fishertune.data import load_dataset

    targets = cc.corrupted_targets(CAMVID, corruptions=("fog", "dark"), cache_dir=tmp_path, limit=2)
    clean = load_dataset("camvid", str(CAMVID), "target_day_new_route").select(range(2))
    assert set(targets) == {"target_fog", "target_dark"}
    for ds in targets.values():
        assert len(ds) == 2
        for i in range(2):
            np.testing.assert_array_equal(np.asarray(ds[i]["label"]), np.asarray(clean[i]["label"]))
            assert ds[i]["image"].size == clean[i]["image"].size
            assert not np.array_equal(np.asarray(ds[i]["image"]), np.asarray(clean[i]["image"]))
    # cached files are reused, and a fresh generation reproduces them bit for bit
    first = np.asarray(targets["target_fog"][0]["image"])
    again = cc.corrupted_targets(CAMVID, corruptions=("fog",), cache_dir=tmp_path / "again", limit=1)
    np.testing.assert_array_equal(first, np.asarray(again["target_fog"][0]["image"]))
