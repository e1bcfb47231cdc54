"""Atomic file writes: a reader (or a run killed midway) sees the old file or the new one, never half of one. And the
two primitives of append-only files that a run resumes (instruction records, screening tables): append durably, and
cut a torn last line off after a kill."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path` (rename is atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would have given it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def append_durably(fd: int, data: bytes) -> None:
    """Write all of `data` to the file open (O_APPEND) as `fd`, then fsync: once this returns, the lines are on disk."""
    view = memoryview(data)
    while view:  # os.write may write less than asked (rare on regular files); finish the rest
        view = view[os.write(fd, view):]
    os.fsync(fd)


def truncate_file(path: str | os.PathLike, size: int) -> None:
    """Cut `path` to its first `size` bytes, durably (a torn last line left by a run killed mid-write)."""
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())
