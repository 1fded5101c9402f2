"""benchmarks/gpu_check.sh on CPU: its arguments, the GPU-mode command lines (through a stand-in python that records
them and pretends to see a GPU; every flag must be one the called script accepts), and a real dry run (tiny, CPU)
of two steps that must write the files a GPU run writes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from _benchmark_modules import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["paper_scale", "tuner_speed_bf16", "camvid_m2f", "crossover", "compact_crossover", "tuner_speed_fp32"]
OUTPUTS = {"paper_scale": "paper_scale_cuda.md", "tuner_speed_bf16": "tuner_speed_vitl_bf16.md", "camvid_m2f": "camvid",
           "crossover": "sparse_grad_crossover_cuda.md", "compact_crossover": "compact_grad_crossover_cuda_bf16.md",
           "tuner_speed_fp32": "tuner_speed_vitl_fp32.md"}  # fmt: skip

# Records its command line (shell-quoted, one line); "-c" snippets: the CUDA probe answers $SHIM_CUDA, anything
# else prints a line. A script
# whose command line holds $SHIM_FAIL exits 5; otherwise the file after --out (and its .json) is written.
SHIM = r"""#!/usr/bin/env bash
printf '%q ' "$@" >>"$SHIM_LOG"
echo >>"$SHIM_LOG"
if [ "$1" = -c ]; then
    case "$2" in
        *sys.exit*cuda.is_available*) [ "${SHIM_CUDA:-1}" = 1 ]; exit $? ;;
        *) echo "torch (stand-in)"; exit 0 ;;
    esac
fi
case "$*" in *"${SHIM_FAIL:-@none@}"*) echo "stand-in failure of $1" >&2; exit 5 ;; esac
prev=""
for a in "$@"; do
    if [ "$prev" = --out ]; then echo "# stand-in" >"$a"; echo "{}" >"${a%.md}.json"; fi
    prev=$a
