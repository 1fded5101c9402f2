"""What test folders share: a free TCP port and the `accelerate launch` of a multi-process CPU run.

Importable as `_toolkit` from every test (tests/conftest.py puts this folder on the path).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (for a launcher's rendezvous: never a hard-coded one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(script, *args, num_processes: int = 2) -> list[str]:
    """`accelerate launch` of `script args...` in `num_processes` processes of one machine, on a free port.

    `--multi_gpu` on a machine without GPUs: torchrun starts the processes and accelerate picks gloo on the CPU
    (`--cpu` / a MULTI_CPU config would start one process and expect mpirun).
    """
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), str(script), *map(str, args)]  # fmt: skip


def launch_env(**extra: str) -> dict[str, str]:
    """The environment of a launch: one thread per process (the processes share the CPU), no warnings noise."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def launch(script, *args, timeout: float, env: dict | None = None, cwd=REPO) -> subprocess.CompletedProcess:
    """Run `launch_command(script, *args)` and assert it exits 0 (else the end of its output is the message)."""
    proc = subprocess.run(launch_command(script, *args), capture_output=True, text=True, timeout=timeout,
                          env=env or launch_env(), cwd=cwd)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc
