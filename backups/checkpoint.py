"""Checkpoints and snapshots: only the shipper checkpoints, under the tenant's handle lock, and
only when every committed frame is durable in the replica (DESIGN 7); a tenant that shipped
enough bytes, or changed and has an old snapshot, gets a new snapshot right after its checkpoint.
At shutdown every fully shipped WAL is checkpointed, so the files left behind are complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

import apsw

from backups import wal
from backups.catalog import BackupCatalog
from backups.continuity import Continuity
from backups.errors import ReplicaError, WalCorrupt
from backups.flush import Flusher
from backups.ledger import Ledger, TenantLog, snapshot_chunk
from tenants.errors import SqlfleetError
from tenants.pool import Handle

log = logging.getLogger(__name__)

# The tenant's locked handle if it is open and its lock comes free soon, else None; never opens it.
Lease = Callable[[str], AbstractContextManager[Handle | None]]


@dataclass(frozen=True)
class Policy:
    checkpoint_frames: int  # a shipped WAL this long is checkpointed
    snapshot_bytes: int  # shipped this many bytes since the last snapshot: a new one
    snapshot_interval: float  # changed, and the last snapshot is this many seconds old: a new one

    def checkpoint_due(self, entry: TenantLog) -> bool:
        return entry.base.wal_frames >= self.checkpoint_frames

    def snapshot_due(self, entry: TenantLog, now: float) -> bool:
        return entry.shipped_bytes >= self.snapshot_bytes or (
            entry.shipped_bytes > 0 and now - entry.base.snapshot_time >= self.snapshot_interval
        )


@dataclass(eq=False)
class Checkpointer:
    """Runs under the caller's flush lock (it may ship through `flusher`), except
    `checkpoint_shipped`, which runs after the last flush."""

    ledger: Ledger
    catalog: BackupCatalog
    continuity: Continuity
    flusher: Flusher
    lease: Lease
    policy: Policy

    def maintain(self, tenants: list[str]) -> None:
        """Restart broken tenants in a new generation, checkpoint WALs whose frames are all
        durable, and snapshot tenants that are due. A tenant that is busy (a long transaction)
        or failing is skipped until a later flush."""
        for tenant_id in tenants:
            with self.ledger.lock:
                entry = self.ledger.logs.get(tenant_id)
                if entry is None or (entry.snapshot is not None and not entry.broken):
                    continue
                checkpoint = self.policy.checkpoint_due(entry)
                due = self.policy.snapshot_due(entry, time.time())
            try:
                if entry.broken:
                    with self.lease(tenant_id) as handle:
                        self.continuity.restart(tenant_id, entry, handle.conn if handle else None)
                elif checkpoint or due:
                    self.checkpoint(tenant_id, entry, snapshot=due)
            except (SqlfleetError, WalCorrupt, OSError, apsw.Error) as exc:  # e.g. no disk for a copy
                log.warning("tenant %s: backup maintenance skipped (%s)", tenant_id, exc)

    def checkpoint(self, tenant_id: str, entry: TenantLog, snapshot: bool) -> None:
        """Checkpoint (TRUNCATE) the tenant's WAL once everything in it is shipped, and with
        `snapshot` queue a snapshot of the result. Skipped (tried again after a later flush)
        when the tenant is closed, busy, replaced, or its last commits cannot be shipped now."""
        with self.lease(tenant_id) as handle:
            if handle is None or handle.conn is None or self.ledger.get(tenant_id) is not entry:
                return  # closed, busy or replaced: try after a later flush
            if entry.pending and not self._ship_now(tenant_id, entry):
                return
            image = self.continuity.spool.copy_database(handle.conn) if snapshot else None
            handle.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
            if wal.read_header(entry.wal_path) is not None:
                # not truncated (should not happen with the handle held): the shipped position
                # still describes this WAL, and resetting it would ship old frames again
                log.warning("tenant %s: checkpoint left the WAL in place; will retry", tenant_id)
                return
            with self.ledger.lock:
                base = replace(entry.base, salts=None, wal_frames=0, seed=(0, 0))
                if image is not None:
                    base = replace(base, snapshot_lsn=base.lsn, snapshot_time=time.time())
                    entry.snapshot = snapshot_chunk(tenant_id, base, entry.page_size, image)
                    self.ledger.dirty.add(tenant_id)
                entry.base = base
            # saved before the handle is released: a close right after may drop the log, and
            # the next open must then resume from the truncated WAL, not the old one
            self.catalog.save_positions({tenant_id: entry.base})

    def _ship_now(self, tenant_id: str, entry: TenantLog) -> bool:
        """Ship the commits made since the flush began, with the tenant's handle held so no more
        arrive: under sustained writes there are always some, and the WAL could otherwise never
        be checkpointed. Holds the tenant's writes for one upload. True if all are shipped."""
        try:
            captured = self.flusher.ship({tenant_id: entry}, [])
        except ReplicaError as exc:
            log.warning("tenant %s: upload before checkpoint failed (%s); will retry", tenant_id, exc)
            return False
        return bool(captured) and not entry.broken and not entry.pending and entry.snapshot is None

    def checkpoint_shipped(self, deadline: float) -> int:
        """Shutdown: checkpoint (TRUNCATE) every open tenant whose WAL frames are all durable in
        the replica, so the files left behind are complete without their WALs. Call after the
        last flush. Tenants with unshipped frames (replica down) keep their WAL; past `deadline`
        (time.monotonic) the rest are left for the next start. Never raises; returns how many
        WALs were truncated."""
        shipped = self.ledger.fully_shipped()
        done = 0
        for tenant_id, entry in shipped:
            if time.monotonic() >= deadline:
                log.warning("shutdown deadline: %d WALs left unchecked-pointed", len(shipped) - done)
                break
            try:
                self.checkpoint(tenant_id, entry, snapshot=False)
            except (SqlfleetError, WalCorrupt, apsw.Error) as exc:
                log.warning("tenant %s: shutdown checkpoint skipped (%s)", tenant_id, exc)
                continue
            done += entry.base.salts is None
        return done