done
"""


def _run(args, env=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if k not in ("TINY", "PYTHON")}
    full_env.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def camvid(tmp_path):
    """`--camvid-root/--camvid-backbone` of a (fake) CamVid and backbone: the GPU-mode tests never read ../shared."""
    root, backbone = tmp_path / "cv", tmp_path / "bb"
    for d, f in ((root, "splits.json"), (backbone, "config.json")):
        d.mkdir()
        (d / f).write_text("{}")
    return ["--camvid-root", str(root), "--camvid-backbone", str(backbone)]


@pytest.fixture
def shim(tmp_path):
    path = tmp_path / "python"
    path.write_text(SHIM)
    path.chmod(0o755)
    log = tmp_path / "commands.log"
    return {"PYTHON": str(path), "SHIM_LOG": str(log)}, log


def _summary_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows if r[0].strip() != "step"}


def test_help_lists_every_step():
    res = _run(["--help"])
    assert res.returncode == 0 and all(s in res.stdout for s in STEPS) and "--dry-run" in res.stdout


@pytest.mark.parametrize("args, env, message", [
    (["--bogus"], {}, "unknown argument '--bogus'"),
    (["--out-dir"], {}, "--out-dir needs a value"),
    (["--out-dir="], {}, "--out-dir needs a value"),
    (["--budget", "abc"], {}, "--budget must be whole seconds >= 60"),
    (["--budget", "30"], {}, "--budget must be whole seconds >= 60"),
    (["--only", "crossover,nope"], {}, "unknown step 'nope'"),
    (["--camvid-root"], {}, "--camvid-root needs a value"),
    (["--camvid-backbone", ""], {}, "--camvid-backbone needs a value"),
    ([], {"TINY": "yes"}, "TINY must be 0 or 1"),
])  # fmt: skip
def test_refused_arguments(args, env, message, shim, tmp_path):
    env = {**shim[0], **env}
    res = _run([*args, "--out-dir", str(tmp_path / "out")] if args[:1] != ["--out-dir"] else args, env)
    assert res.returncode == 2 and message in res.stderr and "usage:" in res.stderr
    assert not shim[1].exists()  # refused before any python ran


def test_no_gpu_is_refused_without_dry_run(shim, tmp_path):
    res = _run(["--out-dir", str(tmp_path / "out")], {**shim[0], "SHIM_CUDA": "0"})
    assert res.returncode == 3 and "sees no CUDA GPU" in res.stderr and "--dry-run" in res.stderr
    assert len(shim[1].read_text().splitlines()) == 1  # only the probe


def _script_flags(script: str) -> set[str]:
    """The option strings `script --help` lists (its real argparse)."""
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True,
                         text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return set(re.findall(r"--[a-z][a-z0-9-]*", res.stdout))


def _options(argv: list[str], switches: set[str]) -> dict:
    out, i = {}, 0
    while i < len(argv):
        if argv[i] in switches:
            out[argv[i]], i = True, i + 1
        else:
            out[argv[i]], i = argv[i + 1], i + 2
    return out


def test_gpu_mode_command_lines(shim, camvid, tmp_path):
    out = tmp_path / "gpu"
    res = _run(["--out-dir", str(out), *camvid], shim[0])
    assert res.returncode == 0, res.stderr
    calls = [shlex.split(line) for line in shim[1].read_text().splitlines() if not line.startswith("-c")]
    scripts = [c[0] for c in calls]
    assert scripts == ["benchmarks/paper_scale.py", "benchmarks/tuner_speed.py", "benchmarks/dg_camvid.py",
                       "benchmarks/grad_path_crossover.py", "benchmarks/grad_path_crossover.py",
                       "benchmarks/tuner_speed.py"]  # fmt: skip
    cv = calls.pop(2)
    scripts.pop(2)
    opts = _options(cv[1:], switches={"--quick", "--stop-on-error"})
    assert opts["--head"] == "mask2former" and opts["--quick"] and opts["--stop-on-error"]  # the quick recipe
    assert opts["--methods"] == "dr_fim_var" and opts["--seeds"] == "0" and opts["--eval-every"] == "3"
    assert opts["--root"] == camvid[1] and opts["--backbone"] == camvid[3] and opts["--out-dir"] == str(out / "camvid")
    assert set(o for o in cv if o.startswith("--")) <= _script_flags("dg_camvid.py")
    runs = [dict(zip(c[1::2], c[2::2])) for c in calls]
    assert all(r["--device"] == "cuda" for r in runs)
    assert runs[0] == {"--device": "cuda", "--out": str(out / "paper_scale_cuda.md")}  # the config's own sizes
    for r, dtype in ((runs[1], "bf16"), (runs[4], "fp32")):
        assert r["--model"] == "vit-l14" and r["--image-size"] == "512" and r["--delta-max"] == "0.05"
        assert r["--dtype"] == dtype and r["--methods"] == "full,lora,shira,fishertune" and r["--rounds"] == "1"
        assert r["--out"] == str(out / f"tuner_speed_vitl_{dtype}.md")
    for r in runs[2:4]:
        assert r["--shapes"] == "1024x1024,4096x1024,1024x4096" and r["--tokens"] == str(8 * (36 * 36 + 1))
    assert runs[2]["--dtype"] == "fp32" and runs[3]["--dtype"] == "bf16"
    assert runs[2]["--path"] == "sampled" and runs[3]["--path"] == "compact"
    for script, r in zip(scripts, runs):
        assert set(r) <= _script_flags(script.split("/")[-1]), script
    summary = (out / "summary.md").read_text()
    assert summary == res.stdout and "DRY RUN" not in summary and "torch (stand-in)" in summary
    rows = _summary_rows(summary)
    assert list(rows) == STEPS and all(r[0] == "ok" for r in rows.values())
    assert all(rows[s][2] == str(out / OUTPUTS[s]) for s in STEPS)
    assert all((out / OUTPUTS[s]).is_file() for s in STEPS if s != "camvid_m2f")  # the stand-in writes --out only
    assert sorted(p.name for p in (out / "logs").iterdir()) == sorted(f"{s}.log" for s in STEPS)


def test_a_failing_step_is_reported_and_the_rest_run(shim, camvid, tmp_path):
    res = _run(["--out-dir", str(tmp_path / "gpu"), *camvid], {**shim[0], "SHIM_FAIL": "crossover.py --path sampled"})
    rows = _summary_rows(res.stdout)
    assert res.returncode == 1 and rows["crossover"][0] == "failed (rc 5)" and "stand-in failure" in res.stderr
    assert [rows[s][0] for s in STEPS if s != "crossover"] == ["ok"] * 5


def test_camvid_step_reads_a_pack_whole_and_is_skipped_without_camvid(shim, camvid, tmp_path):
    (tmp_path / "cv" / "fishertune_pack.json").write_text("{}")  # gpu_pack.py kept every 3rd image already
    res = _run(["--out-dir", str(tmp_path / "a"), "--only", "camvid_m2f", *camvid], shim[0])
    (cv,) = [shlex.split(line) for line in shim[1].read_text().splitlines() if "dg_camvid.py" in line]
    assert res.returncode == 0 and cv[cv.index("--eval-every") + 1] == "1"
    shim[1].unlink()
    res = _run(["--out-dir", str(tmp_path / "b"), "--camvid-root", str(tmp_path / "none"), "--only",
                "camvid_m2f,crossover"], shim[0])  # fmt: skip
    rows = _summary_rows(res.stdout)
    assert res.returncode == 0 and rows["camvid_m2f"][0].startswith(f"skipped: no CamVid at {tmp_path / 'none'}")
    assert rows["crossover"][0] == "ok" and "dg_camvid.py" not in shim[1].read_text()


def test_budget_and_only(shim, camvid, tmp_path):
    # 60 s of budget: every step is capped by what is left, and fp32 (needs 120 s) is skipped, not run.
    res = _run(["--out-dir", str(tmp_path / "a"), "--budget", "60", *camvid], shim[0])
    rows = _summary_rows(res.stdout)
    assert res.returncode == 0 and rows["tuner_speed_fp32"][0].startswith("skipped")
    assert "paper_scale (timeout 55 s)" in res.stderr and "tuner_speed.py" in shim[1].read_text()
    shim[1].unlink()
    res = _run(["--out-dir", str(tmp_path / "b"), "--only", "crossover"], shim[0])
    assert res.returncode == 0 and list(_summary_rows(res.stdout)) == ["crossover"]
    assert [c.split()[0] for c in shim[1].read_text().splitlines() if not c.startswith("-c")] == [
        "benchmarks/grad_path_crossover.py"
    ]


def test_tiny_dry_run_writes_the_gpu_files(tmp_path):
    """TINY=1 (as --dry-run): the real scripts at tiny size on CPU; three steps to stay short (tuner_speed's tiny
    run has its own test, and its flags are checked against its parser above)."""
    out = tmp_path / "gpu"
    res = _run(["--out-dir", str(out), "--only", "paper_scale,crossover,compact_crossover"], {"TINY": "1"}, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["compact_grad_crossover_cuda_bf16.json", "compact_grad_crossover_cuda_bf16.md",
                     "logs/compact_crossover.log", "logs/crossover.log", "logs/paper_scale.log",
                     "paper_scale_cuda.json",
                     "paper_scale_cuda.md", "sparse_grad_crossover_cuda.json", "sparse_grad_crossover_cuda.md",
                     "summary.md"]  # fmt: skip
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary and list(_summary_rows(summary)) == ["paper_scale", "crossover", "compact_crossover"]
    assert "--model tiny" in res.stderr and "--device cpu" in res.stderr
    md = (out / "paper_scale_cuda.md").read_text()
    assert "### FisherTune, phase by phase" in md and "| full fine-tuning |" in md
