"""Export: a consistent, plain copy of a live tenant, made in short steps.

SQLite's backup API copies the tenant's pages through its own (pooled) connection, `step_pages`
at a time, each step under the tenant's lease, so writers wait one step at most. Every write to
a tenant goes through that same connection, and SQLite then updates the pages already copied as
part of the write (sqlite.org/c3ref/backup_finish.html: "the destination is automatically
updated"), so commits between steps do not restart the copy. It restarts only when that
connection went away between steps (evicted, discarded by a restore); after `max_restarts`
restarts the rest is copied in one step under the lease, so an export always finishes.

The copy is consistent at the end of its last step: it holds every commit before that moment
and none after (`ExportResult.consistent_at`). It is a rollback-journal (DELETE) database that
the `sqlite3` CLI opens as it is; the tenant's `_sqlfleet_*` bookkeeping comes along (an
import accepts it back, tenants.imports).
Not thread-safe: one caller drives an Exporter (its steps may run in different threads).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import apsw

from tenants.fleet import Fleet

DEST_CACHE_KIB = 2048  # the copy's page cache: steps stream through it, nothing is re-read


@dataclass(frozen=True)
class ExportResult:
    path: Path
    size: int  # bytes of the finished file
    pages: int
    page_size: int
    consistent_at: float  # wall-clock time of the last step: the copy is the tenant as of then
    restarts: int


class Exporter:
    def __init__(self, fleet: Fleet, tenant: str, dest: Path, step_pages: int, max_restarts: int) -> None:
        """Copy `tenant` into the new file `dest` (which must not exist) with `step` calls."""
        self.fleet = fleet
        self.tenant = tenant
        self.dest = dest
        self.step_pages = step_pages
        self.max_restarts = max_restarts
        self.restarts = 0
        self._conn = apsw.Connection(str(dest), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
        # a scratch file until it is finished: no journal, no fsync; page cache bounded
        self._conn.execute(
            f"PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-{DEST_CACHE_KIB}"
        )
        self._backup: apsw.Backup | None = None
        self._source: apsw.Connection | None = None
        self.result: ExportResult | None = None

    def step(self) -> bool:
        """Copy the next `step_pages` pages under the tenant's lease; True once the copy is
        complete (then `result` is set). Raises what `Fleet.lease` raises (TenantNotFound,
        TenantUnavailable, TenantCorrupt), and TenantBusy (503) when the lease is not free
        within the pool's busy_timeout, as any request of the tenant: a client's transaction
        holds it (an interactive stream, which may stay open until it idles out); the export
        is then given up rather than made to wait for it."""
        if self.result is not None:
            return True
        with self.fleet.lease(self.tenant, readonly=True) as handle:
            return self._step(handle.conn)

    def _step(self, source: apsw.Connection | None) -> bool:
        assert source is not None
        if self._backup is None or source is not self._source or self._backup.done:
            self._restart(source)
        assert self._backup is not None
        pages = -1 if self.restarts > self.max_restarts else self.step_pages
        try:
            done = self._backup.step(pages)
        except apsw.ConnectionClosedError:
            self._backup = None  # the source closed since the last step: start again next step
            return False
        if not done:
            return False
        page_count = self._backup.page_count
        self._backup.finish()
        self._backup = self._source = None
        at = time.time()
        page_size = self._conn.execute("PRAGMA page_size").get
        # a plain database for any sqlite3: rollback journal, written out
        self._conn.execute("PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL")
        self._conn.close()
        self.result = ExportResult(
            self.dest, self.dest.stat().st_size, page_count, page_size, at, self.restarts
        )
        return True

    def _restart(self, source: apsw.Connection) -> None:
        if self._backup is not None:
            self.restarts += 1
            # the source may have gone away mid-copy: the new copy overwrites what this one made
            with contextlib.suppress(apsw.Error):
                self._backup.finish()
        self._source = source
        self._backup = self._conn.backup("main", source, "main")

    def close(self) -> None:
        """Let go of the copy (idempotent); the caller removes the file."""
        if self._backup is not None:
            with contextlib.suppress(apsw.Error):
                self._backup.finish()
            self._backup = None
        self._source = None
        self._conn.close()
