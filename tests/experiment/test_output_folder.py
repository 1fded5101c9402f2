"""One run, one folder, as a user meets it: `recipes/train.py` run again into a used folder (refused, or with
--overwrite_output_dir only the new run's files remain and evaluate.py reproduces its metrics.json), a folder
holding a user's own files, a read-only folder, a full disk, and load_output on a folder whose files were
changed, added or damaged after the run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

import fishertune.experiment.run as run_module
from fishertune.experiment import load_output
from fishertune.experiment.manifest import OutputFolderError
from fishertune.experiment.output_dir import SAFETY_FACTOR, check_free_space, required_bytes

from ._helpers import RECIPES, recipe_main
from .test_recipe_resume import TINY

#: The tiny recipe of test_recipe_resume without checkpoints (as the demo): a rerun into its folder is not caught
#: by the checkpoint rule of experiment/resume.py.
NO_CKPT = ("--save_strategy", "no")


def _config(folder) -> str:
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(TINY, f)
    return path


def _recipe(name: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(RECIPES, f"{name}.py"), *argv], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _train(config: str, out, *extra: str) -> subprocess.CompletedProcess:
    return _recipe("train", "--config", config, "--output_dir", str(out), *extra)


def _snapshot(folder) -> dict[str, str]:
    """Every file under `folder` with the SHA-256 of its bytes."""
    found = {}
    for root, _, names in os.walk(folder):
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                found[os.path.relpath(os.path.join(root, n), folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """An adapter run of the tiny recipe, finished: (config path, its output folder). Tests work on copies."""
    tmp = tmp_path_factory.mktemp("first_run")
    config = _config(tmp)
    proc = _train(config, tmp / "run", *NO_CKPT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return config, tmp / "run"


@pytest.fixture
def used(first_run, tmp_path):
    config, run = first_run
    shutil.copytree(run, tmp_path / "run")
    return config, tmp_path / "run"


def test_rerun_is_refused_then_overwrite_leaves_only_the_new_run(used, tmp_path):
    config, out = used
    before = _snapshot(out)
    proc = _train(config, out, *NO_CKPT, "--seed", "7")
    assert proc.returncode != 0
    assert str(out) in proc.stderr and "--overwrite_output_dir true" in proc.stderr, proc.stderr[-2000:]
    assert _snapshot(out) == before  # nothing written, nothing deleted

    proc = _train(config, out, "--method", "full", "--overwrite_output_dir", "true", "--save_steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "fishertune_run.json").read_text())
    files = {f for f in _snapshot(out) if not f.startswith("checkpoint-")}
    assert files == set(manifest["files"]) | {"fishertune_run.json"}
    assert {"config.json", "model.safetensors", "metrics.json", "config.yaml"} <= files
    assert not {"adapter_config.json", "adapter_model.safetensors"} & files and not (out / "base_model").exists()
    assert sorted(os.listdir(out / "checkpoint-6")) and manifest["method"] == "full"
    # evaluate.py on the folder scores the new run's model: exactly its own metrics.json
    proc = _recipe("evaluate", "--model", str(out), "--output_file", str(tmp_path / "again.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads((out / "metrics.json").read_text())


def test_unrelated_files_are_refused_and_untouched(first_run, tmp_path):
    config, _ = first_run
    (tmp_path / "README.md").write_text("# my project\n")
    for extra in ((), ("--overwrite_output_dir", "true")):
        proc = _train(config, tmp_path, *NO_CKPT, *extra)
        assert proc.returncode != 0 and "README.md" in proc.stderr and str(tmp_path) in proc.stderr, proc.stderr[-2000:]
        assert os.listdir(tmp_path) == ["README.md"] and (tmp_path / "README.md").read_text() == "# my project\n"


def test_stray_missing_or_modified_files_fail_load_output(used):
    _, out = used
    (out / "runs" / "Dec07_host").mkdir(parents=True)  # report_to tensorboard's logs, written after the manifest
    (out / "runs" / "Dec07_host" / "events.out.tfevents.1").write_bytes(b"log")
    load_output(str(out))  # as written: loads
    shutil.copy(out / "base_model" / "model.safetensors", out / "model.safetensors")  # another model beside
    (out / "config.json").write_text("{}")
    with pytest.raises(OutputFolderError, match=r"stray.*config\.json, model\.safetensors"):
        load_output(str(out))
    os.remove(out / "model.safetensors")
    os.remove(out / "config.json")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["mean"]["mIoU"] = 99.0
    (out / "metrics.json").write_text(json.dumps(metrics))
    os.remove(out / "preprocessor_config.json")
    with pytest.raises(OutputFolderError, match=r"missing: preprocessor_config\.json.*modified.*: metrics\.json"):
        load_output(str(out))


def test_damaged_config_or_manifest_is_named(used):
    config, out = used
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text[: len(text) // 3])  # with a manifest: config.yaml is not the run's
    with pytest.raises(OutputFolderError, match=r"modified since the run wrote it: config\.yaml"):
        load_output(str(out))
    # a folder without a manifest, as versions before it wrote them: loads with a warning, damage is named
    os.remove(out / "fishertune_run.json")
    text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("run_id:"))
    (out / "config.yaml").write_text(text)
    with pytest.warns(UserWarning, match="no fishertune_run.json"):
        load_output(str(out))
    (out / "config.yaml").write_text(text[: len(text) // 3])  # truncated: today an empty table and rc 0
    proc = _recipe("evaluate", "--model", str(out))
    assert proc.returncode != 0 and f"{out / 'config.yaml'} is damaged" in proc.stderr, proc.stderr[-2000:]
    for damaged in ("", "just a string\n", "a: [1,\n"):
        (out / "config.yaml").write_text(damaged)
        with pytest.raises(ValueError, match=f"{out / 'config.yaml'} is damaged"):
            load_output(str(out))
    (out / "config.yaml").write_text(text)
    (out / "fishertune_run.json").write_text('{"run_id": "x", "files": ')
    with pytest.raises(OutputFolderError, match=f"{out / 'fishertune_run.json'} is damaged"):
        load_output(str(out))
    proc = _train(config, out, *NO_CKPT, "--overwrite_output_dir", "true")
    assert proc.returncode != 0 and f"{out / 'fishertune_run.json'} is damaged" in proc.stderr, proc.stderr[-2000:]


def test_a_run_that_did_not_finish_writing_is_refused(used):
    _, out = used
    os.remove(out / "fishertune_run.json")  # the manifest comes last: a kill before it leaves none
    with pytest.raises(OutputFolderError, match="stopped before it finished"):
        load_output(str(out))


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    # root writes through file modes: a read-only filesystem instead, where this machine allows mounting one
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"running as root, and no read-only filesystem can be mounted: {proc.stderr!r}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_folder_fails_before_training(first_run, read_only_dir):
    config, _ = first_run
    proc = _train(config, read_only_dir, "--method", "full")
    assert proc.returncode != 0 and f"--output_dir {read_only_dir} is not writable" in proc.stderr, proc.stderr[-2000:]
    assert "'loss'" not in proc.stdout + proc.stderr  # no training step was logged (logging_steps 1)
    assert os.listdir(read_only_dir) == []


def test_required_bytes_by_hand():
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.BatchNorm1d(10))  # 110 + 20 fp32, 21 buffers
    assert 130 * 4 + 20 * 4 + 8 == sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert required_bytes(model, checkpoints=False) == int(SAFETY_FACTOR * 608 * 2)
    assert required_bytes(model, checkpoints=True) == int(SAFETY_FACTOR * 608 * 5)


def test_a_full_disk_stops_the_run_before_training(first_run, tmp_path, monkeypatch):
    config, _ = first_run
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 40, 1 << 40, 1000))
    check_free_space(str(tmp_path), need=1000)
    check_free_space(str(tmp_path), need=1500, freed=500)  # what --overwrite_output_dir deletes counts as free
    with pytest.raises(OSError, match=re.escape(f"--output_dir {tmp_path} has 0.00 GiB free")):
        check_free_space(str(tmp_path), need=1001)
    monkeypatch.setattr(run_module, "FisherTuneTrainer", lambda *a, **k: pytest.fail("trained on a full disk"))
    with pytest.raises(OSError, match=re.escape(f"--output_dir {tmp_path / 'run'} has 0.00 GiB free")):
        recipe_main("train")(["--config", config, "--output_dir", str(tmp_path / "run"), *NO_CKPT])
    assert os.listdir(tmp_path / "run") == []
