"""Commit times that outlive the process: every commit's wall-clock time, appended to a journal
file in the commit path (one `write`, no fsync), so after kill -9 the commits found in a WAL past
the shipped position get the times they really committed at, and restore stays precise to one
transaction. A power loss may lose the journal's tail; those commits then get the WAL's mtime,
as before there was a journal.

One journal for all tenants, not a file per tenant: one descriptor whatever the number of
tenants (a file per tenant would hold a descriptor per open or dirty tenant, or cost an open
and a close per commit, against the process's 20,000), one append per commit, and nothing to
create, reconcile or delete per tenant. A record names its commit the way the WAL does: the
tenant, the WAL's salts and the WAL's length in frames after the commit; it is used only when
the WAL on disk has a commit with exactly that key.

The journal is a series of files DIR/<seq>.log. Each flush starts a new one (`rotate`) before
it takes the pending commits, so every record in the older files belongs to a commit that flush
ships: once it succeeded they are deleted (`prune`). The files found at start are read into
memory (`recovered`) and kept until the tenants they name have been opened and their commits
shipped (or `end_recovery` gives up on the rest).

Record: u16 length, then that many bytes (salt1, salt2, frames as u32, time as f64, then the
tenant id), then their CRC-32: a torn tail (power loss) ends the file's reading.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import weakref
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">H")
_FIELDS = struct.Struct(">IIId")
_CRC = struct.Struct(">I")
_SUFFIX = ".log"
Key = tuple[int, int, int]  # (salt1, salt2, WAL frames after the commit)


@dataclass(frozen=True)
class Mark:
    """Where `rotate` cut the journal: files before `seq` hold commits taken after it."""

    seq: int
    recovery_over: bool  # nothing recovered at start was waiting any more when it was cut


class CommitTimes:
    """Thread-safe. `note` may run in any committing thread; `rotate` and `prune` in the
    flush thread. Failing writes (a full disk) are logged, never raised: the commit is made."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._recovered: dict[str, dict[Key, float]] = {}
        seqs = self._files()
        for seq in seqs:
            self._read(self._path(seq))
        self._first_live = (seqs[-1] + 1) if seqs else 1  # files before it were found at start
        self._seq = self._first_live
        self._missing = False  # the current file could not be made (a full disk): `note` retries
        try:
            fd = self._open(self._seq)
        except OSError as exc:
            log.warning("commit times journal: cannot start %s (%s)", self._path(self._seq), exc)
            fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            self._missing = True
        self._fd = [fd]  # a cell: the finalizer closes whichever is current
        self._finalizer = weakref.finalize(self, _close_all, self._fd)
        self._failing = False
        self._empty = True  # nothing written to the current file yet
        self._writers: dict[int, int] = {}  # descriptor -> notes writing to it now
        self._retired: set[int] = set()  # descriptors no longer current, closed by their last writer

    # -- the commit path ------------------------------------------------------------------------

    def note(self, tenant_id: str, salts: tuple[int, int], frames: int, at: float) -> None:
        """Record that the tenant's WAL with `salts` reached `frames` frames by a commit at `at`."""
        body = _FIELDS.pack(*salts, frames, at) + tenant_id.encode()
        record = _HEAD.pack(len(body)) + body + _CRC.pack(zlib.crc32(body))
        # The write runs outside the lock: committing threads never queue on it behind a
        # system call (each would hand the GIL over twice more). A descriptor `rotate` or
        # `close` retires meanwhile is closed by its last writer, so its number is never reused
        # under one. A record that lands in the file before the cut after `rotate` returned
        # belongs to a commit the ledger had noted before the cut, so that flush takes it.
        with self._lock:
            if self._missing:
                self._make_current()
            fd = self._fd[0]
            if fd < 0:
                return  # closed: the server is stopping
            self._writers[fd] = self._writers.get(fd, 0) + 1
            self._empty = False
        error = None
        try:
            os.write(fd, record)
        except OSError as exc:
            error = exc
        with self._lock:
            self._release(fd)
            if error is not None and not self._failing:
                log.warning("commit times journal: write failed (%s); times fall back to the WAL's", error)
            self._failing = error is not None

    def _make_current(self) -> None:
        """Try again to make the current file, missing since the start (lock held)."""
        try:
            fd = self._open(self._seq)
        except OSError:
            return
        old, self._fd[0] = self._fd[0], fd
        self._missing = False
        self._retire(old)

    def _release(self, fd: int) -> None:
        """A writer is done with `fd` (lock held): close it if it is retired and was the last."""
        left = self._writers[fd] - 1
        if left:
            self._writers[fd] = left
            return
        del self._writers[fd]
        if fd in self._retired:
            self._retired.discard(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def _retire(self, fd: int) -> None:
        """`fd` is no longer current (lock held): close it now, or once its writers are done."""
        if self._writers.get(fd):
            self._retired.add(fd)
        else:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- after a restart ------------------------------------------------------------------------

    def recovered(self, tenant_id: str) -> dict[Key, float]:
        """The times recorded before the restart for the tenant's commits, by key, handed over
        once (a second call returns nothing)."""
        with self._lock:
            return self._recovered.pop(tenant_id, {})

    def recovered_tenants(self) -> list[str]:
        """Tenants with recorded commits not yet handed over by `recovered`."""
        with self._lock:
            return sorted(self._recovered)

    def end_recovery(self, waiting: Collection[str] = ()) -> None:
        """Give up on the recorded times not handed over yet (their tenants did not open), but
        those of the `waiting` tenants (they could not be opened now: their next open takes
        them, and until then the files found at start stay)."""
        with self._lock:
            self._recovered = {t: times for t, times in self._recovered.items() if t in waiting}

    # -- the flush's cut ------------------------------------------------------------------------

    def rotate(self) -> Mark:
        """Start a new file (unless nothing was written to the current one): what was recorded
        before this call is in older files."""
        with self._lock:
            if self._empty or self._fd[0] < 0:
                return Mark(self._seq, not self._recovered)
            try:
                fd = self._open(self._seq + 1)
            except OSError as exc:  # no room for a new file: go on in this one (pruned later)
                log.warning("commit times journal: cannot start %s (%s)", self._path(self._seq + 1), exc)
                return Mark(self._seq, not self._recovered)
            old, self._fd[0] = self._fd[0], fd
            self._seq += 1
            self._empty = True
            self._retire(old)
            return Mark(self._seq, not self._recovered)

    def prune(self, mark: Mark) -> None:
        """After a flush that cut at `mark` succeeded: delete the files before it (those found at
        start only once nothing recovered from them waited when it was cut)."""
        for seq in self._files():
            if seq >= mark.seq or (seq < self._first_live and not mark.recovery_over):
                continue
            try:
                self._path(seq).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("commit times journal: cannot delete %s (%s)", self._path(seq), exc)

    def close(self) -> None:
        """Close the current file; later commits are not recorded. Idempotent."""
        with self._lock:
            fd, self._fd[0] = self._fd[0], -1
            self._finalizer.detach()  # the descriptor is closed here, or by its last writer
            if fd >= 0:
                self._retire(fd)

    # -- files ----------------------------------------------------------------------------------

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}{_SUFFIX}"

    def _files(self) -> list[int]:
        seqs = []
        for path in self.directory.glob(f"*{_SUFFIX}"):
            if path.stem.isdigit():
                seqs.append(int(path.stem))
        return sorted(seqs)

    def _open(self, seq: int) -> int:
        """A new journal file. Raises OSError (a full disk)."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self._path(seq), flags, 0o600)

    def _read(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("commit times journal: cannot read %s (%s)", path, exc)
            return
        pos = 0
        while pos + _HEAD.size <= len(data):
            (length,) = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if length < _FIELDS.size or end + _CRC.size > len(data):
                break  # torn tail
            body = data[pos + _HEAD.size : end]
            if _CRC.unpack_from(data, end)[0] != zlib.crc32(body):
                break
            salt1, salt2, frames, at = _FIELDS.unpack_from(body)
            tenant = body[_FIELDS.size :].decode(errors="replace")
            self._recovered.setdefault(tenant, {})[(salt1, salt2, frames)] = at
            pos = end + _CRC.size


def _close_all(cell: list[int]) -> None:
    for fd in cell:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
