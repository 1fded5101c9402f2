"""The recipes' command line (--help, --config=path), progress bars, and evaluation results reaching the trackers."""

from __future__ import annotations

import dataclasses
import os

import pytest

from fishertune.experiment import ExperimentArguments, parse_experiment_args
from fishertune.training import FisherTuneTrainingArguments

from ._helpers import CONFIGS_DIR, quick_demo_argv, recipe_main


def test_train_help_starts_with_the_description_and_shows_the_library_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe_main("train")(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("Train FisherTune (or an ablation baseline), evaluate per target domain")
    options = text[text.index("options:") :]
    assert options.split("\n")[2].lstrip().startswith("--config CONFIG")  # right after --help
    assert "demo, gtav_dinov2_large_mask2former" in " ".join(options.split())
    # the library's defaults, not the demo YAML's (max_steps 300, crop 64 96, output outputs/demo)
    library = ExperimentArguments()
    assert f"(default: {library.crop_size})" in " ".join(options.split())
    flat = " ".join(options.split())
    assert "outputs/demo" not in flat and "(default: 300)" not in flat


def test_config_accepts_the_equals_form(tmp_path):
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text("max_steps: 7\nbackbone: config:vit-micro-test\n")
    exp, targs, path = parse_experiment_args([f"--config={yaml_path}", "--output_dir", str(tmp_path)], CONFIGS_DIR)
    assert path == str(yaml_path) and targs.max_steps == 7 and exp.backbone == "config:vit-micro-test"
    exp2, targs2, path2 = parse_experiment_args(
        ["--config", str(yaml_path), "--output_dir", str(tmp_path)], CONFIGS_DIR
    )
    assert (exp2, targs2.max_steps, path2) == (exp, 7, path)


def test_trainer_progress_bar_is_on_in_every_recipe_but_the_demo():
    for name in sorted(f[:-5] for f in os.listdir(CONFIGS_DIR) if f.endswith(".yaml")):
        argv = ["--config", name, "--output_dir", "/tmp/unused"]
        if name not in ("demo",) and not name.startswith(("ablation", "camvid")):
            argv += ["--data_root", "/d", "--target_roots", *[f"{d}=/d" for d in
                     ("cityscapes", "bdd100k", "mapillary", "acdc")]]  # fmt: skip
        try:
            _, targs, _ = parse_experiment_args(argv, CONFIGS_DIR)
        except ValueError as err:  # a config needing a data folder this test does not give
            pytest.fail(f"{name}: {err}")
        assert targs.disable_tqdm is (name == "demo"), name


def test_evaluation_shows_a_bar_of_images_per_target(capfd):
    from transformers import Dinov2Config

    from fishertune.data import SYNTHETIC_CLASSES, eval_transforms, make_synthetic_dataset
    from fishertune.evaluation import evaluate_model
    from fishertune.experiment.arguments import BUILTIN_BACKBONES
    from fishertune.models import build_model

    model = build_model("light", Dinov2Config(**BUILTIN_BACKBONES["vit-micro-test"]), num_labels=len(SYNTHETIC_CLASSES))
    ds = {
        "synthetic:fog": make_synthetic_dataset(3, domain="fog", size=(32, 32), seed=1).with_transform(
            eval_transforms()
        )
    }
    evaluate_model(model, ds, mode="whole", num_classes=len(SYNTHETIC_CLASSES), disable_tqdm=False)
    err = capfd.readouterr().err
    assert "Evaluating synthetic:fog:   0%| " in err and "0/3 [" in err  # total: images of the target
    evaluate_model(model, ds, mode="whole", num_classes=len(SYNTHETIC_CLASSES), disable_tqdm=True)
    assert "Evaluating" not in capfd.readouterr().err


def test_per_target_miou_reaches_the_trackers(tmp_path, monkeypatch):
    """Every `report_to` integration is a TrainerCallback fed by on_log: a recording callback sees what they see."""
    import json

    from transformers import TrainerCallback

    import fishertune.experiment.run as run_module

    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append((state.global_step, dict(logs)))

    class RecordingTrainer(run_module.FisherTuneTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Recorder())

    monkeypatch.setattr(run_module, "FisherTuneTrainer", RecordingTrainer)
    out = tmp_path / "run"
    micro = ["--backbone", "config:vit-micro-test", "--targets", "synthetic:fog", "synthetic:dark", "--val_split", ""]
    recipe_main("train")(quick_demo_argv(out, *micro))
    metrics = json.loads((out / "metrics.json").read_text())
    step, logs = seen[-1]
    assert step == 6  # the quick run's last step
    assert logs == {
        f"eval_{d}/{k}": metrics[d][k]
        for d in ("synthetic:fog", "synthetic:dark", "mean")
        for k in ("mIoU", "aAcc", "mAcc")
    }


def test_tensorboard_writes_the_per_target_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    micro = ["--backbone", "config:vit-micro-test", "--targets", "synthetic:fog", "--val_split", ""]
    # transformers 5 has no logging_dir argument: the events go to <output_dir>/runs/<date_host> (or to
    # $TENSORBOARD_LOGGING_DIR), which is where a user looks.
    recipe_main("train")(quick_demo_argv(out, *micro, "--report_to", "tensorboard"))
    tags = set()
    for root, _, files in os.walk(out / "runs"):
        if any(f.startswith("events.") for f in files):
            acc = EventAccumulator(root)
            acc.Reload()
            tags |= set(acc.Tags()["scalars"])
    assert {"eval/synthetic:fog/mIoU", "eval/mean/mIoU"} <= tags  # the evaluation section, not train/
    assert not [t for t in tags if t.startswith("train/eval")] and "train/loss" in tags


def test_library_defaults_are_not_the_demo_config():
    # `python recipes/train.py` with no flags is the demo; the dataclasses keep the library's own defaults.
    exp = ExperimentArguments()
    assert exp.crop_size == [512, 512] and exp.eval_mode == "slide"
    assert dataclasses.fields(FisherTuneTrainingArguments)
