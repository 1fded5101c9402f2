import time

import numpy as np
import pytest

from fishertune.data import (
    SYNTHETIC_DOMAINS,
    SyntheticDomain,
    generate_sample,
    get_id2label,
    load_dataset,
    make_synthetic_dataset,
)


def test_deterministic_and_seedable():
    a, b = make_synthetic_dataset(4, "dark", seed=1), make_synthetic_dataset(4, "dark", seed=1)
    for i in range(4):
        assert np.array_equal(np.asarray(a[i]["image"]), np.asarray(b[i]["image"]))
        assert np.array_equal(np.asarray(a[i]["label"]), np.asarray(b[i]["label"]))
    c = make_synthetic_dataset(1, "dark", seed=2)
    assert not np.array_equal(np.asarray(a[0]["label"]), np.asarray(c[0]["label"]))
    assert get_id2label(a) == {0: "road", 1: "building", 2: "vegetation", 3: "sky", 4: "car"}


def test_domains_change_appearance_not_layout():
    assert {"source", "palette", "texture", "noise", "blur", "dark"} <= set(SYNTHETIC_DOMAINS)
    src_img, src_lbl = generate_sample(0, "source", paired=True)
    means = []
    for d in SYNTHETIC_DOMAINS[1:]:
        img, lbl = generate_sample(0, d, paired=True)
        assert np.array_equal(lbl, src_lbl)
        assert np.abs(img.astype(int) - src_img).mean() > 3, d
        means.append(img.mean())
    assert generate_sample(0, "dark")[0].mean() < 0.5 * src_img.mean()
    assert not np.array_equal(generate_sample(0, "noise")[1], src_lbl)  # unpaired: other scenes


def test_layout_statistics_and_shape():
    labels = np.stack([generate_sample(i, "source", size=(64, 80))[1] for i in range(40)])
    img = generate_sample(0, "source", size=(64, 80))[0]
    assert labels.shape == (40, 64, 80) and img.shape == (64, 80, 3) and img.dtype == np.uint8
    counts = np.bincount(labels.ravel(), minlength=256)
    assert set(np.flatnonzero(counts).tolist()) == {0, 1, 2, 3, 4, 255}
    assert (labels[:, 0] == 3).mean() > 0.5 and (labels[:, -10] == 0).mean() > 0.2  # sky on top, road below


def test_fast_custom_domain_and_errors():
    t = time.perf_counter()
    ds = load_dataset("synthetic", split="blur", num_samples=64, size=(96, 128))
    assert len(ds) == 64 and time.perf_counter() - t < 5.0
    custom = make_synthetic_dataset(2, SyntheticDomain(gain=0.1))
    assert np.asarray(custom[0]["image"]).mean() < 40
    with pytest.raises(ValueError, match="Unknown synthetic domain"):
        make_synthetic_dataset(1, "rain")
