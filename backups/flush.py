"""Flush: capture the new committed frames of every dirty tenant (and waiting snapshots and
deletions), pack them into shared segments, upload, and only then advance.

- One segment per flush for all tenants, so PUTs per flush do not grow with the number of tenants.
- Nothing advances until the PUT succeeded: on failure the frames stay in the WAL (the backlog
  lives on local disk) and the next flush re-reads them from the last durable position.
- Frames are read through our own descriptor, validated against the shipped position's salts
  and checksum; a WAL that does not continue it marks the tenant broken (continuity restarts it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from backups import wal
from backups.catalog import BackupCatalog, Position
from backups.errors import ReplicaError, WalCorrupt
from backups.ledger import Ledger, TenantLog
from backups.replica import ReplicaClient
from backups.segment import FRAMES, Chunk, PageWrite, pack
from metrics.instruments import (
    BACKUP_BACKLOG_BYTES,
    BACKUP_LAG_MAX,
    BACKUP_LAG_SECONDS,
    BACKUP_SEGMENT_BYTES,
    BACKUP_SEGMENTS,
    BACKUP_SNAPSHOTS,
    BACKUP_UPLOAD_ERRORS,
    BACKUP_UPLOAD_RETRIES,
)

log = logging.getLogger(__name__)


@dataclass
class Capture:
    """What one flush ships of one tenant, and where the tenant stands once it is durable."""

    tenant: str
    entry: TenantLog
    chunks: list[Chunk]
    position: Position
    consumed: int  # pending commits shipped
    commit_times: list[float]

    @property
    def size(self) -> int:
        return sum(len(c.image) + len(c.frames) * (c.page_size + 8) for c in self.chunks)


def read_new_frames(
    tenant_id: str, entry: TenantLog, pending: list[tuple[int, float]]
) -> tuple[Chunk, Position]:
    """The frames of the `pending` commits as one chunk after `entry.base`, each commit with its
    time, and the position after them. Raises WalCorrupt if the WAL does not continue the base."""
    base = entry.base
    stop = pending[-1][0]
    with open(entry.wal_path, "rb") as f:  # one open per tenant and flush: header, then frames
        header = wal.parse_header(f.read(wal.WAL_HEADER_SIZE))
        if header is None:
            raise WalCorrupt("WAL header missing")
        salts = (header.salt1, header.salt2)
        if base.salts == salts:
            start, seed = base.wal_frames, base.seed
        elif base.salts is None:  # the WAL restarted after our checkpoint
            start, seed = 0, header.checksum
        else:
            raise WalCorrupt("WAL salts changed without a checkpoint")
        frames = wal.read_frames_from(f, header, start, stop, seed)
    times = dict(pending)
    commits = [
        (base.lsn + 1 + i, times.get(f.index + 1, time.time())) for i, f in enumerate(frames) if f.commit_size
    ]
    writes = [PageWrite(f.page_no, f.commit_size, f.data) for f in frames]
    chunk = Chunk(
        tenant_id,
        base.generation,
        FRAMES,
        base.lsn + 1,
        base.lsn + len(frames),
        header.page_size,
        commits,
        writes,
    )
    position = replace(
        base, lsn=base.lsn + len(frames), salts=salts, wal_frames=stop, seed=frames[-1].checksum
    )
    return chunk, position


@dataclass(eq=False)
class Flusher:
    """Ships what the ledger holds. Callers serialize `run` (and any capture-upload-advance of
    their own) with one lock: the segment sequence and the failure counters are not locked."""

    ledger: Ledger
    replica: ReplicaClient
    catalog: BackupCatalog
    server_id: str
    segment_max_bytes: int
    last_success: float = field(default=0.0, init=False)  # time.time() of the last good upload
    failures: int = field(default=0, init=False)
    failed_in_a_row: int = field(default=0, init=False)  # failed uploads since the last good one
    _seq: int = field(default=0, init=False)

    def run(self) -> list[str]:
        """Ship every dirty tenant's new commits, waiting snapshots and deletions. Returns the
        tenants that may need maintenance (shipped now, or broken). Raises ReplicaError if an
        upload failed: nothing was lost, the next run retries from the last durable position."""
        logs, tombstones = self.ledger.take()
        captured = [c for c in (self.capture(t, entry) for t, entry in logs.items()) if c is not None]
        broken = [t for t, entry in logs.items() if entry.broken]
        if captured or tombstones:
            if self.failed_in_a_row:
                BACKUP_UPLOAD_RETRIES.inc()
            try:
                self.upload(captured, tombstones)
            except ReplicaError as exc:
                self._failed(exc, captured, tombstones, broken)
                raise
            self.last_success = time.time()
            self.failed_in_a_row = 0
            self.advance(captured)
        return list(dict.fromkeys([*broken, *(c.tenant for c in captured)]))

    def _failed(
        self, exc: ReplicaError, captured: list[Capture], tombstones: list[Chunk], broken: list[str]
    ) -> None:
        self.failures += 1
        self.failed_in_a_row += 1
        BACKUP_UPLOAD_ERRORS.inc()
        log.warning("backup upload failed (%s); will retry", exc)
        self.ledger.give_back({c.tenant for c in captured} | set(broken), tombstones)
        oldest = self.ledger.oldest_pending(default=time.time())
        BACKUP_LAG_MAX.set(time.time() - oldest)  # how far behind the replica is, while it is down
        BACKUP_BACKLOG_BYTES.set(self.ledger.backlog_bytes())

    def capture(self, tenant_id: str, entry: TenantLog) -> Capture | None:
        """What to ship of the tenant now: its waiting snapshot and the frames of its pending
        commits. None if nothing; a WAL that does not continue the base marks it broken."""
        with self.ledger.lock:
            pending = list(entry.pending)
            snapshot = entry.snapshot
        chunks = [snapshot] if snapshot is not None else []
        position = entry.base
        if pending and not entry.broken:
            try:
                frames_chunk, position = read_new_frames(tenant_id, entry, pending)
                chunks.append(frames_chunk)
            except WalCorrupt as exc:
                log.error("tenant %s: WAL does not continue the shipped position (%s)", tenant_id, exc)
                entry.broken = True
        if not chunks:
            return None
        return Capture(tenant_id, entry, chunks, position, len(pending), [t for _, t in pending])

    def upload(self, captured: list[Capture], extra: list[Chunk]) -> None:
        """One segment for everything, split only past segment_max_bytes (never inside a
        tenant's capture: its snapshot and frames land together). Raises ReplicaError."""
        batch, size = list(extra), 0
        for capture in captured:
            batch += capture.chunks
            size += capture.size
            if size >= self.segment_max_bytes:
                self._put_chunks(batch)
                batch, size = [], 0
        if batch:
            self._put_chunks(batch)

    def _put_chunks(self, chunks: list[Chunk]) -> None:
        self._seq += 1
        now = time.time()
        key = f"segments/{int(now * 1000):013d}-{self.server_id}-{self._seq:08d}.seg"
        data, refs = pack(chunks, {"server": self.server_id, "created": now})
        self.replica.put(key, data)
        self.catalog.add_segment(key, now, refs)
        BACKUP_SEGMENTS.inc()
        BACKUP_SEGMENT_BYTES.inc(len(data))

    def advance(self, captured: list[Capture]) -> None:
        """After a successful upload: the captured commits are shipped, each tenant's base moves
        to its capture's position (saved in the catalog first)."""
        # Persist first: a position saved ahead of memory is still true (the upload succeeded),
        # while a log dropped on close before its position is saved would resume from a stale one.
        self.catalog.save_positions({c.tenant: c.position for c in captured})
        now = time.time()
        lags = [now - t for c in captured for t in c.commit_times]
        with self.ledger.lock:
            for c in captured:
                entry = c.entry
                del entry.pending[: c.consumed]
                if any(ch is entry.snapshot for ch in c.chunks):
                    entry.snapshot = None
                    entry.shipped_bytes = 0
                    BACKUP_SNAPSHOTS.inc()
                entry.shipped_bytes += sum(len(ch.frames) * ch.page_size for ch in c.chunks)
                entry.base = c.position
                if entry.pending:
                    self.ledger.dirty.add(c.tenant)
        for lag in lags:
            BACKUP_LAG_SECONDS.observe(lag)
        BACKUP_LAG_MAX.set(max(lags, default=0.0))
        BACKUP_BACKLOG_BYTES.set(self.ledger.backlog_bytes())
