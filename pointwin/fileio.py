"""Atomic file writes: a crash or an error never leaves half a file under the final name.

Every writer in pointwin (infos, checkpoints, predictions, ONNX graphs, pictures) goes through
:func:`atomic_write`: it writes to a temporary file in the target folder, flushes it to disk, then
renames it over the target (a rename within one folder is atomic on POSIX and Windows).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``, else delete it.

    For writers that want a file name rather than a file object (``savefig``, ONNX ``save``). The
    temporary name keeps the suffix of ``path`` so that writers choosing a format by suffix still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file owner-only (0600); give it the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_UMASK)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success fsync and rename it over ``path``."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write mode must be a write mode ('w', 'wb'), got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent)
    return Path(path)


# atomic_path's temporary names: "." + stem + "." + mkstemp's 8 random characters + ".tmp" + suffix
_TEMP_RE = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]*)?$")


def stale_temporaries(folder: str | os.PathLike, final_name: re.Pattern[str] | None = None) -> list[Path]:
    """pointwin's own temporary files (see :func:`atomic_path`) directly inside ``folder``.

    A temporary that still exists after its writer ended was left by a killed process. ``final_name``
    restricts the list to temporaries whose final file name (stem + suffix) it matches in full.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _TEMP_RE.match(p.name)
        if m is None or not p.is_file():
            continue
        if final_name is not None and not final_name.fullmatch(m.group("stem") + (m.group("suffix") or "")):
            continue
        found.append(p)
    return sorted(found)


def remove_stale_temporaries(folder: str | os.PathLike, final_name: re.Pattern[str] | None = None) -> list[Path]:
    """Delete :func:`stale_temporaries` of ``folder``; returns what was removed. Call it only when no other
    process writes into ``folder`` (a run's work dir at the start of the run)."""
    removed = []
    for p in stale_temporaries(folder, final_name):
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        removed.append(p)
    return removed
