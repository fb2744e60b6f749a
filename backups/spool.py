"""Where shipping keeps bytes while they wait: segments being built and snapshot copies stay in
memory while small, and go to temporary files under the data dir once large (not /tmp, which may
be a tmpfs: memory again). So the shipper's memory is bounded whatever one commit's or one
tenant's size (DESIGN 11).

Temporary files are anonymous (unlinked while open): a crash leaves nothing behind, except the
named copy the backup API writes while it runs, which `clear` removes at the next start.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import apsw

PIECE = 1 << 20  # bytes read, compressed or copied at a time
_BACKUP_STEP = 1024  # pages per backup step
_COPY_CACHE_KIB = 2048  # page cache of the backup's destination connection


class Spool:
    """Temporary storage for shipping under `directory`. At most `memory_bytes` of snapshot
    copies are held in memory at once (the rest go to files), and each spooled file stays in
    memory up to `memory_bytes`. Thread-safe."""

    def __init__(self, directory: Path, memory_bytes: int) -> None:
        self.directory = directory
        self.memory_bytes = memory_bytes
        self._lock = threading.Lock()
        self._in_memory = 0  # bytes of live in-memory PageImages

    def clear(self) -> None:
        """Remove what a crashed process left (call while no copy runs: at startup)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def file(self) -> tempfile.SpooledTemporaryFile[bytes]:
        """A file that stays in memory up to `memory_bytes`, then moves to an anonymous file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return tempfile.SpooledTemporaryFile(max_size=self.memory_bytes, dir=str(self.directory))

    def copy_file(self, path: Path) -> PageImage:
        """A copy of the database file at `path`, which nothing may have open (a tenant file
        just created, before its first open: DESIGN 9). Raises OSError."""
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            if self._reserve(size):
                return self._in_memory_image(source, size)
            target = _temporary_file(self.directory)
            try:
                shutil.copyfileobj(source, target, PIECE)
            except BaseException:
                target.close()
                raise
        return PageImage(target, size, None)

    def copy_database(self, conn: apsw.Connection) -> PageImage:
        """The database `conn` sees (its last commit, WAL included), page for page as SQLite
        stores it, through SQLite's backup API: never `open()` a live tenant's file, never
        VACUUM INTO (DESIGN 9). The caller holds the connection (no statement may run on it
        meanwhile). Raises apsw.Error or OSError."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="copy-", suffix=".db", dir=self.directory)
        os.close(fd)
        path = Path(name)
        try:
            _backup(conn, path)
            return self._adopt(path)
        finally:
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-journal")):
                leftover.unlink(missing_ok=True)

    def _adopt(self, path: Path) -> PageImage:
        """`path` as a PageImage: read into memory if the budget allows, else kept open (the
        caller unlinks it: the open descriptor keeps the data)."""
        size = path.stat().st_size
        if self._reserve(size):
            with open(path, "rb") as source:
                return self._in_memory_image(source, size)
        return PageImage(open(path, "rb"), size, None)

    def _in_memory_image(self, source: IO[bytes], size: int) -> PageImage:
        """`size` bytes reserved: read `source` into memory (the reservation goes back with it)."""
        try:
            data = source.read(size)
        except BaseException:
            self._release(size)
            raise
        return PageImage(io.BytesIO(data), size, self)

    def _reserve(self, size: int) -> bool:
        with self._lock:
            if self._in_memory + size > self.memory_bytes:
                return False
            self._in_memory += size
            return True

    def _release(self, size: int) -> None:
        with self._lock:
            self._in_memory -= size


def _temporary_file(directory: Path) -> IO[bytes]:
    """An anonymous file in `directory`: gone from the file system once closed, or on a crash."""
    directory.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=directory)


def _backup(conn: apsw.Connection, path: Path) -> None:
    """Copy `conn`'s main database to the new empty file `path`, byte for byte.

    The destination runs in WAL mode, so committing the copy leaves page 1 as copied (in
    rollback mode SQLite would bump its change counter); the backup also sets the destination's
    schema cookie to its old one + 1, so the source's is put back. Checked: the result equals
    `conn.serialize()`. Takes up to twice the database's size on disk while it runs (WAL, then
    checkpointed into the file); memory stays at the destination's small page cache."""
    page_size = int(conn.execute("PRAGMA page_size").fetchall()[0][0])  # type: ignore[arg-type]
    cookie = int(conn.execute("PRAGMA schema_version").fetchall()[0][0])  # type: ignore[arg-type]
    dest = apsw.Connection(str(path))
    try:
        dest.execute(
            f"PRAGMA page_size={page_size}; PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL;"
            f" PRAGMA synchronous=OFF; PRAGMA cache_size=-{_COPY_CACHE_KIB}"
        ).fetchall()
        with dest.backup("main", conn, "main") as backup:
            while not backup.done:
                backup.step(_BACKUP_STEP)
        dest.execute(f"PRAGMA schema_version={cookie}")
        dest.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    finally:
        dest.close()


class PageImage:
    """A database's pages copied aside for a snapshot: `size` bytes in memory or in an
    anonymous temporary file. Closed (memory or disk space freed) by `close`, or at the latest
    when the last reference to it goes. Not thread-safe: one reader at a time."""

    def __init__(self, file: IO[bytes], size: int, spool: Spool | None) -> None:
        self.size = size
        self.in_memory = spool is not None  # counted against `spool`'s memory budget
        self._file = file
        # runs on close() or when garbage-collected: closing the file explicitly means no
        # ResourceWarning, and the spool's memory budget gets its bytes back
        self._closer = weakref.finalize(self, _close, file, spool, size)

    def pieces(self) -> Iterator[bytes]:
        """The image from its start, PIECE bytes at a time."""
        self._file.seek(0)
        while piece := self._file.read(PIECE):
            yield piece

    def head(self, length: int) -> bytes:
        """The image's first `length` bytes (fewer if it is shorter)."""
        self._file.seek(0)
        return self._file.read(length)

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> PageImage:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _close(file: IO[bytes], spool: Spool | None, size: int) -> None:
    with contextlib.suppress(OSError):
        file.close()
    if spool is not None:
        spool._release(size)
