"""What a flush reads of a tenant's WAL: the frames of its pending commits after its shipped
position, validated against that position's salts and checksum (a WAL that does not continue it
raises WalCorrupt), as the records of one frames chunk.

Two ways, one result. Most dirty tenants have a few new frames: `read_small` reads them whole
(one read) and the flush checks the spans of many tenants at once (backups.wal.check_spans), so
a flush costs a few system calls and no per-frame Python per tenant. A tenant with more than a
batch streams them (`NewFrames`), so memory stays bounded whatever one commit's size.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from types import TracebackType

from backups import wal
from backups.catalog import Position
from backups.errors import WalCorrupt
from backups.ledger import TenantLog
from backups.segment import FRAMES, Chunk, SegmentWriter


class NewFrames:
    """The frames of the `pending` commits after `entry.base`, streamed from the WAL a batch at a
    time as one FRAMES chunk: `body()` yields its record bytes and fills in `chunk` (LSN range,
    commits with their times) as it goes; once exhausted, `position` and `frame_bytes` say where
    the tenant stands after them. Raises WalCorrupt (when built, or while iterating) if the WAL
    does not continue the base. Close it (a context manager)."""

    def __init__(self, tenant_id: str, entry: TenantLog, pending: list[tuple[int, float]]) -> None:
        base = entry.base
        self._stop = pending[-1][0]
        self._times = dict(pending)
        # one descriptor per tenant and capture, closed by `close` (it outlives this constructor);
        # os-level reads: a flush does this for every dirty tenant, so each step counts
        self._fd = os.open(entry.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            header, salts, self._start, self._seed = locate(self._fd, base, entry.may_restart())
        except BaseException:
            os.close(self._fd)
            raise
        self._header = header
        self._base = base
        self._salts = salts
        self.chunk = Chunk(tenant_id, base.generation, FRAMES, base.lsn + 1, base.lsn, header.page_size)
        self.position = replace(base, salts=salts)
        self.frame_bytes = 0

    def body(self) -> Iterator[bytes]:
        chunk, end_seed, times = self.chunk, self._seed, self._times
        first = chunk.first_lsn - self._start  # LSN of WAL frame i is first + i
        for batch in wal.read_records(self._fd, self._header, self._start, self._stop, self._seed):
            now = time.time()
            chunk.commits += [(first + frames - 1, times.get(frames, now)) for frames in batch.commits]
            chunk.last_lsn += batch.count
            end_seed = batch.checksum
            yield batch.body
        base = self._base
        # replace, not a new Position: whatever else the base records carries over
        self.position = replace(
            base, lsn=chunk.last_lsn, salts=self._salts, wal_frames=self._stop, seed=end_seed
        )
        self.frame_bytes = (chunk.last_lsn - (chunk.first_lsn - 1)) * self._header.page_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> NewFrames:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def write_new_frames(
    writer: SegmentWriter, tenant_id: str, entry: TenantLog, pending: list[tuple[int, float]]
) -> tuple[Position, int]:
    """Add the frames of the `pending` commits to `writer` as one chunk after `entry.base`,
    each commit with its time. Returns the position after them and their page bytes. Raises
    WalCorrupt, leaving `writer` as it was, if the WAL does not continue the base."""
    with NewFrames(tenant_id, entry, pending) as frames:
        writer.add(frames.chunk, frames.body())
        return frames.position, frames.frame_bytes


def restarts(header: wal.WalHeader, salts: tuple[int, int]) -> bool:
    """Whether `header` is that of the WAL with `salts` restarted: once a checkpoint copied every
    frame of a WAL into the main file, SQLite writes the next commit from the WAL's start with
    salt-1 incremented and salt-2 new (sqlite.org/walformat.html, "WAL reset"). A TRUNCATE
    checkpoint that fails after the copy (truncating fails) leaves SQLite doing just that."""
    return header.salt1 == (salts[0] + 1) & 0xFFFFFFFF


def locate(
    fd: int, base: Position, may_restart: bool = False
) -> tuple[wal.WalHeader, tuple[int, int], int, wal.Checksum]:
    """The WAL at `fd` against the shipped position `base`: its header, its salts, and the frame
    and checksum the frames after `base` start from. With `may_restart` (TenantLog.may_restart:
    the base holds every frame of its WAL, all in the main file) that WAL restarted continues it
    too. Raises WalCorrupt if it does not continue it."""
    header = wal.parse_header(os.pread(fd, wal.WAL_HEADER_SIZE, 0))
    if header is None:
        raise WalCorrupt("WAL header missing")
    salts = (header.salt1, header.salt2)
    if base.salts == salts:
        return header, salts, base.wal_frames, base.seed
    if base.salts is None:  # the WAL restarted after our checkpoint
        return header, salts, 0, header.checksum
    if may_restart and restarts(header, base.salts):  # ... after a checkpoint that failed late
        return header, salts, 0, header.checksum
    raise WalCorrupt("WAL salts changed without a checkpoint")


@dataclass
class Small:
    """A tenant's new frames, read whole (they are few), waiting to be checked with others'."""

    span: wal.Span
    salts: tuple[int, int]


def read_small(entry: TenantLog, pending: list[tuple[int, float]], limit: int) -> Small | WalCorrupt | None:
    """The frames of the `pending` commits after `entry.base`, read whole if they are at most
    `limit` bytes (None if more: they stream, see NewFrames); a WalCorrupt (returned) if the WAL
    does not continue the base. Raises OSError."""
    fd = os.open(entry.wal_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header, salts, start, seed = locate(fd, entry.base, entry.may_restart())
        stop = pending[-1][0]
        if (stop - start) * header.frame_size > limit:
            return None
        return Small(wal.read_span(fd, header, start, stop, seed), salts)
    except WalCorrupt as exc:
        return exc
    finally:
        os.close(fd)


def small_chunk(
    tenant_id: str, entry: TenantLog, pending: list[tuple[int, float]], small: Small, records: wal.Records
) -> tuple[Chunk, Position, int]:
    """The frames chunk of a small capture whose frames checked out as `records`, the tenant's
    position after it, and its page bytes."""
    base, times, now = entry.base, dict(pending), time.time()
    offset = base.lsn - records.start  # WAL length `frames` after a commit is LSN offset + frames
    commits = [(offset + frames, times.get(frames, now)) for frames in records.commits]
    last, page_size = base.lsn + records.count, small.span.header.page_size
    chunk = Chunk(tenant_id, base.generation, FRAMES, base.lsn + 1, last, page_size, commits)
    end = records.start + records.count
    position = replace(base, lsn=last, salts=small.salts, wal_frames=end, seed=records.checksum)
    return chunk, position, records.count * page_size
