"""A training image that passes the load-time header check but fails to decode mid-run (a truncated JPEG):
reported by path, with a checkpoint to resume from (bad_file_policy='error'), or skipped and counted ('skip')."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import yaml
from PIL import Image
from transformers import TrainerCallback

import fishertune.experiment.run as run_module
from fishertune.data import BadSampleError, KeyedTrainingDataset, load_dataset, train_transforms

from ._helpers import recipe_main

H, W, N = 32, 48, 6
BAD = 3  # the sample whose JPEG gets truncated


def _camvid(root) -> list[str]:
    """A CamVid folder split 'train' of N JPEGs with 11-class labels."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N):
        img, lbl = root / "images" / "train" / f"f{i}.jpg", root / "labels" / "train" / f"f{i}.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        lbl.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(img, quality=95)
        Image.fromarray(rng.integers(0, 11, (H, W), dtype=np.uint8)).save(lbl)
        paths.append(str(img))
    return paths


def _truncate(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # the header survives: the size is read, the pixels are not


@pytest.fixture
def tree(tmp_path):
    paths = _camvid(tmp_path / "camvid")
    return tmp_path / "camvid", paths


def _keyed(root, policy):
    ds = load_dataset("camvid", str(root), "train")
    return KeyedTrainingDataset(ds, train_transforms(crop_size=(32, 32), scale_range=(32, 48)), seed=0,
                                bad_file_policy=policy)


def test_truncated_jpeg_is_named_or_skipped_and_counted(tree):
    root, paths = tree
    _truncate(paths[BAD])
    data = _keyed(root, "error")  # the header check at load time passes
    assert len(data) == N
    data[0]  # the others decode
    with pytest.raises(BadSampleError, match=rf"{paths[BAD]}.*bad_file_policy='skip'"):
        data[BAD]
    skipping = _keyed(root, "skip")
    with pytest.warns(UserWarning, match=rf"{paths[BAD]}.*1 bad file"):
        sample = skipping[BAD]
    assert sample["pixel_values"].shape[0] == 3 and skipping.skipped == {BAD: paths[BAD]}
    with pytest.raises(ValueError, match="bad_file_policy must be 'error'.*'skip'"):
        _keyed(root, "ignore")


def _config(tmp_path, root) -> str:
    config = dict(
        backbone="config:vit-micro-test", head="light", dataset="camvid", data_root=str(root), train_split="train",
        targets=["synthetic:fog"], num_synthetic_eval_samples=2, synthetic_size=[32, 48], crop_size=[32, 32],
        scale_range=[32, 48], eval_mode="whole", criterion="dr_fim", estimator="diagonal", max_steps=6,
        warmup_phase_steps=2, estimation_batches=1, per_device_train_batch_size=2, seed=0, save_strategy="no",
        logging_steps=1, report_to="none", disable_tqdm=True, dataloader_num_workers=0, use_cpu=True,
        save_sensitivity_plot=False,
    )  # fmt: skip
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_recipe_stops_naming_the_file_saves_a_checkpoint_and_resumes_skipping(tree, tmp_path, monkeypatch):
    root, paths = tree
    config, out = _config(tmp_path, root), tmp_path / "run"

    class CorruptInPhase3(TrainerCallback):  # a file going bad on a network disk mid-run, after the selection
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                _truncate(paths[BAD])

    base = run_module.FisherTuneTrainer

    class Trainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(CorruptInPhase3())

    with monkeypatch.context() as m:
        m.setattr(run_module, "FisherTuneTrainer", Trainer)
        with pytest.raises(BadSampleError, match=rf"{paths[BAD]}.*stopped after step \d, saved as") as err:
            recipe_main("train")(["--config", config, "--output_dir", str(out)])
    step = int(str(err.value).split("stopped after step ")[1][0])
    assert step >= 3 and (out / f"checkpoint-{step}" / "trainer_state.json").is_file()  # save_strategy 'no'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe_main("train")(["--config", config, "--output_dir", str(out), "--resume_from_checkpoint", "last",
                              "--bad_file_policy", "skip"])
    assert any(paths[BAD] in str(w.message) and "Skipped" in str(w.message) for w in caught)
    assert os.path.isfile(out / "adapter_model.safetensors")
    assert yaml.safe_load((out / "config.yaml").read_text())["bad_file_policy"] == "skip"
