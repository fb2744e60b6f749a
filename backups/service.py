"""The backups front door for the layers above: restore, listing, verification, catalog rebuild.

Restores go through the Fleet: a fork is a tenant created from the restored file; an in-place
restore replaces the live file (in-flight requests finish first) and the tenant then starts a new
generation, while the pre-restore generation stays restorable — so a restore can be undone.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backups import restore, retention
from backups.catalog import BackupCatalog, ChunkRow
from backups.errors import NoRestorePoint, ReplicaError
from backups.replica import ReplicaClient
from backups.segment import PREFIX_SIZE, SNAPSHOT, TOMBSTONE, index_length, parse_index
from backups.shipper import Shipper
from backups.spool import PIECE
from metrics.instruments import (
    BACKUP_BACKLOG_BYTES,
    RESTORE_COMMITS,
    RESTORE_SECONDS,
    RESTORES,
    RESTORES_RUNNING,
)
from tenants.fleet import Fleet
from tenants.hooks import FleetHooks
from tenants.rfc3339 import format_time, parse_time

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


def _differing_pages(a: Iterator[bytes], b: Iterator[bytes], page_size: int, most: int = 100) -> list[int]:
    """The numbers of the first `most` pages that differ between two images given as PIECE-byte
    pieces (a multiple of any page size); a page only one of them has differs."""
    differing: list[int] = []
    for index, (x, y) in enumerate(itertools.zip_longest(a, b, fillvalue=b"")):
        if x == y:
            continue
        first = index * (PIECE // page_size)
        for i in range(max(len(x), len(y)) // page_size):
            if x[i * page_size : (i + 1) * page_size] != y[i * page_size : (i + 1) * page_size]:
                differing.append(first + i + 1)
                if len(differing) == most:
                    return differing
    return differing


def parse_moment(text: str) -> float:
    """RFC 3339 or `latest` -> unix seconds. Raises BadRequest."""
    return time.time() if text == "latest" else parse_time(text)


@dataclass(frozen=True)
class RestoreResult:
    tenant: str
    restored_to: float
    generation: str
    commits_applied: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "restored_to": format_time(self.restored_to)}


@dataclass(frozen=True)
class ReplicaHealth:
    """How shipping to the replica goes, for readiness checks."""

    failed_flushes_in_a_row: int  # flushes whose upload failed since the last that succeeded
    last_success: float | None  # time.time() of the last flush whose upload succeeded; None: none yet


class Backups(FleetHooks):
    """Owns the replica client, the backup catalog and the shipper. Its life: built (nothing
    runs), `start`, then at shutdown `stop` (before the fleet closes) and `close` (after)."""

    def __init__(
        self, replica: ReplicaClient, catalog: BackupCatalog, shipper: Shipper, fleet: Fleet
    ) -> None:
        self.replica = replica
        self.catalog = catalog
        self.shipper = shipper
        self.fleet = fleet

    def fleet_hooks(self) -> list[FleetHooks]:
        """What the fleet must call: the shipper (commits, opens, closes, deletes), then the
        service itself (recovering a tenant lost locally but in the bucket)."""
        return [self.shipper, self]

    def start(self) -> None:
        """Know what the bucket can restore (`rebuild_if_empty`; a replica that cannot be read
        is logged, not raised: the server serves and ships anyway), then start shipping."""
        BACKUP_BACKLOG_BYTES.set_function(self.shipper.backlog_bytes)  # current at every scrape
        try:
            self.rebuild_if_empty()
        except ReplicaError as exc:
            log.warning(
                "could not read the backup catalog from the replica (%s); "
                "POST /v1/admin/backups/rebuild once it is reachable",
                exc,
            )
        self.shipper.start()

    def stop(self, deadline: float) -> None:
        """Shutdown, before the fleet closes: stop the shipper after one last flush, then
        checkpoint every open tenant whose WAL is fully shipped, giving up at `deadline`
        (time.monotonic()). Never raises; idempotent."""
        self.shipper.stop()
        self.shipper.checkpoint_shipped(deadline)

    def close(self) -> None:
        """Close the catalog and the replica client. Call once the fleet is closed: until then
        its hooks (and requests still finishing) may use them."""
        self.catalog.close()
        self.replica.close()

    def replica_health(self) -> ReplicaHealth:
        return ReplicaHealth(self.shipper.failed_in_a_row, self.shipper.last_success or None)

    def flush(self) -> None:
        """Ship everything committed so far; returns when it is durable in the replica, or
        raises ReplicaError."""
        self.shipper.ship()

    def _read(self, key: str, offset: int, length: int) -> bytes:
        return self.replica.get_range(key, offset, length)

    def restore(self, tenant: str, at: float, as_tenant: str | None = None) -> RestoreResult:
        """Restore `tenant` to its state after the last commit at or before `at`, into `as_tenant`
        (a new tenant) or in place. Raises NoRestorePoint, BackupBroken, TenantExists."""
        started = time.perf_counter()
        try:
            with RESTORES_RUNNING.track_inprogress():
                result = self._restore(tenant, at, as_tenant)
        except BaseException:
            RESTORES.labels("error").inc()
            raise
        RESTORES.labels("ok").inc()
        RESTORE_COMMITS.inc(result.commits_applied)
        RESTORE_SECONDS.observe(time.perf_counter() - started)
        return result

    def _restore(self, tenant: str, at: float, as_tenant: str | None) -> RestoreResult:
        self.shipper.flush()  # what is committed now is restorable now
        rows = self.catalog.chunks(tenant)
        plan = restore.plan(tenant, rows, at)
        with tempfile.TemporaryDirectory(dir=self.fleet.layout.system_dir) as tmp:
            path = Path(tmp) / "restored.db"
            restore.materialize(plan, self._read, path)
            target = as_tenant or tenant
            if as_tenant is None and self.fleet.exists(tenant):
                self.fleet.replace(tenant, path)
            else:
                source = self.fleet.catalog.get(tenant)
                self.fleet.create(target, source.group if source else None, template=path)
        commits = sum(
            1 for r in plan.frames for lsn, _ in r.commits if plan.snapshot.first_lsn < lsn <= plan.target_lsn
        )
        log.info("restored %s to %s as %s", tenant, format_time(plan.restored_to), as_tenant or tenant)
        return RestoreResult(as_tenant or tenant, plan.restored_to, plan.generation, commits)

    def describe(self, tenant: str) -> dict[str, Any]:
        """Restore points of a tenant: earliest and latest, generations, snapshots."""
        self.shipper.flush()  # as restore does: list what a restore would find now
        rows = self.catalog.chunks(tenant)
        if not rows:
            raise NoRestorePoint(f"tenant {tenant!r} has no backups")
        gens = restore.generations(rows)
        latest = max(max(r.last_time for r in rows), max(gens.values(), default=0.0))
        return {
            "tenant": tenant,
            "earliest": format_time(min(gens.values())) if gens else None,
            "latest": format_time(latest),
            "generations": [
                {"id": g, "started": format_time(t)} for g, t in sorted(gens.items(), key=lambda x: x[1])
            ],
            "snapshots": [
                {
                    "generation": r.generation,
                    "lsn": r.first_lsn,
                    "taken": format_time(r.first_time),
                    "bytes": r.length,
                }
                for r in rows
                if r.kind == SNAPSHOT
            ],
            "deleted": self._deleted(rows),
            "backlog_bytes": self.shipper.backlog_bytes(tenant),
        }

    def verify(self, tenant: str) -> dict[str, Any]:
        """Restore the latest state to a temp file and compare it page by page with the live
        database (a copy through the backup API), both read a piece at a time."""
        self.shipper.flush()
        plan = restore.plan(tenant, self.catalog.chunks(tenant), time.time())
        with tempfile.TemporaryDirectory(dir=self.fleet.layout.system_dir) as tmp:
            path = Path(tmp) / "verify.db"
            restore.materialize(plan, self._read, path)
            with self.fleet.lease(tenant) as handle:
                assert handle.conn is not None
                live = self.shipper.spool.copy_database(handle.conn)
            with live, open(path, "rb") as restored:
                pieces = iter(lambda: restored.read(PIECE), b"")
                differing = _differing_pages(live.pieces(), pieces, plan.snapshot.page_size)
                same_size = live.size == os.fstat(restored.fileno()).st_size
        return {
            "tenant": tenant,
            "ok": not differing and same_size,
            "pages": live.size // plan.snapshot.page_size,
            "differing_pages": differing,
            "restored_to": format_time(plan.restored_to),
        }

    def rebuild_catalog(self, progress: Progress | None = None) -> int:
        """Recreate every chunk row from the segments in the bucket; returns the segment count."""
        keys = [o.key for o in self.replica.list("segments/")]
        for done, key in enumerate(keys, 1):
            head = self.replica.get_range(key, 0, 64 << 10)
            need = PREFIX_SIZE + index_length(head)
            if len(head) < need:
                head = self.replica.get_range(key, 0, need)
            meta, refs = parse_index(head, key)
            self.catalog.add_segment(key, float(meta.get("created", 0.0)), refs)  # type: ignore[arg-type]
            if progress:
                progress(done, len(keys))
        return len(keys)

    def enforce_retention(self, window: float) -> tuple[int, int]:
        """Delete what no restore inside the last `window` seconds needs (the shipper also does
        this about once a minute). Returns (chunks forgotten, segment objects deleted)."""
        return retention.enforce(self.replica, self.catalog, window)

    def restorable_tenants(self) -> list[str]:
        """Tenants with backups whose last event is not a deletion."""
        return [t for t in self.catalog.tenants() if not self._deleted(self.catalog.chunks(t))]

    @staticmethod
    def _deleted(rows: list[ChunkRow]) -> bool:
        deleted = max((r.first_time for r in rows if r.kind == TOMBSTONE), default=None)
        started = max(restore.generations(rows).values(), default=0.0)
        return deleted is not None and deleted >= started

    def recover(self, tenant_id: str) -> bool:
        """Restore a tenant that has backups but no catalog row (a lost disk), unless deleted."""
        rows = self.catalog.chunks(tenant_id)
        if not rows or self._deleted(rows) or self.shipper.deletion_pending(tenant_id):
            return False
        log.warning("tenant %s is missing locally but in the bucket: restoring it", tenant_id)
        self.restore(tenant_id, time.time(), as_tenant=tenant_id)
        return True

    def rebuild_if_empty(self) -> int:
        """Read the catalog back from the bucket if it knows no segment (a fresh data dir, or
        backups.db lost), so restores, the DR listing and recovery on first access see every
        tenant the bucket holds. Call before the shipper starts: its first segment would make
        the catalog look current. Returns the segments read; raises ReplicaError."""
        if not self.catalog.is_empty():
            return 0
        count = self.rebuild_catalog()
        if count:
            log.warning("backup catalog rebuilt from %d segments in the bucket", count)
        return count
