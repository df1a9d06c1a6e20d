"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of either.

Every write goes to a hidden temp name in the target's own folder (a rename is atomic only within
one filesystem), is flushed with fsync, renamed over the target, and the folder is fsynced so the
rename itself survives a crash. A failed write leaves no temp file behind and the old target as it
was. This is the project's only implementation of that dance: use it, do not copy it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Callable, Iterator

# Files are shared artifacts (reports, schemas, configs) that other users and processes read;
# mkstemp's 0600 would hide them.
FILE_MODE = 0o644


def _temp_name(target: Path, kind: str = "tmp") -> Path:
    return target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO[Any]]:
    """A file handle whose content replaces `path` when the block ends without an exception.

    For writers that want a handle (`pq.write_table(table, handle)`, `json.dump(value, handle)`).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_name(path)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    try:
        with open(temp, mode, encoding=encoding) as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replaces `path` with `data` atomically; returns the path."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Replaces `path` with `text` (UTF-8) atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any, *, default: Callable[[Any], Any] | None = None,
               allow_nan: bool = True) -> Path:
    """Replaces `path` with `value` as indented, key-sorted JSON and a final newline."""
    text = json.dumps(value, indent=2, sort_keys=True, default=default, allow_nan=allow_nan) + "\n"
    return write_text(path, text)


def fsync_directory(directory: str | Path) -> None:
    """Makes a rename inside `directory` durable (the rename itself is in the directory's data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """Flushes every file and folder under `root`, so a folder renamed into place survives a crash."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(directory)


def replace_directory(source: str | Path, target: str | Path) -> Path:
    """Moves the finished folder `source` to `target` (same filesystem); a previous `target` is
    removed only after the move succeeded, so `target` is at every moment the old folder or the new.
    """
    source, target = Path(source), Path(target)
    old = None
    if target.exists():
        old = _temp_name(target, "old")
        os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    fsync_directory(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """A fresh temp folder beside `final`; it becomes `final` (replacing any previous one) only when
    the block succeeds, and is removed otherwise."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_name(final)
    temp.mkdir()
    try:
        yield temp
        replace_directory(temp, final)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
