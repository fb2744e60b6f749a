"""Every tenant's WAL stays bounded, with backups or without.

- `WalGuard` (always): a write that would commit while the tenant's WAL file is larger than
  `max_wal_bytes` is refused with WalFull (HTTP 429) and rolled back, and `on_full` is asked to
  fold the WAL back; reads go on, the server's own (trusted) statements are never refused.
- `Checkpointer` (without backups: nothing else ever checkpoints, DESIGN 2 and 7): checkpoints
  (TRUNCATE) a tenant's WAL right after the commit that takes it to `checkpoint_frames`, in the
  committing thread under the tenant's lock (a wal_hook may checkpoint, sqlite.org/c3ref/wal_hook),
  and when the guard asks, off the request path. With backups the shipper checkpoints, and only
  what the replica holds.

So a WAL holds at most `checkpoint_frames` pages plus one transaction without backups, and never
more than `max_wal_bytes` plus one transaction in any case.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial

import apsw

from metrics.instruments import LIMIT_REFUSALS
from tenants.errors import SqlfleetError, WalFull
from tenants.hooks import FleetHooks
from tenants.pool import Handle
from tenants.sandbox import Sandbox

log = logging.getLogger(__name__)

# The tenant's locked handle if it is open and its lock comes free soon, else None; never opens
# it (the fleet's `lease_if_open`).
Lease = Callable[[str], AbstractContextManager[Handle | None]]


@dataclass(frozen=True)
class WalConfig:
    """Built by `ops.settings.Settings` (no defaults here)."""

    checkpoint_frames: int  # without backups: a WAL this many pages long is checkpointed
    max_wal_bytes: int  # a WAL file larger than this takes no writes until it is checkpointed


class WalGuard(FleetHooks):
    """Refuses writes to a tenant whose WAL file is over `max_wal_bytes`. `on_full(tenant_id)` is
    called with each refusal, from the refused thread: it must not block (queue the work)."""

    def __init__(self, max_wal_bytes: int, on_full: Callable[[str], None]) -> None:
        self.max_wal_bytes = max_wal_bytes
        self.on_full = on_full

    def after_open(self, tenant_id: str, conn: apsw.Connection, sandbox: Sandbox) -> None:
        check = partial(self._before_commit, tenant_id, conn.filename_wal, sandbox)
        conn.set_commit_hook(check, id=WalGuard)

    def _before_commit(self, tenant_id: str, wal_path: str, sandbox: Sandbox) -> bool:
        """SQLite's commit hook: False lets the commit go on. Only looks (a commit hook may not
        use the connection); raising rolls the transaction back and reaches the caller."""
        if sandbox.trusted:
            return False  # the server's own work (a migration's commit) always goes through
        try:
            size = os.stat(wal_path).st_size
        except OSError:
            return False  # no WAL file yet: nothing to bound
        if size <= self.max_wal_bytes:
            return False
        LIMIT_REFUSALS.labels("wal_bytes").inc()
        self.on_full(tenant_id)
        raise WalFull(
            f"tenant {tenant_id!r} has {size} bytes of WAL, more than max_wal_bytes "
            f"({self.max_wal_bytes}): writes wait until it is checkpointed, try again shortly"
        )


class Checkpointer(FleetHooks):
    """Checkpoints without backups. Thread-safe; its worker thread lives only while there is work
    (`request`), so there is nothing to start or stop."""

    def __init__(self, config: WalConfig, lease: Lease) -> None:
        self.config = config
        self._lease = lease
        self._lock = threading.Lock()
        self._wanted: set[str] = set()
        self._worker: threading.Thread | None = None

    def after_open(self, tenant_id: str, conn: apsw.Connection, sandbox: Sandbox) -> None:
        conn.set_wal_hook(partial(self._committed, tenant_id))

    def _committed(self, tenant_id: str, conn: apsw.Connection, dbname: str, pages: int) -> int:
        """SQLite's wal_hook, right after each commit: `pages` is the WAL's length."""
        if pages >= self.config.checkpoint_frames:
            checkpoint(tenant_id, conn)
        return apsw.SQLITE_OK

    def request(self, tenant_id: str) -> None:
        """Checkpoint the tenant soon, off the request path, whatever its WAL's length (the guard
        refused a write: its file is over the bound). Never blocks."""
        with self._lock:
            self._wanted.add(tenant_id)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="sqlfleet-checkpointer", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._wanted:
                    self._worker = None
                    return
                tenant_id = self._wanted.pop()
            try:
                with self._lease(tenant_id) as handle:
                    # closed or busy: skipped; its next refused write asks again
                    if handle is not None and handle.conn is not None:
                        checkpoint(tenant_id, handle.conn)
            except SqlfleetError as exc:  # deleted, shutting down
                log.info("tenant %s: checkpoint skipped (%s)", tenant_id, exc.message)


def checkpoint(tenant_id: str, conn: apsw.Connection) -> bool:
    """Fold the whole WAL back into the database and truncate it; the caller holds the tenant's
    lock. False (logged) if SQLite could not (then the WAL stays, and a later commit retries)."""
    try:
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    except apsw.Error as exc:
        log.warning("tenant %s: checkpoint failed (%s); will retry", tenant_id, exc)
        return False
    return True
