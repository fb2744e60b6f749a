"""The shipper's memory, shared by continuity, flush and checkpoint: per tenant, the position its
WAL is shipped to and the commits that follow it; which tenants have something to ship; which
deletions wait to be recorded in the replica. None of those modules keeps tenant state of its own.
Each commit's time is also appended to the commit-times journal (backups.commit_times), where a
crash of the process cannot lose it.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from backups.carry import Carried
from backups.catalog import Position
from backups.commit_times import CommitTimes
from backups.segment import SNAPSHOT, Chunk
from backups.spool import PageImage

CommitHook = Callable[[apsw.Connection, str, int], int]


@dataclass
class TenantLog:
    """A tenant's shipping state in memory. `base` is the position the pending commits follow;
    it is durable in the catalog unless `snapshot` still waits for upload."""

    base: Position
    wal_path: Path
    page_size: int
    pending: list[tuple[int, float]] = field(default_factory=list)  # (WAL frame count, commit time)
    snapshot: Chunk | None = None  # its image waits in the spool (backups.spool)
    # frames a checkpoint took out of the WAL before `base`, durable on local disk, waiting for
    # the next flush (backups.carry)
    carried: list[Carried] = field(default_factory=list)
    shipped_bytes: int = 0  # since the last snapshot
    broken: bool = False  # the WAL no longer continues `base`: needs a new generation
    # (salts, frames) of a WAL a checkpoint that failed may have restarted (backups.capture
    # `restarts`): every frame of it up to `frames` was in the base, none after it
    restartable: tuple[tuple[int, int], int] | None = None

    def may_restart(self) -> bool:
        """Whether the WAL that `base` describes may have been restarted by a checkpoint that
        failed after copying all of it into the main file."""
        base = self.base
        return base.salts is not None and self.restartable == (base.salts, base.wal_frames)

    @property
    def idle(self) -> bool:
        """Nothing to ship and nothing to repair: the catalog's position says all there is."""
        return not self.pending and self.snapshot is None and not self.carried and not self.broken

    def unshipped_bytes(self) -> int:
        """WAL bytes not in the replica yet: carried chunks, and the pending commits (estimated
        from frame counts)."""
        carried = sum(c.frame_bytes for c in self.carried)
        if not self.pending:
            return carried
        start = self.base.wal_frames if self.base.salts else 0
        last = self.pending[-1][0]
        return carried + (last - (start if last >= start else 0)) * self.page_size  # 0: restarted

    def unshipped_times(self, at: float) -> list[float]:
        """The times of the commits at or before `at` that are not in the replica yet (a new
        generation's snapshot waiting counts as one: without it a restore finds the old one)."""
        times = [t for c in self.carried for t in c.moments if t <= at]
        times += [t for _, t in self.pending if t <= at]
        snapshot = self.snapshot
        if snapshot is not None and snapshot.first_lsn == 0 and snapshot.taken_at <= at:
            times.append(snapshot.taken_at)
        return sorted(times)


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
    carried: list[Carried] = field(default_factory=list)  # the entry's carried chunks shipped with it


def snapshot_chunk(tenant_id: str, position: Position, page_size: int, image: PageImage) -> Chunk:
    """The snapshot a generation starts with (or a later one), as `position` describes it."""
    return Chunk(
        tenant_id,
        position.generation,
        SNAPSHOT,
        position.lsn,
        position.lsn,
        page_size,
        image=image,
        taken_at=position.snapshot_time,
    )


