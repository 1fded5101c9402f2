"""Only `training/trainer.py` touches the trainer's private attributes: the callbacks read the run's
`FisherTuneState` and `(args, state, control)`, phase 2 and the bad-file agreement are functions that return what
the trainer acts on, and the checkpoint save gets what it needs as arguments."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "fishertune"
OWNER = SRC / "training" / "trainer.py"
PRIVATE = re.compile(r"\btrainer\._\w+")


def private_uses(root: Path = SRC) -> list[str]:
    """`file:line: text` of every `trainer._<name>` outside trainer.py (`self.trainer._x` included)."""
    return [
        f"{path.relative_to(root.parent)}:{number}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        if path != OWNER
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE.search(line)
    ]


def test_no_module_but_the_trainer_touches_its_private_attributes():
    found = private_uses()
    assert not found, "private trainer attributes used outside training/trainer.py:\n" + "\n".join(found)


def test_the_search_finds_such_a_use(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "helper.py").write_text("def f(trainer):\n    trainer._save_checkpoint(None, None)\n")
    (tmp_path / "pkg" / "ok.py").write_text("def g(trainer):\n    return trainer.state, trainer.args\n")
    assert private_uses(tmp_path / "pkg") == ["pkg/helper.py:2: trainer._save_checkpoint(None, None)"]
