"""Flush: capture the new committed frames of every dirty tenant (and waiting snapshots and
deletions), pack them into shared segments, upload, and only then advance.

- One segment per flush for all tenants, so PUTs per flush do not grow with the number of tenants.
- Bounded memory whatever one commit's size: frames stream from the WAL a batch at a time through
  the compressor into a spooled segment file (backups.spool), which is uploaded from the file.
- Nothing advances until the PUT succeeded: on failure the frames stay in the WAL (the backlog
  lives on local disk) and the next flush re-reads them from the last durable position.
- Frames are read through our own descriptor, validated against the shipped position's salts
  and checksum; a WAL that does not continue it marks the tenant broken (continuity restarts it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from backups import wal
from backups.catalog import BackupCatalog, Position
from backups.errors import ReplicaError, ShippingIOError, WalCorrupt
from backups.ledger import Ledger, TenantLog
from backups.replica import ReplicaClient
from backups.segment import FRAMES, Chunk, SegmentWriter, frame_records
from backups.spool import Spool
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
    snapshot: Chunk | None  # the entry's waiting snapshot, shipped with it
    position: Position
    consumed: int  # pending commits shipped
    commit_times: list[float]
    frame_bytes: int = 0  # WAL page bytes shipped


def write_new_frames(
    writer: SegmentWriter, tenant_id: str, entry: TenantLog, pending: list[tuple[int, float]]
) -> tuple[Position, int]:
    """Add the frames of the `pending` commits to `writer` as one chunk after `entry.base`,
    each commit with its time, streaming them from the WAL a batch at a time. Returns the
    position after them and their page bytes. Raises WalCorrupt, leaving `writer` as it was,
    if the WAL does not continue the base."""
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
        chunk = Chunk(tenant_id, base.generation, FRAMES, base.lsn + 1, base.lsn, header.page_size)
        times = dict(pending)
        end_seed = seed

        def body() -> Iterator[bytes]:
            # fills in the chunk's LSN range and commits, and the checksum reached, as it goes
            nonlocal end_seed
            for batch in wal.read_batches(f, header, start, stop, seed):
                for frame in batch:
                    chunk.last_lsn += 1
                    if frame.commit_size:
                        chunk.commits.append((chunk.last_lsn, times.get(frame.index + 1, time.time())))
                end_seed = batch[-1].checksum
                yield frame_records((fr.page_no, fr.commit_size, fr.data) for fr in batch)

        writer.add(chunk, body())
    count = chunk.last_lsn - base.lsn
    position = replace(base, lsn=chunk.last_lsn, salts=salts, wal_frames=stop, seed=end_seed)
    return position, count * header.page_size


@dataclass(eq=False)
class Flusher:
    """Ships what the ledger holds. Callers serialize `run` and `ship` with one lock: the
    segment sequence and the failure counters are not locked, and one segment is built at a
    time (the spool's memory bound counts on it)."""

    ledger: Ledger
    replica: ReplicaClient
    catalog: BackupCatalog
    server_id: str
    segment_max_bytes: int
    spool: Spool
    last_success: float = field(default=0.0, init=False)  # time.time() of the last good upload
    failures: int = field(default=0, init=False)
    failed_in_a_row: int = field(default=0, init=False)  # failed uploads since the last good one
    _seq: int = field(default=0, init=False)

    def run(self) -> list[str]:
        """Ship every dirty tenant's new commits, waiting snapshots and deletions. Returns the
        tenants that may need maintenance (shipped now, or broken). Raises ReplicaError if an
        upload failed: nothing was lost, the next run retries from the last durable position."""
        logs, tombstones = self.ledger.take()
        retrying = self.failed_in_a_row > 0
        try:
            captured = self.ship(logs, tombstones)
        except ReplicaError as exc:
            if retrying:
                BACKUP_UPLOAD_RETRIES.inc()
            self._failed(exc, set(logs), tombstones)
            raise
        if captured or tombstones:
            if retrying:
                BACKUP_UPLOAD_RETRIES.inc()
            self.last_success = time.time()
            self.failed_in_a_row = 0
        broken = [t for t, entry in logs.items() if entry.broken]
        return list(dict.fromkeys([*broken, *(c.tenant for c in captured)]))

    def _failed(self, exc: ReplicaError, tenants: set[str], tombstones: list[Chunk]) -> None:
        self.failures += 1
        self.failed_in_a_row += 1
        BACKUP_UPLOAD_ERRORS.inc()
        log.warning("backup upload failed (%s); will retry", exc)
        self.ledger.give_back(tenants, tombstones)
        oldest = self.ledger.oldest_pending(default=time.time())
        BACKUP_LAG_MAX.set(time.time() - oldest)  # how far behind the replica is, while it is down
        BACKUP_BACKLOG_BYTES.set(self.ledger.backlog_bytes())

    def ship(self, logs: dict[str, TenantLog], extra: list[Chunk]) -> list[Capture]:
        """Capture the tenants' waiting snapshots and new frames, and `extra` chunks, into shared
        segments, upload them, then advance each tenant to what is durable. A segment is cut
        past segment_max_bytes, never inside a tenant's capture (its snapshot and frames land
        together). Returns the captures. Raises ReplicaError if an upload failed, ShippingIOError
        if local I/O did (nothing advanced; segments already uploaded are shipped again later,
        which restore tolerates)."""
        captured: list[Capture] = []
        try:
            writer = SegmentWriter(self.spool)
            try:
                for chunk in extra:
                    writer.add(chunk)
                for tenant_id, entry in logs.items():
                    capture = self.capture(writer, tenant_id, entry)
                    if capture is not None:
                        captured.append(capture)
                    if writer.size >= self.segment_max_bytes:
                        self.upload(writer)
                        writer = SegmentWriter(self.spool)
                if len(writer):
                    self.upload(writer)
            finally:
                writer.close()
        except OSError as exc:  # the replica's own errors are ReplicaErrors already
            raise ShippingIOError(f"backup flush: {exc}") from exc
        self.advance(captured)
        return captured

    def capture(self, writer: SegmentWriter, tenant_id: str, entry: TenantLog) -> Capture | None:
        """Add what to ship of the tenant now to `writer`: its waiting snapshot and the frames
        of its pending commits. None if nothing; a WAL that does not continue the base marks
        it broken (its frames stay out)."""
        with self.ledger.lock:
            pending = list(entry.pending)
            snapshot = entry.snapshot
        if snapshot is not None:
            assert snapshot.image is not None
            writer.add(snapshot, snapshot.image.pieces())
        position, frame_bytes, consumed = entry.base, 0, 0
        if pending and not entry.broken:
            try:
                position, frame_bytes = write_new_frames(writer, tenant_id, entry, pending)
                consumed = len(pending)
            except WalCorrupt as exc:
                log.error("tenant %s: WAL does not continue the shipped position (%s)", tenant_id, exc)
                entry.broken = True
        if snapshot is None and not consumed:
            return None
        times = [t for _, t in pending[:consumed]]
        return Capture(tenant_id, entry, snapshot, position, consumed, times, frame_bytes)

    def upload(self, writer: SegmentWriter) -> None:
        """Finish `writer`'s segment, upload it and record its chunks in the catalog.
        Raises ReplicaError."""
        self._seq += 1
        now = time.time()
        key = f"segments/{int(now * 1000):013d}-{self.server_id}-{self._seq:08d}.seg"
        data, refs = writer.finish({"server": self.server_id, "created": now})
        with data:
            size = data.seek(0, 2)
            data.seek(0)
            self.replica.put_file(key, data)
        self.catalog.add_segment(key, now, refs)
        BACKUP_SEGMENTS.inc()
        BACKUP_SEGMENT_BYTES.inc(size)

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
                if c.snapshot is not None and c.snapshot is entry.snapshot:
                    entry.snapshot = None
                    entry.shipped_bytes = 0
                    BACKUP_SNAPSHOTS.inc()
                entry.shipped_bytes += c.frame_bytes
                entry.base = c.position
                if entry.pending:
                    self.ledger.dirty.add(c.tenant)
        for c in captured:
            if c.snapshot is not None and c.snapshot.image is not None:
                c.snapshot.image.close()  # shipped: free its memory or disk now
        for lag in lags:
            BACKUP_LAG_SECONDS.observe(lag)
        BACKUP_LAG_MAX.set(max(lags, default=0.0))
        BACKUP_BACKLOG_BYTES.set(self.ledger.backlog_bytes())