class Ledger:
    """Thread-safe: `lock` guards `logs`, `dirty`, `tombstones`, `left` and every TenantLog's fields.
    Callers that read or change several of them as one step hold `lock` themselves."""

    def __init__(self, times: CommitTimes) -> None:
        self.lock = threading.Lock()
        self.times = times
        self.logs: dict[str, TenantLog] = {}
        self.dirty: set[str] = set()  # tenants with something to ship (or to repair)
        self.tombstones: list[Chunk] = []  # deletions not yet recorded in the replica
        self.shipping: list[Chunk] = []  # deletions the flush in progress took (still unshipped)
        # carried chunks whose tenant has no log (any more): found at start, or left by a log
        # that was replaced or dropped; they still belong in the replica
        self.orphans: list[Carried] = []
        # tenants closed with nothing to ship, as they left their files (backups.continuity
        # `Continuity.closed`): what lets this process reopen one without reading its files
        self.left: dict[str, bytes] = {}
        self._last_time = 0.0  # `clock` never goes back, whatever the wall clock does

    def clock(self) -> float:
        """time.time(), never less than a time this ledger gave before: a commit noted before a
        call has a time at or before what the call returns, so `has_unshipped(tenant, clock())`
        sees every commit made so far (the durable-ack gate counts on it)."""
        with self.lock:
            return self._clock()

    def _clock(self) -> float:
        # caller holds the lock
        self._last_time = max(time.time(), self._last_time)
        return self._last_time

    def get(self, tenant_id: str) -> TenantLog | None:
        # No lock: one dict lookup is atomic, and every open asks (the lock is also held for
        # scans of every log, e.g. fully_shipped: an open must not queue behind one).
        return self.logs.get(tenant_id)

    def install(self, tenant_id: str, entry: TenantLog) -> None:
        """Make `entry` the tenant's log (replacing any: its carried chunks still ship); dirty if
        it has something to ship."""
        with self.lock:
            old = self.logs.get(tenant_id)
            if old is not None and old is not entry:
                self.orphans += old.carried
            self.logs[tenant_id] = entry
            if entry.pending or entry.snapshot is not None or entry.carried:
                self.dirty.add(tenant_id)

    def commit_hook(self, tenant_id: str) -> CommitHook:
        """A wal_hook for the tenant's connection: notes each commit with its WAL frame count and
        wall-clock time, in memory and in the commit-times journal. Runs in the committing
        thread; cheap: one lock and one append, and one write to the journal. The journal's key
        needs the WAL's salts: those of the shipped position while the WAL continues it (no
        checkpoint since), else read from the WAL header through SQLite's own descriptor (each
        read would hand the GIL over twice more, so not on every commit)."""

        def on_commit(conn: apsw.Connection, dbname: str, frames: int) -> int:
            now, salts = self._note_commit(tenant_id, frames)
            # after the ledger: a record in a file older than a flush's cut is then one of the
            # commits that flush takes (backups.commit_times)
            if salts is None:
                try:
                    complete, header = conn.read("main", 1, 0, 24)
                except apsw.Error:
                    complete = False
                if complete:
                    salts = struct.unpack(">II", header[16:24])
            if salts is not None:
                self.times.note(tenant_id, salts, frames, now)
            return apsw.SQLITE_OK

        return on_commit

    def note_commit(self, tenant_id: str, frames: int) -> float:
        """A commit, now, that left the WAL `frames` frames long; ignored for a tenant without a
        log. Returns its time."""
        return self._note_commit(tenant_id, frames)[0]

    def _note_commit(self, tenant_id: str, frames: int) -> tuple[float, tuple[int, int] | None]:
        """`note_commit`, and the WAL's salts if the tenant's log knows them: its WAL continues
        the shipped position (no checkpoint since; one resets `base.salts`, and one that failed
        may have restarted the WAL with new salts)."""
        with self.lock:
            now = self._clock()
            entry = self.logs.get(tenant_id)
            if entry is None:
                return now, None
            entry.pending.append((frames, now))
            self.dirty.add(tenant_id)
            return now, None if entry.broken or entry.may_restart() else entry.base.salts

    def take(self) -> tuple[dict[str, TenantLog], list[Chunk]]:
        """The logs of every dirty tenant (in tenant order: a flush does the same for the same
        state, so a seed of the fault simulation replays exactly) and every waiting deletion,
        clearing both: a flush owns them until it ships them or gives them back (`give_back`)."""
        with self.lock:
            dirty, self.dirty = self.dirty, set()
            logs = {t: self.logs[t] for t in sorted(dirty) if t in self.logs}
            tombstones, self.tombstones = self.tombstones, []
            self.shipping = list(tombstones)
        return logs, tombstones

    def take_orphans(self) -> list[Carried]:
        """Every orphaned carried chunk, clearing the list: a flush owns them until it ships
        them or gives them back."""
        with self.lock:
            orphans, self.orphans = self.orphans, []
        return orphans

    def give_back(self, tenants: set[str], tombstones: list[Chunk], orphans: Sequence[Carried] = ()) -> None:
        """After a failed flush: the tenants are dirty again, the deletions and orphaned chunks
        wait again, first."""
        with self.lock:
            self.dirty |= tenants
            self.tombstones[:0] = tombstones
            self.shipping = []
            self.orphans[:0] = orphans

    def advance(self, captured: list[Capture]) -> None:
        """After the captures' chunks are in the replica and their positions saved: each tenant's
        shipped commits, snapshot and carried chunks are done, its base moves on, and it stays
        dirty if more came meanwhile. All or nothing (one step under the lock)."""
        with self.lock:
            self.shipping = []  # the flush's deletions are in the replica too
            for c in captured:
                entry = c.entry
                del entry.pending[: c.consumed]
                if c.snapshot is not None and c.snapshot is entry.snapshot:
                    entry.snapshot = None
                    entry.shipped_bytes = 0
                shipped = {id(k) for k in c.carried}
                entry.carried = [k for k in entry.carried if id(k) not in shipped]
                entry.shipped_bytes += c.frame_bytes + sum(k.frame_bytes for k in c.carried)
                entry.base = c.position
                if entry.pending or entry.carried:
                    self.dirty.add(c.tenant)

    def oldest_pending(self, default: float) -> float:
        """The commit time of the oldest commit not yet in the replica, of any tenant."""
        with self.lock:
            oldest = [e.pending[0][1] for e in self.logs.values() if e.pending]
            oldest += [c.commits[0][1] for e in self.logs.values() for c in e.carried[:1] if c.commits]
            return min(oldest, default=default)

    def unshipped_times(self, tenant_id: str, at: float) -> list[float]:
        """See TenantLog.unshipped_times, with the tenant's orphaned carried chunks."""
        with self.lock:
            entry = self.logs.get(tenant_id)
            times = entry.unshipped_times(at) if entry is not None else []
            times += [t for c in self.orphans if c.tenant == tenant_id for t in c.moments if t <= at]
        return sorted(times)

    def has_unshipped(self, tenant_id: str, at: float) -> bool:
        """Whether a commit of the tenant at or before `at` is not in the replica yet (pending,
        carried, orphaned, or its generation's first snapshot waiting): `unshipped_times`
        without building the list. Cheap: pending commits are in time order (`clock`)."""
        with self.lock:
            entry = self.logs.get(tenant_id)
            if entry is not None:
                if entry.pending and entry.pending[0][1] <= at:
                    return True
                snapshot = entry.snapshot
                if snapshot is not None and snapshot.first_lsn == 0 and snapshot.taken_at <= at:
                    return True
                if any(t <= at for c in entry.carried for t in c.moments):
                    return True
            if any(t.tenant == tenant_id and t.taken_at <= at for t in [*self.tombstones, *self.shipping]):
                return True  # its deletion (the durable-ack gate holds a delete's answer for it)
            return any(c.tenant == tenant_id and any(t <= at for t in c.moments) for c in self.orphans)

    def oldest_unshipped(self, tenant_id: str) -> float | None:
        """The time of the tenant's oldest commit not in the replica yet (as `has_unshipped`
        counts them), or None. Cheap enough for every commit: O(1) unless carried or orphaned
        chunks wait (rare, few)."""
        with self.lock:
            entry = self.logs.get(tenant_id)
            times = [t for c in self.orphans if c.tenant == tenant_id for t in c.moments[:1]]
            if entry is not None:
                times += [t for c in entry.carried for t in c.moments[:1]]
                if entry.pending:
                    times.append(entry.pending[0][1])
                snapshot = entry.snapshot
                if snapshot is not None and snapshot.first_lsn == 0:
                    times.append(snapshot.taken_at)
        return min(times, default=None)

    def add_tombstone(self, chunk: Chunk) -> None:
        with self.lock:
            self.tombstones.append(chunk)

    def deletion_pending(self, tenant_id: str) -> bool:
        with self.lock:
            return any(t.tenant == tenant_id for t in [*self.tombstones, *self.shipping])

    def drop_if_idle(self, tenant_id: str) -> TenantLog | None:
        """Drop the tenant's log if it has nothing left to ship (keeps memory flat at 100k
        tenants); the log dropped, or None."""
        with self.lock:
            entry = self.logs.get(tenant_id)
            if entry is not None and entry.idle:
                del self.logs[tenant_id]
                return entry
            return None

    def drop(self, tenant_id: str, entry: TenantLog) -> None:
        """Drop the tenant's log if it is still `entry` (not replaced meanwhile); its carried
        chunks still ship."""
        with self.lock:
            if self.logs.get(tenant_id) is entry:
                del self.logs[tenant_id]
                self.orphans += entry.carried

    def forget(self, tenant_id: str) -> None:
        """Drop the tenant's log (its carried chunks still ship)."""
        with self.lock:
            entry = self.logs.pop(tenant_id, None)
            self.left.pop(tenant_id, None)
            self.dirty.discard(tenant_id)
            if entry is not None:
                self.orphans += entry.carried

    def backlog_bytes(self, tenant_id: str | None = None) -> int:
        """Unshipped WAL bytes (estimated from frame counts) of one tenant or all."""
        if tenant_id is not None and tenant_id not in self.logs:
            return 0  # every write lease asks: a closed or idle tenant's answer takes no lock
        with self.lock:
            if tenant_id is None:
                return sum(e.unshipped_bytes() for e in self.logs.values())
            entry = self.logs.get(tenant_id)
            return entry.unshipped_bytes() if entry is not None else 0

    def fully_shipped(self) -> list[tuple[str, TenantLog]]:
        """Tenants whose WAL holds frames, every one of them durable in the replica."""
        with self.lock:
            return [(t, e) for t, e in self.logs.items() if e.base.salts is not None and e.idle]
