"""WAL shipping: every commit of every tenant reaches the replica within about a flush interval.

- `after_open` installs a wal_hook on each tenant connection: every commit is noted with its WAL
  frame count and wall-clock time (the hook runs in the committing thread, under the handle lock).
- Each flush packs the new committed frames of all dirty tenants (and pending snapshots) into one
  shared segment object, so PUTs per flush do not grow with the number of tenants.
- Nothing advances until the PUT succeeded: on failure the frames stay in the WAL (the backlog
  lives on local disk) and the next flush re-reads them from the last durable position.
- Only the shipper checkpoints, under the tenant's handle lock, and only when every committed
  frame is durable in the replica.
- Continuity: when the server cannot prove the WAL on disk continues what it shipped (first open
  after a start with an unknown WAL, a restore, a file changed behind its back), the tenant starts
  a new generation with a snapshot — never a silent gap.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import apsw

from backups import wal
from backups.catalog import BackupCatalog, Position
from backups.replica import ReplicaClient, ReplicaError
from backups.segment import FRAMES, SNAPSHOT, TOMBSTONE, Chunk, PageWrite, pack
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
from tenants.errors import SqlfleetError
from tenants.hooks import FleetHooks
from tenants.layout import Layout
from tenants.pool import Handle
from tenants.sandbox import Sandbox

log = logging.getLogger(__name__)
Lease = Callable[[str], AbstractContextManager[Handle | None]]


@dataclass(frozen=True)
class ShipperConfig:
    flush_interval: float = 1.0
    segment_max_bytes: int = 64 << 20
    checkpoint_frames: int = 1000
    snapshot_bytes: int = 256 << 20
    snapshot_interval: float = 86400.0
    max_backlog_bytes: int = 1 << 30


PERIODIC_SECONDS = 60.0


def new_generation_id() -> str:
    """Sortable by creation time, unique across servers."""
    return f"{int(time.time() * 1000):013x}{secrets.token_hex(4)}"


@dataclass
class TenantLog:
    """A tenant's shipping state in memory. `base` is the position the pending commits follow;
    it is durable in the catalog unless `snapshot` still waits for upload."""

    base: Position
    wal_path: Path
    page_size: int
    pending: list[tuple[int, float]] = field(default_factory=list)  # (WAL frame count, commit time)
    snapshot: Chunk | None = None
    shipped_bytes: int = 0  # since the last snapshot
    broken: bool = False  # the WAL no longer continues `base`: needs a new generation


class Shipper(FleetHooks):
    """Thread-safe. `start()` runs the flush loop in a thread; `flush()` may also be called directly."""

    def __init__(self, replica: ReplicaClient, catalog: BackupCatalog, layout: Layout,
                 config: ShipperConfig, server_id: str) -> None:  # fmt: skip
        self.replica = replica
        self.catalog = catalog
        self.layout = layout
        self.config = config
        self.server_id = server_id
        self.lease: Lease | None = None  # set by ops: lease an open tenant's handle (None if closed)
        self.periodic: Callable[[], object] | None = None  # set by ops: run about once a minute (retention)
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._logs: dict[str, TenantLog] = {}
        self._dirty: set[str] = set()
        self._tombstones: list[Chunk] = []  # deletions not yet recorded in the replica
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_success = 0.0
        self.failures = 0
        self.failed_in_a_row = 0  # flushes whose upload failed since the last that succeeded

    # -- hooks from tenants ------------------------------------------------------------------------

    def after_create(self, tenant_id: str, path: Path) -> None:
        image = path.read_bytes()  # not open anywhere yet: reading the main file is safe
        position = Position(new_generation_id(), 0, None, 0, (0, 0), 0, time.time())
        self._begin(tenant_id, position, _page_size(image), image)

    def after_open(self, tenant_id: str, conn: apsw.Connection, sandbox: Sandbox) -> None:
        conn.set_wal_hook(self._hook_for(tenant_id))
        with self._lock:
            entry = self._logs.get(tenant_id)
            if entry is not None and not entry.broken:
                return  # evicted and reopened: the in-memory log still continues this WAL
        position = self.catalog.position(tenant_id)
        path = self._wal_path(tenant_id)
        header = wal.read_header(path)
        if position is not None and position.salts is not None and header is not None:
            resumed = self._resume(tenant_id, position, header, path)
            if resumed:
                return
        if position is not None and position.salts is None and header is None:
            with self._lock:
                self._logs[tenant_id] = TenantLog(position, path, _db_page_size(conn))
            return
        self._new_generation(tenant_id, conn, "continuity not provable" if position else "first open")

    def _resume(self, tenant_id: str, position: Position, header: wal.WalHeader, path: Path) -> bool:
        """Continue `position` if the WAL on disk provably extends it (same salts, same checksum
        at the last shipped frame); queue what was committed after it (crash before shipping)."""
        if (header.salt1, header.salt2) != position.salts:
            return False
        frames = wal.tail(path, header, position.wal_frames, position.seed)
        if frames is None:
            return False
        recovered_at = path.stat().st_mtime  # exact commit times died with the old process
        pending = [(f.index + 1, recovered_at) for f in frames if f.commit_size]
        with self._lock:
            self._logs[tenant_id] = TenantLog(position, path, header.page_size, pending)
            if pending:
                self._dirty.add(tenant_id)
        return True

    def writable(self, tenant_id: str) -> bool:
        """False while the tenant's unshipped WAL exceeds the backlog bound (replica down)."""
        return self.backlog_bytes(tenant_id) <= self.config.max_backlog_bytes

    def before_close(self, tenant_id: str, conn: apsw.Connection) -> None:
        """Drop the in-memory log of a closing tenant with nothing left to ship: the catalog's
        position suffices to resume when it reopens (keeps memory flat at 100k tenants)."""
        with self._lock:
            entry = self._logs.get(tenant_id)
            if entry is not None and not entry.pending and entry.snapshot is None and not entry.broken:
                del self._logs[tenant_id]

    def before_delete(self, tenant_id: str) -> None:
        """Ship what is left, then forget the live state (the backups themselves stay)."""
        self.flush()
        self.forget(tenant_id)

    def after_delete(self, tenant_id: str) -> None:
        """Record the deletion in the bucket, so disaster recovery does not resurrect the tenant
        (an explicit restore to a moment before it still works). If the replica is down the
        record waits, like frames do, for a later flush."""
        with self._lock:
            self._tombstones.append(Chunk(tenant_id, "", TOMBSTONE, 0, 0, 0, taken_at=time.time()))
        self.flush()

    def deletion_pending(self, tenant_id: str) -> bool:
        """Whether the tenant's deletion still waits to be recorded in the replica."""
        with self._lock:
            return any(t.tenant == tenant_id for t in self._tombstones)

    def _hook_for(self, tenant_id: str) -> Callable[[apsw.Connection, str, int], int]:
        def on_commit(conn: apsw.Connection, dbname: str, frames: int) -> int:
            now = time.time()
            with self._lock:
                entry = self._logs.get(tenant_id)
                if entry is not None:
                    entry.pending.append((frames, now))
                    self._dirty.add(tenant_id)
            return apsw.SQLITE_OK

        return on_commit

    # -- generations and snapshots ---------------------------------------------------------------

    def _new_generation(self, tenant_id: str, conn: apsw.Connection, reason: str) -> None:
        """Snapshot the connection's current committed state as LSN 0 of a new generation."""
        path = self._wal_path(tenant_id)
        header, frames = wal.scan(path)
        image = conn.serialize("main") or b""
        salts = (header.salt1, header.salt2) if header else None
        seed = frames[-1].checksum if frames else header.checksum if header else (0, 0)
        position = Position(new_generation_id(), 0, salts, len(frames), seed, 0, time.time())
        log.info("tenant %s: new backup generation %s (%s)", tenant_id, position.generation, reason)
        self._begin(tenant_id, position, _db_page_size(conn), image)

    @staticmethod
    def _snapshot_chunk(tenant_id: str, position: Position, page_size: int, image: bytes) -> Chunk:
        return Chunk(tenant_id, position.generation, SNAPSHOT, position.lsn, position.lsn, page_size,
                     image=image, taken_at=position.snapshot_time)  # fmt: skip

    def _begin(self, tenant_id: str, position: Position, page_size: int, image: bytes) -> None:
        snapshot = self._snapshot_chunk(tenant_id, position, page_size, image)
        with self._lock:
            self._logs[tenant_id] = TenantLog(
                position, self._wal_path(tenant_id), page_size, snapshot=snapshot
            )
            self._dirty.add(tenant_id)

    def _wal_path(self, tenant_id: str) -> Path:
        return Path(f"{self.layout.tenant_path(tenant_id)}-wal")

    # -- flushing -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sqlfleet-shipper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop after one last flush. Idempotent; never raises (shutdown goes on)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._flush_logged()

    def _flush_logged(self) -> bool:
        # A bug in one flush must not end shipping for good (the loop) or stop a shutdown.
        try:
            return self.flush()
        except Exception:
            log.exception("backup flush failed; will retry")
            return False

    def _run(self) -> None:
        delay = self.config.flush_interval
        last_periodic = time.monotonic()
        while not self._stop.wait(delay):
            started = time.monotonic()
            ok = self._flush_logged()
            # flushes start every interval (not an interval after the last one ended), so the lag
            # is about one interval plus one flush, not one interval plus two
            spent = time.monotonic() - started
            delay = max(0.0, self.config.flush_interval - spent) if ok else min(30.0, max(delay, 0.5) * 2)
            if ok and self.periodic is not None and time.monotonic() - last_periodic >= PERIODIC_SECONDS:
                last_periodic = time.monotonic()
                try:
                    self.periodic()
                except ReplicaError as exc:
                    log.warning("backup maintenance failed (%s); will retry", exc)

    def flush(self) -> bool:
        """Ship every dirty tenant's new commits in shared segments. Returns False if an upload
        failed (nothing was lost: the next flush retries from the last durable position)."""
        with self._flush_lock:
            with self._lock:
                dirty, self._dirty = self._dirty, set()
                logs = {t: self._logs[t] for t in dirty if t in self._logs}
                tombstones, self._tombstones = self._tombstones, []
            captured = [c for c in (self._capture(t, entry) for t, entry in logs.items()) if c is not None]
            broken = [t for t, entry in logs.items() if entry.broken]
            if captured or tombstones:
                if self.failed_in_a_row:
                    BACKUP_UPLOAD_RETRIES.inc()
                try:
                    self._upload(captured, tombstones)
                except ReplicaError as exc:
                    self._failed(exc, captured, tombstones, broken)
                    return False
                self.last_success = time.time()
                self.failed_in_a_row = 0
                self._advance(captured)
            self._maintain(list(dict.fromkeys([*broken, *(c.tenant for c in captured)])))
            return True

    def _failed(self, exc: ReplicaError, captured: list[Capture], tombstones: list[Chunk],
                broken: list[str]) -> None:  # fmt: skip
        self.failures += 1
        self.failed_in_a_row += 1
        BACKUP_UPLOAD_ERRORS.inc()
        log.warning("backup upload failed (%s); will retry", exc)
        with self._lock:
            self._dirty |= {c.tenant for c in captured} | set(broken)
            self._tombstones[:0] = tombstones
            oldest = min((e.pending[0][1] for e in self._logs.values() if e.pending), default=time.time())
        BACKUP_LAG_MAX.set(time.time() - oldest)  # how far behind the replica is, while it is down
        BACKUP_BACKLOG_BYTES.set(self.backlog_bytes())

    def _capture(self, tenant_id: str, entry: TenantLog) -> Capture | None:
        with self._lock:
            pending = list(entry.pending)
            snapshot = entry.snapshot
        chunks = [snapshot] if snapshot is not None else []
        position = entry.base
        if pending and not entry.broken:
            try:
                frames_chunk, position = self._read_new_frames(tenant_id, entry, pending)
                chunks.append(frames_chunk)
            except wal.WalCorrupt as exc:
                log.error("tenant %s: WAL does not continue the shipped position (%s)", tenant_id, exc)
                entry.broken = True
        if not chunks:
            return None
        return Capture(tenant_id, entry, chunks, position, len(pending), [t for _, t in pending])

    def _read_new_frames(self, tenant_id: str, entry: TenantLog, pending: list[tuple[int, float]]
                         ) -> tuple[Chunk, Position]:  # fmt: skip
        base = entry.base
        stop = pending[-1][0]
        with open(entry.wal_path, "rb") as f:  # one open per tenant and flush: header, then frames
            header = wal.parse_header(f.read(wal.WAL_HEADER_SIZE))
            if header is None:
                raise wal.WalCorrupt("WAL header missing")
            salts = (header.salt1, header.salt2)
            if base.salts == salts:
                start, seed = base.wal_frames, base.seed
            elif base.salts is None:  # the WAL restarted after our checkpoint
                start, seed = 0, header.checksum
            else:
                raise wal.WalCorrupt("WAL salts changed without a checkpoint")
            frames = wal.read_frames_from(f, header, start, stop, seed)
        times = dict(pending)
        commits = [(base.lsn + 1 + i, times.get(f.index + 1, time.time()))
                   for i, f in enumerate(frames) if f.commit_size]  # fmt: skip
        writes = [PageWrite(f.page_no, f.commit_size, f.data) for f in frames]
        chunk = Chunk(tenant_id, base.generation, FRAMES, base.lsn + 1, base.lsn + len(frames),
                      header.page_size, commits, writes)  # fmt: skip
        position = replace(
            base, lsn=base.lsn + len(frames), salts=salts, wal_frames=stop, seed=frames[-1].checksum
        )
        return chunk, position

    def _upload(self, captured: list[Capture], extra: list[Chunk]) -> None:
        """One segment for everything, split only past segment_max_bytes (never inside a
        tenant's capture: its snapshot and frames land together)."""
        batch, size = list(extra), 0
        for capture in captured:
            batch += capture.chunks
            size += capture.size
            if size >= self.config.segment_max_bytes:
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

    def _advance(self, captured: list[Capture]) -> None:
        # Persist first: a position saved ahead of memory is still true (the upload succeeded),
        # while a log dropped on close before its position is saved would resume from a stale one.
        self.catalog.save_positions({c.tenant: c.position for c in captured})
        now = time.time()
        lags = [now - t for c in captured for t in c.commit_times]
        with self._lock:
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
                    self._dirty.add(c.tenant)
        for lag in lags:
            BACKUP_LAG_SECONDS.observe(lag)
        BACKUP_LAG_MAX.set(max(lags, default=0.0))
        BACKUP_BACKLOG_BYTES.set(self.backlog_bytes())

    def _maintain(self, tenants: list[str]) -> None:
        """Restart broken tenants in a new generation, checkpoint WALs whose frames are all
        durable, and snapshot tenants that are due. A tenant that is busy (a long transaction)
        or failing is skipped until a later flush."""
        for tenant_id in tenants:
            with self._lock:
                entry = self._logs.get(tenant_id)
                if entry is None or (entry.snapshot is not None and not entry.broken):
                    continue
                checkpoint = entry.base.wal_frames >= self.config.checkpoint_frames
                due = entry.shipped_bytes >= self.config.snapshot_bytes or (
                    entry.shipped_bytes
                    and time.time() - entry.base.snapshot_time >= self.config.snapshot_interval
                )
            try:
                if entry.broken:
                    self._restart(tenant_id, entry)
                elif checkpoint or due:
                    self._checkpoint(tenant_id, entry, snapshot=bool(due))
            except (SqlfleetError, wal.WalCorrupt) as exc:
                log.warning("tenant %s: backup maintenance skipped (%s)", tenant_id, exc)

    def _restart(self, tenant_id: str, entry: TenantLog) -> None:
        """A new generation for a tenant whose WAL no longer continues what was shipped: now if
        it is open, else on its next open (its log is dropped, so after_open decides)."""
        with self._leased(tenant_id) as handle:
            if handle is not None and handle.conn is not None:
                self._new_generation(tenant_id, handle.conn, "WAL changed behind the server's back")
                return
            with self._lock:
                if self._logs.get(tenant_id) is entry:
                    del self._logs[tenant_id]

    def _checkpoint(self, tenant_id: str, entry: TenantLog, snapshot: bool) -> None:
        with self._leased(tenant_id) as handle:
            if handle is None or handle.conn is None or self._logs.get(tenant_id) is not entry:
                return  # closed, busy or replaced: try after a later flush
            if entry.pending and not self._ship_now(tenant_id, entry):
                return
            image = handle.conn.serialize("main") or b"" if snapshot else None
            handle.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
            if wal.read_header(entry.wal_path) is not None:
                # not truncated (should not happen with the handle held): the shipped position
                # still describes this WAL, and resetting it would ship old frames again
                log.warning("tenant %s: checkpoint left the WAL in place; will retry", tenant_id)
                return
            with self._lock:
                base = replace(entry.base, salts=None, wal_frames=0, seed=(0, 0))
                if image is not None:
                    base = replace(base, snapshot_lsn=base.lsn, snapshot_time=time.time())
                    entry.snapshot = self._snapshot_chunk(tenant_id, base, entry.page_size, image)
                    self._dirty.add(tenant_id)
                entry.base = base
            # saved before the handle is released: a close right after may drop the log, and
            # the next open must then resume from the truncated WAL, not the old one
            self.catalog.save_positions({tenant_id: entry.base})

    def _ship_now(self, tenant_id: str, entry: TenantLog) -> bool:
        """Ship the commits made since the flush began, with the tenant's handle held so no more
        arrive: under sustained writes there are always some, and the WAL could otherwise never
        be checkpointed. Holds the tenant's writes for one upload. True if all are shipped."""
        capture = self._capture(tenant_id, entry)
        if capture is None or entry.broken:
            return False
        try:
            self._upload([capture], [])
        except ReplicaError as exc:
            log.warning("tenant %s: upload before checkpoint failed (%s); will retry", tenant_id, exc)
            return False
        self._advance([capture])
        return not entry.pending and entry.snapshot is None

    def checkpoint_shipped(self, deadline: float) -> int:
        """Shutdown: checkpoint (TRUNCATE) every open tenant whose WAL frames are all durable in
        the replica, so the files left behind are complete without their WALs. Call after `stop`
        (its last flush ships what is left). Tenants with unshipped frames (replica down) keep
        their WAL; past `deadline` (time.monotonic) the rest are left for the next start.
        Never raises; returns how many WALs were truncated."""
        with self._lock:
            shipped = [(t, e) for t, e in self._logs.items()
                       if e.base.salts is not None and not (e.pending or e.snapshot or e.broken)]  # fmt: skip
        done = 0
        for tenant_id, entry in shipped:
            if time.monotonic() >= deadline:
                log.warning("shutdown deadline: %d WALs left unchecked-pointed", len(shipped) - done)
                break
            try:
                self._checkpoint(tenant_id, entry, snapshot=False)
            except (SqlfleetError, wal.WalCorrupt, apsw.Error) as exc:
                log.warning("tenant %s: shutdown checkpoint skipped (%s)", tenant_id, exc)
                continue
            done += entry.base.salts is None
        return done

    @contextmanager
    def _leased(self, tenant_id: str) -> Iterator[Handle | None]:
        if self.lease is None:
            yield None
            return
        with self.lease(tenant_id) as handle:
            yield handle

    # -- state for others -----------------------------------------------------------------------

    def backlog_bytes(self, tenant_id: str | None = None) -> int:
        """Unshipped WAL bytes (estimated from frame counts) of one tenant or all."""
        with self._lock:
            if tenant_id is None:
                entries = list(self._logs.values())
            else:
                entries = [self._logs[tenant_id]] if tenant_id in self._logs else []
            total = 0
            for e in entries:
                if e.pending:
                    start = e.base.wal_frames if e.base.salts else 0
                    total += (e.pending[-1][0] - start) * e.page_size
            return total

    def forget(self, tenant_id: str) -> None:
        """Drop live state so the next open starts a new generation (after an in-place restore)."""
        with self._lock:
            self._logs.pop(tenant_id, None)
            self._dirty.discard(tenant_id)
        self.catalog.forget_position(tenant_id)


@dataclass
class Capture:
    tenant: str
    entry: TenantLog
    chunks: list[Chunk]
    position: Position
    consumed: int
    commit_times: list[float]

    @property
    def size(self) -> int:
        return sum(len(c.image) + len(c.frames) * (c.page_size + 8) for c in self.chunks)


def _page_size(image: bytes) -> int:
    if len(image) >= 18:
        size = int.from_bytes(image[16:18], "big")
        return 65536 if size == 1 else size or 4096
    return 4096


def _db_page_size(conn: apsw.Connection) -> int:
    return int(conn.execute("PRAGMA page_size").fetchall()[0][0])  # type: ignore[arg-type]


def server_id(layout: Layout) -> str:
    """A stable random id for this data dir, so segment keys of several servers never collide."""
    path = layout.system_dir / "server-id"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_hex(4))
        os.replace(tmp, path)
    return path.read_text().strip()
