"""The backups front door for the layers above: restore, listing, verification, catalog rebuild.

Restores go through the Fleet: a fork is a tenant created from the restored file; an in-place
restore replaces the live file (in-flight requests finish first) and the tenant then starts a new
generation, while the pre-restore generation stays restorable — so a restore can be undone.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import apsw

from backups import catalog_upload, handoff, restore, retention, takeover
from backups.catalog import BackupCatalog, ChunkRow
from backups.errors import (
    BackupBroken,
    BackupKeyMissing,
    BackupTampered,
    NoRestorePoint,
    ReplicaBehind,
    ReplicaError,
    RestoreInFuture,
    SegmentCorrupt,
)
from backups.fleet_doc import TenantRecord
from backups.fleet_meta import FleetMeta, GroupsRestored, TokenCheck
from backups.page_diff import differing_pages
from backups.rekey import RekeyBatch, rekey_batch
from backups.restore import RestorePlan, micros
from backups.sealed_replica import SealedReplica
from backups.segment import SNAPSHOT
from backups.shipper import Health, Shipper
from backups.spool import PIECE
from metrics.instruments import (
    BACKUP_BACKLOG_BYTES,
    RESTORE_COMMITS,
    RESTORE_SECONDS,
    RESTORES,
    RESTORES_RUNNING,
)
from tenants.catalog import Identity
from tenants.errors import InsufficientStorage, ReplicaUnavailable, SqlfleetError, TenantNotFound
from tenants.fleet import Fleet
from tenants.hooks import FleetHooks
from tenants.rfc3339 import format_time, parse_time

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


def parse_moment(text: str) -> float:
    """RFC 3339 or `latest` -> unix seconds. Raises BadRequest."""
    return time.time() if text == "latest" else parse_time(text)


def _why_behind(health: Health) -> str:
    """Why shipping is behind, for a client: not the flush's error, which names the replica's
    endpoint, bucket or keys (the flush logs it)."""
    if health.disk_full:
        return " (the data disk is full)"
    return " (shipping fails: the server's log says why)" if health.last_error else ""


@dataclass(frozen=True)
class RestoreResult:
    tenant: str
    restored_to: float
    generation: str
    commits_applied: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "restored_to": format_time(self.restored_to)}


ReplicaHealth = Health  # how shipping to the replica goes, for readiness checks


@dataclass(frozen=True)
class FleetRestore:
    """What `restore_fleet` did, and whether the tenants still to restore keep their tokens."""

    groups: GroupsRestored
    tenants_to_restore: int
    tokens: TokenCheck

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": asdict(self.groups),
            "tenants_to_restore": self.tenants_to_restore,
            "tokens": self.tokens.to_json(),
            "warning": self.tokens.warning(),
        }


class Backups(FleetHooks):
    """Owns the replica client, the backup catalog, the shipper and the fleet metadata. Its
    life: built (nothing runs), `start`, then at shutdown `stop` (before the fleet closes) and
    `close` (after)."""

    def __init__(
        self,
        replica: SealedReplica,
        catalog: BackupCatalog,
        shipper: Shipper,
        fleet: Fleet,
        meta: FleetMeta,
    ) -> None:
        self.replica = replica
        self.catalog = catalog
        self.shipper = shipper
        self.fleet = fleet
        self.meta = meta
        self.replica_answered = 0.0  # time.monotonic() of the last segment a restore read
        # a cluster node's planned moves (backups.handoff)
        self.handoffs = handoff.Handoffs(replica, catalog, fleet.catalog, shipper.ship, self._deleted)
        # a cluster node's catalog in the bucket, for whoever takes over after its death
        self.uploader = catalog_upload.uploader(replica, catalog, shipper, fleet.layout.system_dir)

    def fleet_hooks(self) -> list[FleetHooks]:
        """What the fleet must call: the shipper (commits, opens, closes, deletes), then the
        service itself (recovering a tenant lost locally but in the bucket, publishing tenant
        changes in the fleet metadata)."""
        return [self.shipper, self]

    def start(self, token_key: str | None) -> None:
        """`prepare`, then start shipping and publishing the fleet metadata in their threads."""
        self.prepare(token_key)
        self.shipper.start()
        self.meta.start(token_key)
        if self.uploader is not None:
            self.uploader.start()

    def prepare(self, token_key: str | None) -> None:
        """Everything `start` does before its threads run (the fault simulation drives flushes
        itself): know what the bucket can restore (`rebuild_if_empty`), and on an empty data dir
        put back the fleet's schema groups before any tenant comes back (a replica that cannot be
        read is logged, not raised: the server serves and ships anyway), then find the commits a
        crash left unshipped. `token_key`: the fingerprint of the key that signs tenant tokens
        (recorded, so a restore can tell whether old tokens will work here)."""
        BACKUP_BACKLOG_BYTES.set_function(self.shipper.backlog_bytes)  # current at every scrape
        try:
            self.rebuild_if_empty()
        except ReplicaError as exc:
            log.warning(
                "could not read the backup catalog from the replica (%s); "
                "POST /v1/admin/backups/rebuild once it is reachable",
                exc,
            )
        self.meta.token_key = token_key
        if not self.fleet.catalog.all_ids() and not self.meta.groups.names():
            self._restore_fleet_logged()
        self._recover_tails()

    def _restore_fleet_logged(self) -> None:
        try:
            done = self.restore_fleet()
        except (ReplicaError, BackupBroken) as exc:
            log.warning(
                "could not read the fleet metadata from the replica (%s); run `sqlfleet restore --all`", exc
            )
            return
        if done.groups.restored or done.tenants_to_restore:
            log.warning(
                "empty data dir: restored groups %s from the replica; %d tenants of the backups are not"
                " here: each comes back on its first use (in a cluster: on the node that owns its slot)"
                " or with `sqlfleet restore --all`",
                ", ".join(done.groups.restored) or "(none)",
                done.tenants_to_restore,
            )
        if done.tokens.warning():
            log.warning("%s", done.tokens.warning())

    def stop(self, deadline: float) -> None:
        """Shutdown, before the fleet closes: stop the shipper after one last flush and the
        fleet metadata after one last round, then checkpoint every open tenant whose WAL is fully
        shipped, giving up at `deadline` (time.monotonic()). Never raises; idempotent."""
        self.shipper.stop()
        self.meta.stop()
        if self.uploader is not None:
            self.uploader.stop()  # after the last flush: the upload covers every segment
        self.shipper.checkpoint_shipped(deadline)

    def close(self) -> None:
        """Close the catalog and the replica client. Call once the fleet is closed: until then
        its hooks (and requests still finishing) may use them."""
        self.shipper.close()
        self.catalog.close()
        self.replica.close()

    def replica_health(self) -> ReplicaHealth:
        return self.shipper.health()

    def _recover_tails(self) -> None:
        """After a crash: open every tenant that committed since its last flush, so the commits
        its WAL holds beyond the shipped position are found now, with the times the commit-times
        journal kept for them, and ship with the first flush; not when it is next used (which
        may be never, or after a restore that would miss them). Those are the tenants the
        journal names, and those whose WAL is longer than their position says (a power loss may
        take the journal's tail). Then forget what is left, but the recorded times of the
        tenants that could not be opened now (their next open takes them)."""
        named = self.shipper.times.recovered_tenants()
        waiting: set[str] = set()
        for tenant_id in sorted({*named, *self.shipper.continuity.grown()}):
            if not self.fleet.exists(tenant_id):
                continue
            try:
                with self.fleet.lease(tenant_id):
                    pass
            except (SqlfleetError, OSError, apsw.Error) as exc:  # a full disk must not stop a start
                log.warning("tenant %s: its unshipped commits wait for its next open (%s)", tenant_id, exc)
                waiting.add(tenant_id)  # with their recorded times
        self.shipper.times.end_recovery(waiting)

    def _ship_first(self, tenant: str, at: float) -> None:
        """Before a restore to `at`: get what the tenant committed up to then into the replica,
        or refuse to answer with less (ReplicaBehind, InsufficientStorage when the disk is why).
        A restore in place asks for every commit (`at` infinite): it replaces the live file, and
        what the replica lacks would be lost for good instead of staying restorable."""
        if self.fleet.exists(tenant) and not self.fleet.pool.is_open(tenant):
            try:  # opening finds commits a crash left unshipped in its WAL (backups.continuity)
                with self.fleet.lease(tenant):
                    pass
            except SqlfleetError:
                pass  # corrupt or missing: restoring it is what the caller wants
        self.shipper.flush()  # what is committed now is restorable now
        missing = self.shipper.unshipped_times(tenant, at)
        if not missing:
            return
        health = self.shipper.health()
        message = (  # without the flush's error: it names the endpoint, bucket, keys (logged)
            f"{len(missing)} commits of tenant {tenant!r} the restore needs (made from "
            f"{format_time(missing[0])} to {format_time(missing[-1])}) are not in the replica yet"
            f"{_why_behind(health)}; restore "
            "again once they are"
        )
        raise InsufficientStorage(message) if health.disk_full else ReplicaBehind(message)

    def ship_everything(self, tenant: str) -> None:
        """Before the tenant's file is replaced (an import): what it committed is in the replica,
        so the state before stays restorable, or ReplicaBehind / InsufficientStorage."""
        self._ship_first(tenant, math.inf)

    def flush(self) -> None:
        """Ship everything committed so far, and publish every fleet metadata change; returns
        when it is durable in the replica, or raises ReplicaError (BackupBroken: our fleet
        metadata in the replica cannot be read)."""
        self.shipper.ship()
        self.meta.publish()

    def _read(self, key: str, offset: int, length: int) -> bytes:
        data = self.replica.get_range(key, offset, length)
        self.replica_answered = time.monotonic()  # a restore or verify goes on (router.bounded)
        return data

    def restore(
        self, tenant: str, at: float, as_tenant: str | None = None, record: TenantRecord | None = None
    ) -> RestoreResult:
        """Restore `tenant` to its state after the last commit at or before `at`, into `as_tenant`
        (a new tenant) or in place. `record`: who the tenant is, when this server has no copy and
        knows better than the fleet metadata (a handoff). Raises NoRestorePoint, BackupBroken,
        TenantExists."""
        started = time.perf_counter()
        try:
            with RESTORES_RUNNING.track_inprogress():
                result = self._restore(tenant, at, as_tenant, record)
        except BaseException:
            RESTORES.labels("error").inc()
            raise
        RESTORES.labels("ok").inc()
        RESTORE_COMMITS.inc(result.commits_applied)
        RESTORE_SECONDS.observe(time.perf_counter() - started)
        return result

    def _restore(
        self, tenant: str, at: float, as_tenant: str | None, record: TenantRecord | None
    ) -> RestoreResult:
        self._ship_first(tenant, at if as_tenant is not None else math.inf)
        rows = self.catalog.chunks(tenant)
        earliest, latest = self._window(tenant, rows)
        now = time.time()
        if at > now:
            raise RestoreInFuture(
                f"{format_time(at)} is in the future (it is {format_time(now)} on this server): "
                f"the latest state of tenant {tenant!r} is as of {format_time(latest)}; ask for "
                "'latest' to restore it"
            )
        if micros(at) < micros(earliest):
            raise NoRestorePoint(
                f"tenant {tenant!r} cannot be restored to {format_time(at)}: its earliest "
                f"restorable moment is {format_time(earliest)}"
            )
        plan = restore.plan(tenant, rows, at)
        restore.check_covered(plan, rows, self.shipper.replica_position(tenant))
        # a cleanup that fails comes after the live file may be replaced: the restore is done
        # then, and saying otherwise would hide that (the directory stays behind)
        with tempfile.TemporaryDirectory(dir=self.fleet.layout.system_dir, ignore_cleanup_errors=True) as tmp:
            path = Path(tmp) / "restored.db"
            self._materialize(plan, path)
            target = as_tenant or tenant
            if as_tenant is None and self.fleet.exists(tenant):
                self.fleet.replace(tenant, path)
            else:
                self._create_restored(tenant, target, at, path, record)
        base, top = plan.snapshot.first_lsn, plan.target_lsn
        commits = len({lsn for r in plan.frames for lsn, _ in r.commits if base < lsn <= top})  # overlaps
        log.info("restored %s to %s as %s", tenant, format_time(plan.restored_to), as_tenant or tenant)
        return RestoreResult(as_tenant or tenant, plan.restored_to, plan.generation, commits)

    def _create_restored(
        self, tenant: str, target: str, at: float, path: Path, known_record: TenantRecord | None
    ) -> None:
        """Create `target` from the restored file of `tenant`, which this server may lack (a lost
        data dir, a deletion): then the fleet metadata says what `tenant` was at `at`. Restored
        as itself it keeps its creation time, and unless it had been deleted its incarnation and
        token generation (so its tokens work again, if this server signs with the same key); a
        fork keeps its group only. Its group is put back first if this server lacks it."""
        source = self.fleet.catalog.get(tenant)
        known = None if source is not None or known_record is not None else self.meta.record(tenant)
        record = (
            known.record if known is not None and micros(known.record.created) <= micros(at) else known_record
        )
        group = source.group if source is not None else record.group if record is not None else None
        if group is not None and source is None and not self.meta.ensure_group(group):
            log.warning("restoring %s: its group %s is neither here nor in the fleet metadata", tenant, group)
        identity = None
        if record is not None and target == tenant:
            # a deleted tenant restored keeps only its creation time: tokens of before stay dead
            alive = record.deleted is None
            incarnation = record.incarnation if alive else secrets.token_hex(8)
            generation = record.token_generation if alive else 0
            identity = Identity(record.created, incarnation, generation)
        self.fleet.create(target, group, template=path, identity=identity)

    def restore_fleet(self) -> FleetRestore:
        """Disaster recovery's first step, before the tenants: put back every schema group the
        fleet metadata holds and this server lacks (template, migrations, rollout history), and
        tell whether the tokens of the tenants still to restore will work here. Idempotent.
        Raises ReplicaError, BackupBroken."""
        groups = self.meta.restore_groups()
        missing = [t for t in self.restorable_tenants() if not self.fleet.exists(t)]
        return FleetRestore(groups, len(missing), self.meta.check_tokens(missing))

    def after_create(self, tenant_id: str, path: Path) -> None:
        self.meta.touch(tenant_id)

    def after_delete(self, tenant_id: str) -> None:
        self.meta.touch(tenant_id)

    def after_revoke(self, tenant_id: str) -> None:
        self.meta.touch(tenant_id)

    def metadata_acked(self, what: str, again: str, seconds: float) -> None:
        """ack=replica: wait until the fleet metadata in the replica holds every change noted
        so far (`what`: a token revocation, a group change; they reach it by the fleet metadata,
        not by a tenant's commits), at most `seconds`. Raises ReplicaUnavailable past it, saying
        the outcome is unknown (`again`: what to do). ack=local: returns at once."""
        if self.shipper.acks is None or self.meta.published(seconds):
            return
        raise ReplicaUnavailable(
            f"{what} is in effect on this server but not in the backup replica yet (ack=replica): "
            f"it would be undone if this server were lost, so its outcome is unknown; {again}",
            retry_after=1,
        )

    def _materialize(self, plan: RestorePlan, path: Path) -> None:
        """restore.materialize, with a failure explained: a segment sealed with a key this server
        lacks is named as such (encryption off, it reads as garbage), not as a broken backup."""
        try:
            restore.materialize(plan, self._read, path)
        except (SegmentCorrupt, BackupBroken) as exc:
            try:
                self.replica.check_readable(dict.fromkeys([plan.snapshot.key, *(r.key for r in plan.frames)]))
            except (BackupKeyMissing, BackupTampered):
                raise
            except ReplicaError:
                pass  # the replica cannot answer now: the original failure is the better report
            if isinstance(exc, SegmentCorrupt):
                raise BackupBroken(f"backup of {plan.tenant!r} cannot be decoded: {exc}") from None
            raise

    def _window(self, tenant: str, rows: list[ChunkRow]) -> tuple[float, float]:
        """(earliest, latest): the first moment a restore of `tenant` can reach, and the time of
        its last commit the replica holds (any moment from then to now restores that state).
        The earliest is its oldest generation's start, but never before the retention window:
        retention runs about once a minute, so chunks it will drop may still be there, and a
        moment only they reach is not promised. Raises TenantNotFound when the tenant is not
        here and the bucket has nothing of it, NoRestorePoint when it has no backup yet."""
        gens = restore.generations(rows)
        if not gens:
            if not self.fleet.exists(tenant):
                raise TenantNotFound(
                    f"tenant {tenant!r} does not exist here, and the backups hold nothing of it"
                )
            raise NoRestorePoint(f"tenant {tenant!r} has no backup yet")
        latest = max(max(r.last_time for r in rows), max(gens.values()))
        earliest = max(min(gens.values()), time.time() - self.shipper.config.retention)
        return earliest, latest

    def describe(self, tenant: str) -> dict[str, Any]:
        """Restore points of a tenant: earliest and latest, generations, snapshots."""
        self.shipper.flush()  # as restore does: list what a restore would find now
        rows = self.catalog.chunks(tenant)
        earliest, latest = self._window(tenant, rows)
        gens = restore.generations(rows)
        return {
            "tenant": tenant,
            "earliest": format_time(earliest),
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
        database (a copy through the backup API), both read a piece at a time. Raises
        TenantNotFound when there is no live tenant to compare with."""
        if not self.fleet.exists(tenant):
            raise TenantNotFound(f"tenant {tenant!r} does not exist: there is nothing live to verify against")
        self.shipper.flush()
        rows = self.catalog.chunks(tenant)
        self._window(tenant, rows)  # no backup yet: NoRestorePoint
        plan = restore.plan(tenant, rows, time.time())
        with tempfile.TemporaryDirectory(dir=self.fleet.layout.system_dir) as tmp:
            path = Path(tmp) / "verify.db"
            self._materialize(plan, path)
            with self.fleet.lease(tenant) as handle:
                assert handle.conn is not None
                live = self.shipper.spool.copy_database(handle.conn)
            with live, open(path, "rb") as restored:
                pieces = iter(lambda: restored.read(PIECE), b"")
                differing = differing_pages(live.pieces(), pieces, plan.snapshot.page_size)
                same_size = live.size == os.fstat(restored.fileno()).st_size
        return {
            "tenant": tenant,
            "ok": not differing and same_size,
            "pages": live.size // plan.snapshot.page_size,
            "differing_pages": differing,
            "restored_to": format_time(plan.restored_to),
        }

    def rebuild_catalog(self, progress: Progress | None = None) -> int:
        """Recreate every chunk row from the segments in the bucket; returns the segment count.
        Segments made before encryption was turned on are read too (restore refuses them until
        `rekey` has sealed them); one sealed with a key this server lacks raises BackupKeyMissing."""
        with self.catalog.maintenance:  # not while rekey moves chunks between copies
            return restore.rebuild_catalog(self.replica, self.catalog, progress)

    def rekey(self, after: str | None = None, limit: int = 100) -> RekeyBatch:
        """One batch of re-encrypting what retention still needs with the current key (see
        backups/rekey.py): pass the answer's `next` as `after` until it is None."""
        batch = rekey_batch(self.replica, self.catalog, self.shipper.spool, after, limit)
        if batch.next is None:  # its last batch resealed the fleet metadata, maybe over newer
            self.meta.republish()
        return batch

    def enforce_retention(self, window: float) -> tuple[int, int]:
        """Delete what no restore inside the last `window` seconds needs (the shipper also does
        this about once a minute). Returns (chunks forgotten, segment objects deleted)."""
        return retention.enforce(self.replica, self.catalog, window, self.shipper.node)

    def restorable_tenants(self) -> list[str]:
        """Tenants with backups whose last event is not a deletion."""
        return [t for t, deleted in self.backed_up_tenants() if deleted is None]

    def backed_up_tenants(self) -> list[tuple[str, float | None]]:
        """Every tenant the backups can restore, with the time it was deleted if its last event
        is a deletion (restoring it undeletes it; retention forgets it once the deletion is
        older than the window), else None."""
        return [(t, deleted) for t, deleted, _ in self.known_tenants()]

    def known_tenants(self) -> list[tuple[str, float | None, float]]:
        """`backed_up_tenants`, each with the time of the newest event of it this catalog holds
        (a commit, a snapshot, its deletion): of two cluster nodes' catalogs, the one holding
        the later event knows the tenant better."""
        known = []
        for t in self.catalog.tenants():
            rows = self.catalog.chunks(t)
            if rows:  # else retention forgot it since the line above
                known.append((t, restore.deleted_at(rows), restore.newest_event(rows)))
        return known

    @staticmethod
    def _deleted(rows: list[ChunkRow]) -> bool:
        return restore.deleted_at(rows) is not None

    def recover(self, tenant_id: str) -> bool:
        """Restore a tenant that has backups but no catalog row (a lost disk, or a cluster node
        handed it to this one), unless deleted. In a cluster, this node's own rows of a tenant
        the newest manifest of its slot does not name count only if they are newer than that
        manifest: older ones are history from before the slot last came here (this node owned it
        once), and the node that gave it back deleted the tenant since (its tombstone is in that
        node's catalog, not here)."""
        moved = self.handoffs.adopt(tenant_id)
        rows = self.catalog.chunks(tenant_id)
        if not rows or self._deleted(rows) or self.shipper.deletion_pending(tenant_id):
            return False
        if moved is None:
            since = self.handoffs.moved_at(tenant_id)
            if since is not None and restore.newest_event(rows) < since:
                log.info(
                    "tenant %s: this node's backups of it predate the last move of its slot, whose"
                    " manifest does not name it (deleted elsewhere): not restored",
                    tenant_id,
                )
                return False
            log.warning("tenant %s is missing locally but in the bucket: restoring it", tenant_id)
        self.restore(tenant_id, time.time(), as_tenant=tenant_id, record=moved.record if moved else None)
        return True

    def take_over(self, node: str, incarnations: Collection[str], slots: Collection[int], token: int) -> int:
        """Fence dead `node`'s `incarnations` (none: every one in the bucket), write its `slots`'
        handoff manifests at `token` (backups/takeover.py); returns the tenants handed over.
        Idempotent; raises ReplicaError (retry later), BackupBroken."""
        if self.handoffs.slot_of is None:
            raise RuntimeError("take_over needs a cluster node (handoffs.slot_of unset)")
        by, work = self.shipper.flusher.writer, self.fleet.layout.system_dir
        args = (node, incarnations, slots, token, self.handoffs.slot_of, work, by.node if by else "")
        return takeover.take_over(self.replica, *args)

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
