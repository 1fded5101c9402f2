"""One home for the multi-process launch of the tests (`tests/_toolkit.py`): no test writes its own port finder
or `accelerate launch` command."""

from __future__ import annotations

import socket
from pathlib import Path

from _toolkit import free_port, launch_command

TESTS = Path(__file__).resolve().parent
OWN_COPIES = ("def _free_port", "def free_port", "accelerate.commands.launch", "--main_process_port")


def copies(root: Path = TESTS) -> list[str]:
    """`file: text` of every test file besides `_toolkit.py` that spells out a port finder or a launch command."""
    return [f"{p.relative_to(root)}: {text}" for p in sorted(root.rglob("*.py"))
            if p.name not in ("_toolkit.py", "test_toolkit.py")
            for text in OWN_COPIES if text in p.read_text()]  # fmt: skip


def test_no_test_writes_its_own_launch():
    found = copies()
    assert not found, "use tests/_toolkit.py (free_port, launch_command, launch):\n" + "\n".join(found)


def test_the_search_finds_a_copy(tmp_path):
    (tmp_path / "test_x.py").write_text('cmd = ["accelerate.commands.launch", "--main_process_port", "29533"]\n')
    assert copies(tmp_path) == ["test_x.py: accelerate.commands.launch", "test_x.py: --main_process_port"]


def test_the_port_is_free_and_the_command_uses_it():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if taken
    cmd = launch_command("worker.py", "a", 2, num_processes=3)
    assert cmd[cmd.index("--num_processes") + 1] == "3" and cmd[-3:] == ["worker.py", "a", "2"]
    assert int(cmd[cmd.index("--main_process_port") + 1]) > 0
