"""Writing files so that a crash leaves either the old file or the new one, never a part of either.

Every file the package writes goes to a temporary name in the same folder, is flushed and fsynced, and is
renamed into place (`os.replace` is atomic on POSIX and Windows within one filesystem); the folder is fsynced
after the rename so that the new name survives a power loss. A temporary name starts with `.fishertune-tmp-`,
so readers that list a folder can tell (and `remove_stale_temporaries` can delete) what a killed writer left.

A leaf module (standard library only), so every layer may use it: see tests/test_import_layers.py.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any, Callable

#: The prefix of every temporary file or folder the package writes before renaming it into place.
TMP_PREFIX = ".fishertune-tmp-"


def _tmp_name(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")


def fsync_dir(folder: str) -> None:
    """Make a rename or a new file in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def staged_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; when the block ends without error, fsync it and rename it to `path`.

    For writers that take a path (`safetensors.torch.save_file`, `PIL.Image.save`, `plt.savefig`): on an
    exception the temporary file is removed and `path` is left as it was.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[Any]:
    """`open(path, mode)` that replaces `path` only once the block has completed (text or binary write modes)."""
    if not any(m in mode for m in "wx"):
        raise ValueError(f"atomic_open writes a whole file: mode must be 'w' or 'wb', not {mode!r}.")
    with staged_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str, text: str) -> None:
    """Replace `path` by `text` (UTF-8) atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, obj: Any, **dump_kwargs) -> None:
    """Replace `path` by `obj` as JSON atomically (`indent=2` unless given). NaN/inf are refused (not JSON)."""
    dump_kwargs.setdefault("indent", 2)
    dump_kwargs.setdefault("allow_nan", False)
    write_text(path, json.dumps(obj, **dump_kwargs) + "\n")


def write_with(path: str, writer: Callable[[str], Any]) -> None:
    """Call `writer(tmp_path)` and rename the result to `path` (for writers that take a path)."""
    with staged_path(path) as tmp:
        writer(tmp)


@contextlib.contextmanager
def staged_dir(path: str) -> Iterator[str]:
    """Yield an empty temporary folder next to `path`; on success it replaces `path` whole.

    The files inside are fsynced before the rename. Where `path` exists it is first renamed aside and removed
    only after the new folder is in place, so at every instant `path` is the old folder or the new one (a crash
    between the two renames leaves `path` absent and the old folder under a temporary name, never a mix).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = _tmp_name(path)
    os.makedirs(tmp)
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                _fsync_file(os.path.join(root, name))
            fsync_dir(root)
        old = None
        if os.path.lexists(path):
            old = _tmp_name(path)
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_temporary(name: str) -> bool:
    """Whether a file or folder name is one of this module's temporaries (a killed writer's leftover)."""
    return os.path.basename(name.rstrip("/")).startswith(TMP_PREFIX)


def remove_stale_temporaries(folder: str, of: str = "*") -> list[str]:
    """Delete the temporaries directly under `folder` (left by a killed writer); return their paths.

    `of` is a glob on the final name the temporary stood for (e.g. `"checkpoint-*"`), so that a writer cleans
    up after its own kind only and leaves another writer's staging folder in the same folder alone.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        if is_temporary(name) and fnmatch.fnmatchcase(name[len(TMP_PREFIX) :].partition("-")[2], of):
            full = os.path.join(folder, name)
            shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)
            removed.append(full)
    return removed


def move_into_place(src: str, dst: str) -> None:
    """Rename a finished file or folder `src` (written beside `dst`, same filesystem) to `dst`, fsynced.

    For writers that fill a folder themselves (`save_pretrained`): write into a temporary folder, then move each
    entry in. An existing `dst` folder is renamed aside first and removed after, as in `staged_dir`.
    """
    if os.path.isdir(src):
        for root, _, files in os.walk(src):
            for name in files:
                _fsync_file(os.path.join(root, name))
            fsync_dir(root)
    else:
        _fsync_file(src)
    old = None
    if os.path.isdir(dst) and not os.path.islink(dst):
        old = _tmp_name(dst)
        os.replace(dst, old)
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
