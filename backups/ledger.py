"""The shipper's memory, shared by continuity, flush and checkpoint: per tenant, the position its
WAL is shipped to and the commits that follow it; which tenants have something to ship; which
deletions wait to be recorded in the replica. None of those modules keeps tenant state of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from backups.catalog import Position
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
    shipped_bytes: int = 0  # since the last snapshot
    broken: bool = False  # the WAL no longer continues `base`: needs a new generation

    @property
    def idle(self) -> bool:
        """Nothing to ship and nothing to repair: the catalog's position says all there is."""
        return not self.pending and self.snapshot is None and not self.broken

    def unshipped_bytes(self) -> int:
        """WAL bytes of the pending commits, estimated from frame counts."""
        if not self.pending:
            return 0
        start = self.base.wal_frames if self.base.salts else 0
        return (self.pending[-1][0] - start) * self.page_size


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
    """Thread-safe: `lock` guards `logs`, `dirty`, `tombstones` and every TenantLog's fields.
    Callers that read or change several of them as one step hold `lock` themselves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.logs: dict[str, TenantLog] = {}
        self.dirty: set[str] = set()  # tenants with something to ship (or to repair)
        self.tombstones: list[Chunk] = []  # deletions not yet recorded in the replica

    def get(self, tenant_id: str) -> TenantLog | None:
        with self.lock:
            return self.logs.get(tenant_id)

    def install(self, tenant_id: str, entry: TenantLog) -> None:
        """Make `entry` the tenant's log (replacing any); dirty if it has something to ship."""
        with self.lock:
            self.logs[tenant_id] = entry
            if entry.pending or entry.snapshot is not None:
                self.dirty.add(tenant_id)

    def commit_hook(self, tenant_id: str) -> CommitHook:
        """A wal_hook for the tenant's connection: notes each commit with its WAL frame count and
        wall-clock time. Runs in the committing thread; cheap (one lock, one append)."""

        def on_commit(conn: apsw.Connection, dbname: str, frames: int) -> int:
            self.note_commit(tenant_id, frames)
            return apsw.SQLITE_OK

        return on_commit

    def note_commit(self, tenant_id: str, frames: int) -> None:
        """A commit, now, that left the WAL `frames` frames long; ignored for a tenant without a log."""
        now = time.time()
        with self.lock:
            entry = self.logs.get(tenant_id)
            if entry is not None:
                entry.pending.append((frames, now))
                self.dirty.add(tenant_id)

    def take(self) -> tuple[dict[str, TenantLog], list[Chunk]]:
        """The logs of every dirty tenant and every waiting deletion, clearing both: a flush
        owns them until it ships them or gives them back (`give_back`)."""
        with self.lock:
            dirty, self.dirty = self.dirty, set()
            logs = {t: self.logs[t] for t in dirty if t in self.logs}
            tombstones, self.tombstones = self.tombstones, []
        return logs, tombstones

    def give_back(self, tenants: set[str], tombstones: list[Chunk]) -> None:
        """After a failed flush: the tenants are dirty again and the deletions wait again, first."""
        with self.lock:
            self.dirty |= tenants
            self.tombstones[:0] = tombstones

    def oldest_pending(self, default: float) -> float:
        """The commit time of the oldest commit not yet shipped, of any tenant."""
        with self.lock:
            return min((e.pending[0][1] for e in self.logs.values() if e.pending), default=default)

    def add_tombstone(self, chunk: Chunk) -> None:
        with self.lock:
            self.tombstones.append(chunk)

    def deletion_pending(self, tenant_id: str) -> bool:
        with self.lock:
            return any(t.tenant == tenant_id for t in self.tombstones)

    def drop_if_idle(self, tenant_id: str) -> None:
        """Drop the tenant's log if it has nothing left to ship (keeps memory flat at 100k tenants)."""
        with self.lock:
            entry = self.logs.get(tenant_id)
            if entry is not None and entry.idle:
                del self.logs[tenant_id]

    def drop(self, tenant_id: str, entry: TenantLog) -> None:
        """Drop the tenant's log if it is still `entry` (not replaced meanwhile)."""
        with self.lock:
            if self.logs.get(tenant_id) is entry:
                del self.logs[tenant_id]

    def forget(self, tenant_id: str) -> None:
        with self.lock:
            self.logs.pop(tenant_id, None)
            self.dirty.discard(tenant_id)

    def backlog_bytes(self, tenant_id: str | None = None) -> int:
        """Unshipped WAL bytes (estimated from frame counts) of one tenant or all."""
        with self.lock:
            if tenant_id is None:
                return sum(e.unshipped_bytes() for e in self.logs.values())
            entry = self.logs.get(tenant_id)
            return entry.unshipped_bytes() if entry is not None else 0

    def fully_shipped(self) -> list[tuple[str, TenantLog]]:
        """Tenants whose WAL holds frames, every one of them durable in the replica."""
        with self.lock:
            return [(t, e) for t, e in self.logs.items() if e.base.salts is not None and e.idle]
