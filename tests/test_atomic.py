"""`fishertune.atomic`: a write that fails midway leaves the old file or folder exactly as it was."""

from __future__ import annotations

import json
import os

import pytest

from fishertune import atomic


def test_write_json_replaces_whole_and_refuses_nan(tmp_path):
    path = tmp_path / "m.json"
    atomic.write_json(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(ValueError):
        atomic.write_json(str(path), {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["m.json"]  # no temporary left behind


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(str(path)) as f:
            f.write("new, half written")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_write_with_a_path_writer(tmp_path):
    path = tmp_path / "w.bin"
    atomic.write_with(str(path), lambda p: open(p, "wb").write(b"\x00\x01"))
    assert path.read_bytes() == b"\x00\x01"
    import hashlib

    assert atomic.sha256_file(str(path)) == hashlib.sha256(b"\x00\x01").hexdigest()


def test_staged_dir_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic.staged_dir(str(target)) as tmp:
        assert atomic.is_temporary(tmp)
        assert not os.listdir(tmp)
        open(os.path.join(tmp, "new.txt"), "w").write("new")
        assert (target / "old.txt").exists()  # the old folder stays until the new one is complete
    assert sorted(os.listdir(target)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_staged_dir_failure_leaves_nothing_new(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        with atomic.staged_dir(str(target)) as tmp:
            open(os.path.join(tmp, "part.txt"), "w").write("x")
            raise KeyboardInterrupt
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_are_found_and_removed(tmp_path):
    (tmp_path / f"{atomic.TMP_PREFIX}abc-x.json").write_text("{")
    (tmp_path / f"{atomic.TMP_PREFIX}def-checkpoint-3").mkdir()
    (tmp_path / "keep.json").write_text("{}")
    removed = atomic.remove_stale_temporaries(str(tmp_path))
    assert len(removed) == 2
    assert os.listdir(tmp_path) == ["keep.json"]


def test_move_into_place_replaces_a_folder_whole_and_a_file(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "old.bin").write_bytes(b"old")  # not in the new folder: must not survive
    stage = tmp_path / f"{atomic.TMP_PREFIX}stage"
    (stage / "base").mkdir(parents=True)
    (stage / "base" / "new.bin").write_bytes(b"new")
    (stage / "m.json").write_text("{}")
    (tmp_path / "m.json").write_text('{"old": 1}')
    atomic.move_into_place(str(stage / "base"), str(tmp_path / "base"))
    atomic.move_into_place(str(stage / "m.json"), str(tmp_path / "m.json"))
    assert sorted(os.listdir(tmp_path / "base")) == ["new.bin"] and (tmp_path / "m.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == sorted(["base", "m.json", stage.name]) and not os.listdir(stage)


def test_stale_temporaries_of_one_kind_only(tmp_path):
    (tmp_path / f"{atomic.TMP_PREFIX}abc123-checkpoint-3").mkdir()
    (tmp_path / f"{atomic.TMP_PREFIX}def456-outputs").mkdir()
    removed = atomic.remove_stale_temporaries(str(tmp_path), of="checkpoint-*")
    assert [os.path.basename(p) for p in removed] == [f"{atomic.TMP_PREFIX}abc123-checkpoint-3"]
    assert os.listdir(tmp_path) == [f"{atomic.TMP_PREFIX}def456-outputs"]
