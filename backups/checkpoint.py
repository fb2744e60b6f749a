"""Checkpoints and snapshots: only the shipper checkpoints, under the tenant's handle lock, and
never loses a frame that is not yet in the replica (DESIGN 7): the commits the last flush did not
ship (under sustained writes there always are some) are first copied into a carried chunk,
durable on local disk (backups.carry), which the next regular flush ships with everything else.
So a checkpoint holds the tenant's writes only for local disk work, never for an upload, and
adds no PUT of its own. A tenant that shipped enough bytes, or changed and has an old snapshot,
gets a new snapshot right after its checkpoint. At shutdown every fully shipped WAL is
checkpointed, so the files left behind are complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

import apsw

from backups.carry import Carry
from backups.catalog import BackupCatalog
from backups.continuity import Continuity, main_file_of
from backups.errors import WalCorrupt
from backups.flush import NewFrames
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
    """Runs under the caller's flush lock, except `checkpoint_shipped`, which runs after the
    last flush."""

    ledger: Ledger
    catalog: BackupCatalog
    continuity: Continuity
    carry: Carry
    lease: Lease
    policy: Policy

    def maintain(self, tenants: list[str]) -> None:
        """Restart broken tenants in a new generation, checkpoint WALs that are due, and snapshot
        tenants that are due. A tenant that is busy (a long transaction) or failing is skipped
        until a later flush."""
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
        """Checkpoint (TRUNCATE) the tenant's WAL, its commits not yet shipped carried first,
        and with `snapshot` queue a snapshot of the result. Skipped (tried again after a later
        flush) when the tenant is closed, busy or replaced. Raises OSError, apsw.Error (e.g. a
        full disk) and WalCorrupt; the tenant is then as before, or its commits carried and
        its WAL not yet truncated (both consistent: the next try goes on from there)."""
        with self.lease(tenant_id) as handle:
            if handle is None or handle.conn is None or self.ledger.get(tenant_id) is not entry:
                return  # closed, busy or replaced: try after a later flush
            conn = handle.conn
            if entry.broken:
                return
            self._carry(tenant_id, entry)
            image = self.continuity.spool.copy_database(conn) if snapshot else None
            try:
                # SQLite's answer, not a read of the WAL after it: once it truncated the WAL, a
                # read that fails must not leave the position describing the WAL that is gone
                frames, _ = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
            except BaseException:
                # it may have failed after copying the whole WAL into the main file (truncating
                # it failed): SQLite then restarts the WAL at the next commit, which continues
                # the base all the same (everything before it is carried: backups.capture.locate)
                if image is not None:
                    image.close()
                with self.ledger.lock:
                    if entry.base.salts is not None:
                        entry.restartable = (entry.base.salts, entry.base.wal_frames)
                raise
            finally:
                # the checkpoint wrote into the main file (also when it failed midway): that is
                # the main file the next open must find (backups.continuity)
                self._note_main_file(tenant_id, entry, conn)
            if frames:
                # not truncated (should not happen with the handle held): the shipped position
                # still describes this WAL, and resetting it would ship old frames again
                log.warning("tenant %s: checkpoint left the WAL in place; will retry", tenant_id)
                if image is not None:
                    image.close()
                return
            with self.ledger.lock:
                retired = entry.base.salts or entry.base.retired  # that WAL may come back (catalog.Position)
                base = replace(entry.base, salts=None, wal_frames=0, seed=(0, 0), retired=retired)
                if image is not None:
                    base = replace(base, snapshot_lsn=base.lsn, snapshot_time=time.time())
                    entry.snapshot = snapshot_chunk(tenant_id, base, entry.page_size, image)
                    self.ledger.dirty.add(tenant_id)
                entry.base = base
            # saved before the handle is released: a close right after may drop the log, and
            # the next open must then resume from the truncated WAL, not the old one
            self.catalog.save_positions({tenant_id: entry.base})

    def _carry(self, tenant_id: str, entry: TenantLog) -> None:
        """Move the commits not yet shipped out of the WAL's way: their frames into a carried
        chunk, durable before this returns, and the tenant's base past them (saved). The caller
        holds the tenant's handle, so no commit arrives meanwhile."""
        with self.ledger.lock:
            pending = list(entry.pending)
        if not pending:
            return
        with NewFrames(tenant_id, entry, pending) as frames:
            carried = self.carry.write(frames.chunk, frames.body())
            position = frames.position
        with self.ledger.lock:
            del entry.pending[: len(pending)]
            entry.carried.append(carried)
            entry.base = position
            self.ledger.dirty.add(tenant_id)
        # a crash from here on finds the WAL continuing this position, and the carried chunk
        self.catalog.save_positions({tenant_id: position})

    def _note_main_file(self, tenant_id: str, entry: TenantLog, conn: apsw.Connection) -> None:
        """Record the main file as the checkpoint left it (a failure is logged: the next open
        then cannot prove continuity and starts a new generation, which is safe)."""
        try:
            main = main_file_of(conn)
            with self.ledger.lock:
                entry.base = replace(entry.base, main=main)
            self.catalog.save_positions({tenant_id: entry.base})
        except Exception as exc:
            log.warning("tenant %s: cannot record its main file after a checkpoint (%s)", tenant_id, exc)

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
            except (SqlfleetError, WalCorrupt, OSError, apsw.Error) as exc:
                log.warning("tenant %s: shutdown checkpoint skipped (%s)", tenant_id, exc)
                continue
            done += entry.base.salts is None
        return done
