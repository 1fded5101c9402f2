"""Fetch PEFT's generic custom-model test matrix from the sdist of the installed peft version.

PEFT does not ship its tests in the wheel, so the matrix is taken from the source distribution on
PyPI: ``pip download --no-deps --no-binary :all: peft==<installed version>``, then
``tests/test_custom_models.py`` and every sibling module it imports (transitively, via relative
imports such as ``from .testing_common import ...``) are extracted verbatim into
``tests/peft_matrix/_peft_tests/`` (gitignored), next to an ``__init__.py`` that makes them a
package and a ``PEFT_VERSION`` stamp.

The step is idempotent: when the stamp matches the installed version and every file is there,
nothing is downloaded. A failed download raises ``RuntimeError``; the matrix is then an error,
never a skip.

Usage::

    python tests/peft_matrix/fetch_peft_tests.py            # fetch for the installed peft
    python tests/peft_matrix/fetch_peft_tests.py --force    # re-fetch
    python tests/peft_matrix/fetch_peft_tests.py --sdist /path/to/peft-X.Y.Z.tar.gz   # offline

``FISHERTUNE_PEFT_SDIST=/path/to/peft-X.Y.Z.tar.gz`` does the same as ``--sdist`` when the step
runs from ``conftest.py``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version as _dist_version
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE / "_peft_tests"
STAMP = "PEFT_VERSION"
ENTRY = "test_custom_models.py"
SDIST_ENV = "FISHERTUNE_PEFT_SDIST"

_INIT = '"""PEFT\'s test modules, extracted verbatim from the peft {version} sdist by fetch_peft_tests.py."""\n'


def installed_peft_version() -> str:
    return _dist_version("peft")


def _is_current(target: Path, version: str) -> bool:
    stamp = target / STAMP
    if not stamp.is_file() or stamp.read_text().strip() != version:
        return False
    files = [line for line in (target / "FILES").read_text().split()] if (target / "FILES").is_file() else []
    return bool(files) and all((target / name).is_file() for name in files)


def _download_sdist(version: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", f"peft=={version}", "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdists = sorted(dest.glob("peft-*.tar.gz"))
    if proc.returncode != 0 or not sdists:
        raise RuntimeError(
            f"Could not download the peft=={version} sdist needed by the PEFT conformance matrix "
            f"(tests/peft_matrix). Command: {' '.join(cmd)}\n--- pip output ---\n{proc.stdout}\n{proc.stderr}\n"
            f"Without network access, point {SDIST_ENV} at a local peft-{version}.tar.gz."
        )
    return sdists[0]


def _relative_imports(source: str) -> set[str]:
    """Sibling modules imported with ``from .name import ...`` (level 1 only: the tests are flat)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:  # from . import a, b
                names.update(alias.name for alias in node.names)
    return names


def _extract(sdist: Path, version: str, out: Path) -> list[str]:
    """Extract the entry test module and its relative-import closure from ``sdist`` into ``out``."""
    with tarfile.open(sdist) as tar:
        members = {}
        for m in tar.getmembers():
            parts = Path(m.name).parts
            # <peft-X.Y.Z>/tests/<file>.py, flat
            if m.isfile() and len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py"):
                members[parts[2]] = m
        if ENTRY not in members:
            raise RuntimeError(f"{sdist.name} has no tests/{ENTRY}; this peft version cannot run the matrix.")
        wanted, queue = [], [ENTRY]
        if "conftest.py" in members:  # fixtures/hooks PEFT's tests may rely on
            queue.append("conftest.py")
        while queue:
            name = queue.pop()
            if name in wanted:
                continue
            wanted.append(name)
            data = tar.extractfile(members[name]).read()
            (out / name).write_bytes(data)
            for mod in sorted(_relative_imports(data.decode("utf-8"))):
                if f"{mod}.py" not in members:
                    raise RuntimeError(f"tests/{name} of {sdist.name} imports .{mod}, which the sdist lacks.")
                queue.append(f"{mod}.py")
    (out / "__init__.py").write_text(_INIT.format(version=version))
    (out / "FILES").write_text("\n".join(sorted(wanted)) + "\n")
    (out / STAMP).write_text(version + "\n")
    return sorted(wanted)


@contextlib.contextmanager
def _lock(path: Path):
    """Serialize concurrent fetches (e.g. pytest-xdist workers); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch(version: str | None = None, sdist: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Make ``_peft_tests/`` hold PEFT's test matrix of ``version`` (default: installed peft); return its path."""
    version = version or installed_peft_version()
    sdist = sdist or os.environ.get(SDIST_ENV) or None
    if not force and _is_current(TARGET, version):
        return TARGET
    lock = (
        Path(tempfile.gettempdir()) / f"fishertune-peft-tests-{hashlib.sha1(str(HERE).encode()).hexdigest()[:12]}.lock"
    )
    with _lock(lock):
        if not force and _is_current(TARGET, version):  # another process fetched meanwhile
            return TARGET
        with tempfile.TemporaryDirectory(prefix="peft-sdist-") as tmp:
            tmp = Path(tmp)
            archive = Path(sdist) if sdist else _download_sdist(version, tmp)
            if f"peft-{version}" not in archive.name:
                raise RuntimeError(f"{archive} is not the sdist of the installed peft {version}.")
            staging = Path(tempfile.mkdtemp(prefix="_peft_tests.", dir=HERE))
            try:
                _extract(archive, version, staging)
                staging.chmod(0o755)
                if TARGET.exists():
                    shutil.rmtree(TARGET)
                staging.rename(TARGET)
            finally:
                if staging.exists():
                    shutil.rmtree(staging)
    return TARGET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="peft version (default: the installed one)")
    parser.add_argument("--sdist", help=f"local peft sdist instead of downloading (env: {SDIST_ENV})")
    parser.add_argument("--force", action="store_true", help="re-fetch even if present")
    args = parser.parse_args(argv)
    target = fetch(args.version, args.sdist, args.force)
    print(f"PEFT {(target / STAMP).read_text().strip()} tests in {target}: {(target / 'FILES').read_text().split()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
