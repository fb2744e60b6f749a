"""Flush: capture the new committed frames of every dirty tenant (and waiting snapshots, carried
chunks and deletions), pack them into shared segments, upload, and only then advance.

- One segment per flush for all tenants, so PUTs per flush do not grow with the number of tenants.
- Bounded memory whatever one commit's size: frames stream from the WAL a batch at a time through
  the compressor into a spooled segment file (backups.spool), which is uploaded from the file.
- Nothing advances until every step succeeded: capture, pack, PUT, catalog, positions, memory. A
  failure at any of them leaves the shipper as if the flush never ran (the frames stay in the WAL
  or in carried chunks, the tenants stay dirty) and the next flush ships it all again; what
  already reached the replica is shipped twice, which the catalog and restore tolerate.
- Frames are read through our own descriptor (backups.capture), validated against the shipped
  position's salts and checksum; a WAL that does not continue it marks the tenant broken
  (continuity restarts it). Per dirty tenant a flush costs a few system calls: the new frames of
  a batch of tenants are read whole and checked together, then compressed one chunk per call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from backups import wal
from backups.capture import NewFrames, Small, read_small, small_chunk, write_new_frames
from backups.carry import Carried, Carry
from backups.catalog import BackupCatalog
from backups.commit_times import CommitTimes
from backups.errors import ObjectExists, ReplicaError, ReplicaFenced, ShippingIOError, WalCorrupt
from backups.fence import Writer, top, written_by
from backups.ledger import Capture, Ledger, TenantLog
from backups.quota import ReplicaQuota
from backups.replica import ReplicaClient
from backups.segment import SNAPSHOT, Chunk, ChunkRef, SegmentWriter
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
    DISK_FULL,
)
from tenants.errors import disk_full

log = logging.getLogger(__name__)

SMALL_BYTES = 256 << 10  # a tenant's new frames up to this size are read whole, and checked with others'
CHECK_BYTES = 4 << 20  # new frames read (of several tenants) before they are checked and written

__all__ = ["Capture", "Flusher", "NewFrames", "write_new_frames"]  # the capture ones, for checkpoints


@dataclass
class _Taken:
    """What one flush ships of one tenant, read before its chunks are written."""

    tenant_id: str
    entry: TenantLog
    pending: list[tuple[int, float]]
    snapshot: Chunk | None
    carried: list[Carried]
    frames: Small | WalCorrupt | None = None  # None: none, or too many to read whole (they stream)


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
    quota: ReplicaQuota  # what each tenant's chunks add to the replica is counted against it
    times: CommitTimes  # cut at each flush, pruned once it succeeded
    # None: flat segment keys, as a single server always named them. Else the incarnation's
    # sequence, created conditionally (backups/fence.py); a fence ends shipping for good:
    # `fenced` is set, `on_fenced` called once, every later upload raises it.
    writer: Writer | None = None
    on_fenced: Callable[[ReplicaFenced], None] | None = None
    fenced: ReplicaFenced | None = field(default=None, init=False)
    last_success: float = field(default=0.0, init=False)  # time.time() of the last good flush
    failures: int = field(default=0, init=False)
    failed_in_a_row: int = field(default=0, init=False)  # failed flushes since the last good one
    failing_since: float | None = field(default=None, init=False)  # time of the first of them
    last_error: str | None = field(default=None, init=False)  # why the last flush failed
    last_error_disk_full: bool = field(default=False, init=False)
    _seq: int = field(default=0, init=False)  # the last seq used (with a writer: that is in the replica)
    _seq_known: bool = field(default=False, init=False)  # with a writer: `_seq` was listed
    _refs: list[ChunkRef] = field(default_factory=list, init=False)  # uploaded by this flush

    def run(self) -> list[str]:
        """Ship every dirty tenant's new commits, waiting snapshots, carried chunks and
        deletions. Returns the tenants that may need maintenance (shipped now, or broken).
        Raises what failed (ReplicaError for the replica or local shipping I/O, what the catalog
        raises, ...): then nothing was lost and nothing advanced, the next run retries."""
        mark = self.times.rotate()
        logs, tombstones = self.ledger.take()
        orphans = self.ledger.take_orphans()
        retrying = self.failed_in_a_row > 0
        try:
            captured = self.ship(logs, tombstones, orphans)
        except BaseException as exc:
            if retrying:
                BACKUP_UPLOAD_RETRIES.inc()
            self._failed(exc, set(logs), tombstones, orphans)
            raise
        self.times.prune(mark)
        for carried in orphans:
            if carried.kind == SNAPSHOT:
                BACKUP_SNAPSHOTS.inc()
            Carry.discard(carried)
        if captured or tombstones or orphans:
            if retrying:
                BACKUP_UPLOAD_RETRIES.inc()
            self.last_success = time.time()
        self.failed_in_a_row, self.failing_since = 0, None
        self.last_error, self.last_error_disk_full = None, False
        broken = [t for t, entry in logs.items() if entry.broken]
        return list(dict.fromkeys([*broken, *(c.tenant for c in captured)]))

    def _failed(
        self, exc: BaseException, tenants: set[str], tombstones: list[Chunk], orphans: list[Carried]
    ) -> None:
        self.ledger.give_back(tenants, tombstones, orphans)
        self.failures += 1
        self.failed_in_a_row += 1
        if self.failing_since is None:
            self.failing_since = time.time()
        self.last_error_disk_full = disk_full(exc)
        self.last_error = ("the data disk is full: " if self.last_error_disk_full else "") + (
            str(exc) or type(exc).__name__
        )
        BACKUP_UPLOAD_ERRORS.inc()
        if self.last_error_disk_full:
            DISK_FULL.labels("backup").inc()
        if isinstance(exc, ReplicaFenced):
            pass  # logged once, when found; nothing retries
        elif isinstance(exc, ReplicaError):
            log.warning("backup flush failed (%s); will retry", exc)
        elif isinstance(exc, Exception):
            log.warning("backup flush failed (%s: %s); will retry", type(exc).__name__, exc)
        oldest = self.ledger.oldest_pending(default=time.time())
        BACKUP_LAG_MAX.set(time.time() - oldest)  # how far behind the replica is, while it is down
        BACKUP_BACKLOG_BYTES.set(self.ledger.backlog_bytes())

    def ship(
        self, logs: dict[str, TenantLog], extra: list[Chunk], orphans: list[Carried] | None = None
    ) -> list[Capture]:
        """Capture the tenants' carried chunks, waiting snapshots and new frames, `extra` chunks
        and `orphans` (carried chunks without a log) into shared segments, upload them, then
        advance each tenant to what is durable. A segment is cut past segment_max_bytes, never
        inside a tenant's capture (its chunks land together). Returns the captures. Raises
        ReplicaError if an upload failed, ShippingIOError if local I/O did, and what the catalog
        raises (nothing advanced; segments already uploaded are shipped again later, which
        restore tolerates)."""
        captured: list[Capture] = []
        self._refs = []
        try:
            writer = SegmentWriter(self.spool)
            try:
                for chunk in extra:
                    writer.add(chunk)
                for carried in orphans or ():
                    writer.add(carried.chunk(), carried.body())
                # Tenants' new frames are read a batch of tenants at a time and checked together
                # (backups.wal.check_spans): per dirty tenant a flush then costs a few reads and
                # one compression, not a round of numpy and Python per frame.
                batch: list[_Taken] = []
                batch_bytes = 0
                for tenant_id, entry in logs.items():
                    taken = self._take(tenant_id, entry)
                    batch.append(taken)
                    if isinstance(taken.frames, Small):
                        batch_bytes += len(taken.frames.span.raw)
                    if batch_bytes >= CHECK_BYTES:
                        writer = self._write(writer, batch, captured)
                        batch, batch_bytes = [], 0
                writer = self._write(writer, batch, captured)
                if len(writer):
                    self.upload(writer)
            finally:
                writer.close()
        except OSError as exc:  # the replica's own errors are ReplicaErrors already
            raise ShippingIOError(f"backup flush: {exc}") from exc
        self.advance(captured)
        return captured

    def capture(self, writer: SegmentWriter, tenant_id: str, entry: TenantLog) -> Capture | None:
        """Add what to ship of the tenant now to `writer`: its carried chunks, its waiting
        snapshot and the frames of its pending commits. None if nothing; a WAL that does not
        continue the base marks it broken (its frames stay out)."""
        taken = self._take(tenant_id, entry)
        return self._capture(writer, taken, self._checked([taken])[0])

    def _take(self, tenant_id: str, entry: TenantLog) -> _Taken:
        """What to ship of the tenant now; its new frames read whole if they are few."""
        with self.ledger.lock:
            pending = list(entry.pending)
            snapshot = entry.snapshot
            carried = list(entry.carried)
        taken = _Taken(tenant_id, entry, pending, snapshot, carried)
        if pending and not entry.broken:
            taken.frames = read_small(entry, pending, SMALL_BYTES)
        return taken

    @staticmethod
    def _checked(batch: list[_Taken]) -> list[wal.Records | WalCorrupt | None]:
        """Each tenant's new frames in `batch`: the small ones checked, all at once; why the WAL
        does not continue the base; or None (none, or they stream)."""
        smalls = [t.frames for t in batch if isinstance(t.frames, Small)]
        results = iter(wal.check_spans([small.span for small in smalls]))
        out: list[wal.Records | WalCorrupt | None] = []
        for t in batch:
            out.append(next(results) if isinstance(t.frames, Small) else t.frames)
        return out

    def _write(self, writer: SegmentWriter, batch: list[_Taken], captured: list[Capture]) -> SegmentWriter:
        """Add the batch's captures to `writer`, tenant by tenant, uploading and starting a new
        segment past segment_max_bytes. Returns the writer to go on with."""
        try:
            for taken, checked in zip(batch, self._checked(batch), strict=True):
                capture = self._capture(writer, taken, checked)
                if capture is not None:
                    captured.append(capture)
                if writer.size >= self.segment_max_bytes:
                    self.upload(writer)
                    writer = SegmentWriter(self.spool)
        except BaseException:
            writer.close()  # one begun here: the caller closes only the writer it has
            raise
        return writer

    def _capture(
        self, writer: SegmentWriter, taken: _Taken, checked: wal.Records | WalCorrupt | None
    ) -> Capture | None:
        """Add the tenant's carried chunks, waiting snapshot and new frames (`checked`: the small
        capture's records, or why its WAL does not continue the base; None: they stream) to
        `writer`."""
        tenant_id, entry, pending, snapshot, carried = (
            taken.tenant_id,
            taken.entry,
            taken.pending,
            taken.snapshot,
            taken.carried,
        )
        for piece in carried:
            writer.add(piece.chunk(), piece.body())
        if snapshot is not None:
            assert snapshot.image is not None
            writer.add(snapshot, snapshot.image.pieces())
        position, frame_bytes, consumed = entry.base, 0, 0
        if pending and not entry.broken:
            try:
                if isinstance(checked, WalCorrupt):
                    raise checked
                if isinstance(checked, wal.Records) and isinstance(taken.frames, Small):
                    chunk, position, frame_bytes = small_chunk(
                        tenant_id, entry, pending, taken.frames, checked
                    )
                    writer.add(chunk, (checked.body,))  # leaves `writer` as it was if it raises
                else:
                    position, frame_bytes = write_new_frames(writer, tenant_id, entry, pending)
                consumed = len(pending)
            except WalCorrupt as exc:
                log.error("tenant %s: WAL does not continue the shipped position (%s)", tenant_id, exc)
                entry.broken = True
        if snapshot is None and not consumed and not carried:
            return None
        times = [t for c in carried for _, t in c.commits] + [t for _, t in pending[:consumed]]
        return Capture(tenant_id, entry, snapshot, position, consumed, times, frame_bytes, carried)

    def upload(self, writer: SegmentWriter) -> None:
        """Finish `writer`'s segment, upload it and record its chunks in the catalog.
        Raises ReplicaError (ReplicaFenced: this writer's incarnation was fenced), and what the
        catalog raises."""
        if self.fenced is not None:
            raise self.fenced
        now = time.time()
        meta: dict[str, object] = {"server": self.server_id, "created": now}
        if self.writer is not None:
            meta.update(self.writer.meta())
        data, refs = writer.finish(meta)
        with data:
            size = data.seek(0, 2)
            data.seek(0)
            if self.writer is None:
                self._seq += 1
                key = f"segments/{int(now * 1000):013d}-{self.server_id}-{self._seq:08d}.seg"
                self.replica.put_file(key, data)
            else:
                key = self._create(self.writer, data)
        self.catalog.add_segment(key, now, refs)
        self._refs += refs
        BACKUP_SEGMENTS.inc()
        BACKUP_SEGMENT_BYTES.inc(size)

    def _create(self, writer: Writer, data: IO[bytes]) -> str:
        """Create the segment at the incarnation's next seq; returns its key. A seq taken by a
        segment of our own (an earlier attempt that landed although its answer was lost; its
        commits are in this segment too) is passed over; one taken by a FENCE or by another
        writer fences us. The seq advances only over objects in the replica: no gap, which a
        fencer would not see."""
        if not self._seq_known:
            self._seq, fenced = top(self.replica, writer)  # one LIST when the flusher starts
            self._seq_known = True
            if fenced:
                raise self._fence(writer, writer.key(self._seq))
        while True:
            key = writer.key(self._seq + 1)
            data.seek(0)
            try:
                self.replica.put_file(key, data, if_absent=True)
            except ObjectExists as exc:
                if not written_by(self.replica, key, writer):
                    raise self._fence(writer, key) from exc
                log.info("segment %s is an earlier attempt of ours; shipping at the next seq", key)
                self._seq += 1
                continue
            self._seq += 1
            return key

    def _fence(self, writer: Writer, key: str) -> ReplicaFenced:
        self.fenced = ReplicaFenced(
            f"incarnation {writer.incarnation} of node {writer.node} was fenced at {key!r}: "
            "it ships nothing more (its unshipped commits stay on local disk)",
            key=key,
        )
        log.error("%s", self.fenced)
        if self.on_fenced is not None:
            try:
                self.on_fenced(self.fenced)
            except Exception:
                log.exception("on_fenced hook failed")
        return self.fenced

    def advance(self, captured: list[Capture]) -> None:
        """After every upload succeeded: save each tenant's new position in the catalog, then
        advance the ledger (the captured commits, snapshots and carried chunks are shipped),
        then let go of what was shipped. Raises what the catalog raises (nothing in memory
        changed then)."""
        # Persist first: a position saved ahead of memory is still true (the upload succeeded),
        # while a log dropped on close before its position is saved would resume from a stale one.
        self.catalog.save_positions({c.tenant: c.position for c in captured})
        self.ledger.advance(captured)
        now = time.time()
        lags = [now - t for c in captured for t in c.commit_times]
        for c in captured:
            if c.snapshot is not None:
                BACKUP_SNAPSHOTS.inc()
                if c.snapshot.image is not None:
                    c.snapshot.image.close()  # shipped: free its memory or disk now
            for carried in c.carried:
                if carried.kind == SNAPSHOT:  # a generation's first snapshot waits carried
                    BACKUP_SNAPSHOTS.inc()
                Carry.discard(carried)
        self.quota.add(self._refs)
        self._refs = []
        for lag in lags:
            BACKUP_LAG_SECONDS.observe(lag)
        BACKUP_LAG_MAX.set(max(lags, default=0.0))
        BACKUP_BACKLOG_BYTES.set(self.ledger.backlog_bytes())
