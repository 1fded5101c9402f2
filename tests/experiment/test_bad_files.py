"""A training image that passes the load-time header check but fails to decode mid-run (a truncated JPEG):
reported by path, with a checkpoint to resume from (bad_file_policy='error'), or skipped and counted ('skip')."""

from __future__ import annotations

import json
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


def _camvid(root, n: int = N) -> list[str]:
    """A CamVid folder split 'train' of `n` JPEGs with 11-class labels."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
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
    return KeyedTrainingDataset(
        ds, train_transforms(crop_size=(32, 32), scale_range=(32, 48)), seed=0, bad_file_policy=policy
    )


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
        targets=["synthetic:fog"], label_mapping=["vegetation=tree"],  # synthetic classes scored in CamVid's
        num_synthetic_eval_samples=2, synthetic_size=[32, 48], crop_size=[32, 32],
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
        recipe_main("train")(
            [
                "--config",
                config,
                "--output_dir",
                str(out),
                "--resume_from_checkpoint",
                "last",
                "--bad_file_policy",
                "skip",
            ]
        )
    assert any(paths[BAD] in str(w.message) and "Skipped" in str(w.message) for w in caught)
    assert os.path.isfile(out / "adapter_model.safetensors")
    assert yaml.safe_load((out / "config.yaml").read_text())["bad_file_policy"] == "skip"


class _FrontCallback(TrainerCallback):
    """Runs before the trainer's own callbacks (added at the front of the list)."""


def _with_callback(callback):
    base = run_module.FisherTuneTrainer

    class Trainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.callback_handler.callbacks.insert(0, callback)  # before EstimationCallback's on_step_end

    return Trainer


def test_bad_file_in_phase2_saves_step_t1_and_resume_reruns_estimation(tree, tmp_path, monkeypatch):
    """A file going bad while phase 2 reads its batches (end of step T1 = 2): the error names the file and a
    checkpoint of step T1 marked 'estimation pending'; resumed (the files replaced), the run estimates again and
    ends bitwise where an uninterrupted run ends."""
    from .test_recipe_resume import _adapter, _assert_bitwise

    root, paths = tree
    config = _config(tmp_path, root)
    recipe_main("train")(["--config", config, "--output_dir", str(tmp_path / "full")])
    originals = {p: open(p, "rb").read() for p in paths}

    class CorruptAtT1(_FrontCallback):  # every image, so phase 2's first batch meets one whatever the order
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                for p in paths:
                    _truncate(p)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(run_module, "FisherTuneTrainer", _with_callback(CorruptAtT1()))
        with pytest.raises(BadSampleError, match=r"Cannot read training file .*phase 2.*step 2.*saved as") as err:
            recipe_main("train")(["--config", config, "--output_dir", str(out)])
    assert any(p in str(err.value) for p in paths)
    ckpt = out / "checkpoint-2"
    assert str(ckpt) in str(err.value)
    state = json.loads((ckpt / "fishertune_trainer_state.json").read_text())
    assert state["estimation_pending"] and not state["in_tuning"] and not state["selected"]
    assert not (out / "adapter_model.safetensors").exists()
    for p, data in originals.items():  # the user replaces the files
        with open(p, "wb") as f:
            f.write(data)
    recipe_main("train")(["--config", config, "--output_dir", str(out), "--resume_from_checkpoint", str(ckpt)])
    assert (out / "fishertune_selection.json").is_file()  # phase 2 ran in the resumed run
    _assert_bitwise(_adapter(out), _adapter(tmp_path / "full"))


def test_skipped_files_are_one_total_over_loader_workers(tree, tmp_path):
    """With 'skip' and 2 loader workers, the trainer logs and saves one count of replaced samples (each worker
    counted its own, unseen by the main process)."""
    root, paths = tree
    _truncate(paths[BAD])
    out = tmp_path / "run"
    recipe_main("train")(
        [
            "--config",
            _config(tmp_path, root),
            "--output_dir",
            str(out),
            "--bad_file_policy",
            "skip",
            "--dataloader_num_workers",
            "2",
            "--save_strategy",
            "steps",
            "--save_steps",
            "6",
        ]
    )
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    logged = [e["bad_file_skips"] for e in state["log_history"] if "bad_file_skips" in e]
    ours = json.loads((out / "checkpoint-6" / "fishertune_trainer_state.json").read_text())
    # 6 steps of 2 of 6 images: 2 epochs, each reads the bad file once (phase 2 may read it too)
    assert logged and logged[-1] >= 2 and ours["bad_file_skips"] == logged[-1]
    assert logged == sorted(logged)
