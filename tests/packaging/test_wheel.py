"""The package as pip installs it: build the wheel and the sdist, install the wheel outside the checkout, run a job.

Offline and fast: the wheel is built with the running venv's setuptools (`--no-build-isolation`) and
installed with `--no-deps` into a fresh venv that sees the running venv's site-packages through a
`.pth` file (torch, transformers, ... are not downloaded again). Only the running venv's *directory*
is added: `.pth` files inside it, among them the editable install's pointer to `src/`, are not read,
so `fishertune` can come only from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: What a source checkout contributes to a build (a fresh clone has exactly these, plus tests and recipes).
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "src")
#: Files the library reads at run time, not imports: they must be inside the wheel.
RUNTIME_DATA = ("fishertune/experiment/model_card_template.md", "fishertune/evaluation/metric/metric.py")

JOB = textwrap.dedent(
    """
    import json, os, sys
    import fishertune
    from fishertune.experiment import ExperimentArguments, run_experiment
    from fishertune.training import FisherTuneTrainingArguments

    print("FISHERTUNE_FILE", fishertune.__file__)
    out = sys.argv[1]
    exp = ExperimentArguments(backbone="config:vit-micro-test", targets=["synthetic:fog"], synthetic_size=[32, 48],
                              crop_size=[32, 48], scale_range=[32, 48], eval_mode="whole", quick=True)
    targs = FisherTuneTrainingArguments(output_dir=out, criterion="dr_fim", per_device_train_batch_size=4,
                                        report_to="none", disable_tqdm=True, use_cpu=True, save_strategy="no",
                                        dataloader_num_workers=0)
    result = run_experiment(exp, targs, verbose=False)
    print("RESULT_FILES", json.dumps(result["files"]))
    """
)


def _copy_build_inputs(dest: Path) -> Path:
    """The checkout's build inputs as they are (links stay links: a link is what broke the card before)."""
    src = dest / "src_tree"
    src.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(
                path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
            )
        else:
            shutil.copy2(path, src / name)
    return src


def _run(cmd, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`(wheel path, sdist path)` built from a copy of the checkout's build inputs."""
    work = tmp_path_factory.mktemp("build")
    src = _copy_build_inputs(work)
    dist = work / "dist"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        cwd=work,
    )
    _run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"], cwd=src)
    (wheel,) = dist.glob("fishertune-*.whl")
    (sdist,) = dist.glob("fishertune-*.tar.gz")
    return wheel, sdist


def test_wheel_and_sdist_hold_the_runtime_data_and_the_license(built):
    wheel, sdist = built
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(RUNTIME_DATA) <= names
    assert "fishertune-0.1.0.dist-info/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read("fishertune-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
    for name in RUNTIME_DATA:
        assert members[f"src/{name}"].isfile(), name  # a real file, not a link into the checkout
    assert members["LICENSE"].isfile()


def test_installed_wheel_runs_a_job_outside_the_checkout(built, tmp_path):
    wheel, _ = built
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        cwd=tmp_path,
    )
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    # The running venv's packages (torch, transformers, ...) as a plain directory: its own .pth files are not read.
    Path(site.stdout.strip(), "zz_running_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    job_dir = tmp_path / "elsewhere"
    job_dir.mkdir()
    (job_dir / "job.py").write_text(JOB)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = _run([str(python), "job.py", str(job_dir / "out")], cwd=job_dir, env=env)

    (installed,) = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("FISHERTUNE_FILE")]
    assert Path(installed).resolve().is_relative_to(venv.resolve()), installed  # the wheel, not the checkout
    out = job_dir / "out"
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.json", "README.md"} <= set(os.listdir(out))
    card = (out / "README.md").read_text()
    assert "synthetic:fog" in card and "@inproceedings{zhao2025fishertune" in card
