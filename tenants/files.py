"""Durable file replacement: after a crash the target holds the old content or the new, whole.

The sequence POSIX needs: write a temporary file next to the target, fsync it, rename it over
the target, fsync the directory (a rename is the directory's data). Without the first fsync a
crash can leave the new name on empty or partial content; without the last, the old file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from tenants.group_commit import Batcher


def fsync_file(path: Path) -> None:
    """Flush a file's data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (creations, renames, deletions in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSync:
    """fsync of one directory, shared by concurrent callers: `sync` returns once an fsync of
    the directory that began after the call has finished, so it covers every change the caller
    made in the directory before calling; callers that arrive while one runs share the next
    (for folders many threads add files to at once: one fsync for many). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._batcher: Batcher[None, None] = Batcher(self._fsync)

    def sync(self) -> None:
        """Raises OSError (the fsync that was to cover this call failed)."""
        self._batcher.run(None)

    def _fsync(self, callers: list[None]) -> list[BaseException | None]:
        fsync_dir(self.path)
        return [None] * len(callers)


def create_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` as the new file `path` (one that may be half-written after a crash: the
    caller's records say so until this returns; any file there is replaced), durably: the file's
    fsync, then its folder's. Unlike `write_durably`, no temporary name and no rename: one
    journal commit of the file system for the file and its directory entry, not two. On failure
    the file may be left, partial."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL  # a new file: `mode` applies
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        path.unlink()
        fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def _temp_path(final: Path) -> Path:
    """A fresh hidden name next to `final` (same directory, so the rename stays in one file
    system; hidden, so directory listings such as the local replica's skip it)."""
    return final.with_name(f".{final.name}.tmp{uuid.uuid4().hex[:8]}")


def replace_durably(tmp: Path, final: Path) -> None:
    """Make the complete file `tmp` durably the content of `final` (both in one directory)."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` durably with `data`, as a file with permission bits `mode` (less the
    umask). The directory must exist. On failure `path` is unchanged and no temporary file is
    left (FileNotFoundError if the directory is gone)."""
    tmp = _temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # a new file: `mode` applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
