"""WAL shipping: every commit of every tenant reaches the replica within about a flush interval.

The front the fleet sees (its FleetHooks) and the flush loop; the work is done by
- `ledger`: what is shipped and what is pending, per tenant (a wal_hook notes every commit),
- `commit_times`: each commit's time in a journal too, so a crash of the process keeps it,
- `continuity`: whether a tenant's files continue what was shipped, else a new generation,
- `flush`: capture, pack, upload, then advance — nothing advances before every step succeeded,
- `checkpoint`: checkpoints and snapshots; what is not in the replica yet is carried first,
- `carry`: frames a checkpoint took out of a WAL, durable on local disk until a flush ships them,
- `retention`: deleting what no restore inside the window needs (about once a minute, in a
  thread of its own: a pass over a large fleet must not hold up the flushes),
- `spool`: where segments being built and snapshot copies wait: in memory within a budget, else
  in temporary files, so memory stays bounded whatever one commit's or tenant's size.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import apsw

from backups import retention
from backups.ack import Acks
from backups.carry import Carry
from backups.catalog import BackupCatalog
from backups.checkpoint import Checkpointer, Lease, Policy
from backups.commit_times import CommitTimes
from backups.continuity import Continuity
from backups.errors import ReplicaError, ReplicaFenced, WalCorrupt
from backups.fence import Writer
from backups.flush import Flusher
from backups.ledger import Ledger
from backups.quota import ReplicaQuota
from backups.replica import ReplicaClient
from backups.segment import TOMBSTONE, Chunk
from backups.spool import Spool
from metrics.instruments import BACKUP_FLUSH_CPU, LIMIT_REFUSALS
from tenants.errors import ReplicaBehind, SqlfleetError
from tenants.files import write_durably
from tenants.hooks import FleetHooks
from tenants.layout import Layout
from tenants.sandbox import Sandbox

log = logging.getLogger(__name__)

RETENTION_EVERY = 60.0  # seconds between retention runs (each after a successful flush)


@dataclass(frozen=True)
class ShipperConfig:
    flush_interval: float  # seconds between flush starts
    segment_max_bytes: int  # a flush splits into several segments only past this size
    checkpoint_frames: int  # a shipped WAL this long is checkpointed
    snapshot_bytes: int  # shipped this many bytes since the last snapshot: a new one
    snapshot_interval: float  # changed, and the last snapshot is this many seconds old: a new one
    max_backlog_bytes: int  # unshipped WAL bytes past which a tenant turns read-only
    retention: float  # seconds of history kept restorable
    spool_bytes: int  # segments and snapshot copies are held in memory up to this, then in files
    tenant_quota_bytes: int  # compressed bytes one tenant may add to the replica per window ...
    tenant_quota_window: float  # ... of this many seconds; past it its writes are refused
    unready_after: float  # a commit this many seconds old not in the replica makes the server unready
    ack: str  # "local": a response goes once committed on disk; "replica": once shipped (backups.ack)
    ack_window: float  # ack=replica: a flush a waiting response asks for gathers this long first
    max_unshipped_age: float  # a tenant whose oldest unshipped commit is older takes no writes; 0: off
    catalog_upload_interval: float  # cluster mode: seconds between uploads of the backup catalog
    # a delete waits this long at most for each flush it asks for (its last commits, then its
    # tombstone): a hung replica must not hold it past its request's deadline; what did not ship
    # then ships later (the tombstone) or is not kept (commits of a tenant being deleted)
    delete_flush_wait: float


@dataclass(frozen=True)
class Health:
    """How shipping to the replica goes, for readiness checks."""

    failed_flushes_in_a_row: int  # flushes that failed since the last that succeeded
    last_success: float | None  # time.time() of the last flush that shipped something; None: none yet
    behind_seconds: float  # age of the oldest commit not in the replica (or of the failing streak)
    last_error: str | None  # why the last flush failed (None: it did not)
    disk_full: bool  # the last flush failed because the data disk is full
    ready: bool  # not behind by more than `unready_after`
    reason: str | None  # why not ready


class Shipper(FleetHooks):
    """Thread-safe. `start()` runs the flush loop in a thread; `flush()` may also be called directly.
    `lease` is the fleet's `lease_if_open`: checkpoints and restarts act only on open tenants.

    `writer` (cluster mode): segments go under that node's incarnation, created conditionally
    (backups/fence.py); None: flat keys, as a single server always wrote them. Once another node
    fences the incarnation, shipping stops for good: nothing is uploaded, checkpointed or deleted
    any more, the unshipped commits stay on local disk, tenants turn read-only (`writable`), the
    health says why, and `on_fenced` is called once (from the flushing thread) so the server stops
    serving.

    `acks` (ack=replica, else None): where responses wait for their commits to ship; a waiting
    response wakes the flush loop early (backups.ack). With `max_unshipped_age`, a tenant's write
    is refused at commit (ReplicaBehind, rolled back) while its oldest unshipped commit is older."""

    def __init__(
        self,
        replica: ReplicaClient,
        catalog: BackupCatalog,
        layout: Layout,
        config: ShipperConfig,
        server_id: str,
        lease: Lease,
        writer: Writer | None = None,
        on_fenced: Callable[[ReplicaFenced], None] | None = None,
    ) -> None:
        self.replica = replica
        self.catalog = catalog
        self.config = config
        self.node = writer.node if writer is not None else None  # a cluster node's id
        self.retention = retention.Retention(replica, catalog, config.retention, self.node)
        # Built with the data-dir lock held: nothing else can be using what a crash left there.
        self.spool = Spool(layout.system_dir / "spool", config.spool_bytes)
        self.spool.clear()
        self.times = CommitTimes(layout.system_dir / "commit-times")
        self.ledger = Ledger(self.times)
        self.carry = Carry(layout.system_dir / "carry")
        self.ledger.orphans += self.carry.recover()  # checkpointed away before a crash: ship them
        self.continuity = Continuity(self.ledger, catalog, layout, self.spool, self.times, self.carry)
        self.quota = ReplicaQuota(config.tenant_quota_bytes, config.tenant_quota_window)
        self.flusher = Flusher(
            self.ledger,
            replica,
            catalog,
            server_id,
            config.segment_max_bytes,
            self.spool,
            self.quota,
            self.times,
            writer,
            on_fenced,
        )
        policy = Policy(config.checkpoint_frames, config.snapshot_bytes, config.snapshot_interval)
        self.checkpointer = Checkpointer(self.ledger, catalog, self.continuity, self.carry, lease, policy)
        self._flush_lock = threading.Lock()
        self._wanted: set[str] = set()  # tenants to checkpoint at the next flush, however long their WAL
        self._wanted_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by a response waiting for a flush (ack=replica), and by stop
        self.acks = Acks(self.ledger, self._wake.set) if config.ack == "replica" else None
        self._flushed = threading.Event()  # set while the last flush of the loop succeeded
        self._threads: list[threading.Thread] = []
        self._rounds = threading.Condition()  # the loop's flushes: begun, ended (`flush_within`)
        self._begun = self._ended = 0

    # -- hooks from tenants ------------------------------------------------------------------------

    def after_create(self, tenant_id: str, path: Path) -> None:
        self.continuity.created(tenant_id, path)

    def after_open(self, tenant_id: str, conn: apsw.Connection, sandbox: Sandbox) -> None:
        conn.set_wal_hook(self.ledger.commit_hook(tenant_id))
        conn.set_commit_hook(partial(self._before_commit, tenant_id, sandbox), id=ReplicaQuota)
        self.continuity.opened(tenant_id, conn)

    def _before_commit(self, tenant_id: str, sandbox: Sandbox) -> bool:
        """SQLite's commit hook: False lets the commit go on; past the tenant's replica quota
        ReplicaQuotaExceeded, or while its oldest unshipped commit is older than
        max_unshipped_age ReplicaBehind, rolls the transaction back and reaches the caller. The
        server's own (trusted) commits always go through."""
        if sandbox.trusted:
            return False
        try:
            self.quota.check(tenant_id)
        except SqlfleetError:
            LIMIT_REFUSALS.labels("replica_bytes").inc()
            raise
        bound = self.config.max_unshipped_age
        if bound > 0:
            # per tenant, not the server's oldest: O(1) per commit, and a tenant is not refused
            # for another's backlog (one over its replica quota, or broken); during an outage
            # every writing tenant reaches its bound within `bound` of its first unshipped commit
            oldest = self.ledger.oldest_unshipped(tenant_id)
            age = time.time() - oldest if oldest is not None else 0.0
            if age > bound:
                LIMIT_REFUSALS.labels("unshipped_age").inc()
                raise ReplicaBehind(
                    f"tenant {tenant_id!r}: the backup replica is {age:.0f} s behind its commits, more "
                    f"than this server allows ({bound:g} s), so writes are paused until it catches up: "
                    "this write was rolled back, retry later; reads are served",
                    retry_after=max(1, round(self.config.flush_interval)),
                )
        return False

    def writable(self, tenant_id: str) -> bool:
        """False while the tenant's unshipped WAL exceeds the backlog bound (replica down), and
        for good once this incarnation is fenced (nothing it writes could ship)."""
        return self.fenced is None and self.backlog_bytes(tenant_id) <= self.config.max_backlog_bytes

    def before_close(self, tenant_id: str, conn: apsw.Connection) -> None:
        """Drop the in-memory log of a closing tenant with nothing left to ship: the catalog's
        position suffices to resume when it reopens (keeps memory flat at 100k tenants), with
        what `Continuity.closed` remembers of its files."""
        self.continuity.closed(tenant_id)

    def before_delete(self, tenant_id: str) -> None:
        """Ship what is left (waiting `delete_flush_wait` at most), then forget the live state
        (the backups themselves stay). Nothing left (a planned move shipped it all already): no
        flush, so a move of many tenants does not wait for one per tenant."""
        if self.ledger.has_unshipped(tenant_id, self.ledger.clock()):
            self.flush_within(self.config.delete_flush_wait)
        self.forget(tenant_id)

    def after_delete(self, tenant_id: str) -> None:
        """Record the deletion in the bucket, so disaster recovery does not resurrect the tenant
        (an explicit restore to a moment before it still works). If the replica is down the
        record waits, like frames do, for a later flush."""
        # the ledger's clock: a response formed after this call waits for it (backups.ack)
        self.ledger.add_tombstone(Chunk(tenant_id, "", TOMBSTONE, 0, 0, 0, taken_at=self.ledger.clock()))
        self.flush_within(self.config.delete_flush_wait)

    def deletion_pending(self, tenant_id: str) -> bool:
        """Whether the tenant's deletion still waits to be recorded in the replica."""
        return self.ledger.deletion_pending(tenant_id)

    # -- the loop -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the flush loop and, in a thread of its own, retention."""
        self._threads = [
            threading.Thread(target=self._run, name="sqlfleet-shipper", daemon=True),
            threading.Thread(target=self._retain, name="sqlfleet-retention", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the loops after one last flush. Idempotent; never raises (shutdown goes on)."""
        self._stop.set()
        self._wake.set()
        self._flushed.set()  # wakes retention to see the stop
        for thread in self._threads:
            thread.join()
        self._threads = []
        self._flush_logged()
        if self.acks is not None:  # what the last flush did not ship never will here
            self.acks.failed(RuntimeError("the server is shutting down"), for_good=True)

    def close(self) -> None:
        """Release the commit-times journal (after `stop`). Idempotent."""
        self.times.close()

    def _flush_logged(self) -> bool:
        # A bug in one flush must not end shipping for good (the loop) or stop a shutdown.
        try:
            return self.flush()
        except Exception:
            log.exception("backup flush failed; will retry")
            return False

    def _run(self) -> None:
        delay = self.config.flush_interval
        while self.fenced is None and not self._stop.is_set():
            if self._wake.wait(delay) and not self._stop.is_set():
                # a response waits for a flush (ack=replica): gather what else arrives meanwhile,
                # then one segment for all of them (group commit)
                self._stop.wait(self.config.ack_window)
            self._wake.clear()  # after the gathering: a response waiting from now on asks again
            if self._stop.is_set():
                return
            started = time.monotonic()
            with self._rounds:
                self._begun += 1
                number = self._begun
            ok = self._flush_logged()
            with self._rounds:
                self._ended = number
                self._rounds.notify_all()
            # flushes start every interval (not an interval after the last one ended), so the lag
            # is about one interval plus one flush, not one interval plus two
            spent = time.monotonic() - started
            delay = max(0.0, self.config.flush_interval - spent) if ok else min(30.0, max(delay, 0.5) * 2)
            if ok:
                self._flushed.set()
            else:
                self._flushed.clear()

    def _retain(self) -> None:
        # Not in the flush loop: a full pass reads every tenant's chunks (one query and one
        # Python pass each), and every commit waiting for the next flush waited for it too (at
        # 10,000 tenants: lag p99 2.75 s with it in the loop, 1.23 s without; flush interval 1 s).
        # Most passes read only the tenants whose chunks can have expired (retention.Retention).
        # It runs after a flush that succeeded (a replica that answers), at most once a flush
        # and at most every RETENTION_EVERY.
        while not self._stop.wait(RETENTION_EVERY):
            self._flushed.wait()
            if self._stop.is_set() or self.fenced is not None:
                return
            self._flushed.clear()
            self._enforce_retention()

    def _enforce_retention(self) -> None:
        # As for flushes: nothing here may end the loop, or shipping stops for good.
        if self.fenced is not None:
            return  # the incarnation's history belongs to whoever fenced it now
        try:
            self.retention.run()
        except ReplicaError as exc:
            log.warning("backup maintenance failed (%s); will retry", exc)
        except Exception:
            log.exception("backup maintenance failed; will retry")

    # -- flushing -----------------------------------------------------------------------------------

    def flush_within(self, seconds: float) -> None:
        """A flush that begins now, waited for at most `seconds` (whether it succeeded or not:
        as `flush`, a failure is logged and retried). Done by the loop when it runs (woken now),
        so a hung replica holds no caller longer; else here (never started, or stopping)."""
        if not self._threads or self._stop.is_set():
            self.flush()
            return
        with self._rounds:
            wanted = self._begun + 1
        self._wake.set()
        with self._rounds:
            self._rounds.wait_for(lambda: self._ended >= wanted or self._stop.is_set(), seconds)

    def ship(self) -> None:
        """Ship every dirty tenant's new commits in shared segments, then checkpoint and
        snapshot what is due: every commit made before the call is durable in the replica when
        it returns (except a tenant found broken: its new generation ships with the next flush).
        Raises ReplicaError if an upload failed, and whatever else failed (a full disk under the
        catalog: apsw.FullError); nothing was lost, the next flush retries from the last durable
        position."""
        with self._flush_lock:
            if self.fenced is not None:
                if self.acks is not None:
                    self.acks.failed(self.fenced, for_good=True)
                raise self.fenced
            cpu = time.thread_time()
            try:
                try:
                    tenants = self.flusher.run()
                except BaseException as exc:
                    if self.acks is not None:
                        self.acks.failed(exc, for_good=self.fenced is not None)
                    raise
                if self.acks is not None:
                    self.acks.shipped()
                self.checkpointer.maintain(tenants)
                self._checkpoint_wanted()
            finally:
                BACKUP_FLUSH_CPU.inc(time.thread_time() - cpu)

    def request_checkpoint(self, tenant_id: str) -> None:
        """Checkpoint the tenant's WAL after the next flush that succeeds, however long it is (the
        WAL guard refused a write: its file is over max_wal_bytes); what that flush did not ship
        is carried first. Never blocks."""
        with self._wanted_lock:
            self._wanted.add(tenant_id)

    def _checkpoint_wanted(self) -> None:
        # caller holds the flush lock; a tenant closed, busy or failing now asks again on its
        # next refused write
        with self._wanted_lock:
            wanted, self._wanted = self._wanted, set()
        for tenant_id in sorted(wanted):
            entry = self.ledger.get(tenant_id)
            if entry is None or entry.broken:
                continue
            try:
                self.checkpointer.checkpoint(tenant_id, entry, snapshot=False)
            except (SqlfleetError, WalCorrupt, OSError, apsw.Error) as exc:
                log.warning("tenant %s: requested checkpoint skipped (%s)", tenant_id, exc)

    def flush(self) -> bool:
        """`ship`, returning False instead of raising if the flush failed (logged)."""
        try:
            self.ship()
        except ReplicaError:
            return False  # logged by the flusher
        except Exception as exc:
            if self.flusher.failing_since is None:  # not a flush step: a bug elsewhere
                log.exception("backup maintenance failed; will retry")
            else:
                log.debug("backup flush failed", exc_info=exc)
            return False
        return True

    def checkpoint_shipped(self, deadline: float) -> int:
        """Shutdown: checkpoint every open tenant whose WAL is fully shipped; call after `stop`
        (its last flush ships what is left). See Checkpointer.checkpoint_shipped. Never raises."""
        return self.checkpointer.checkpoint_shipped(deadline)

    # -- state for others -----------------------------------------------------------------------

    @property
    def fenced(self) -> ReplicaFenced | None:
        """Why shipping stopped for good (another node fenced this incarnation); None: it did not."""
        return self.flusher.fenced

    @property
    def last_success(self) -> float:
        """time.time() of the last flush whose upload succeeded (0: none yet)."""
        return self.flusher.last_success

    @property
    def failed_in_a_row(self) -> int:
        """Flushes that failed since the last that succeeded."""
        return self.flusher.failed_in_a_row

    def health(self) -> Health:
        """Whether the replica keeps up: not ready once the oldest commit it lacks (or the
        current streak of failing flushes) is older than `unready_after`, saying why."""
        now = time.time()
        flusher = self.flusher
        oldest = self.ledger.oldest_pending(default=now)
        if flusher.failing_since is not None:
            oldest = min(oldest, flusher.failing_since)
        behind = max(0.0, now - oldest)
        reason = None
        if behind > self.config.unready_after:
            reason = (
                f"the replica has taken no flush for {behind:.0f} s "
                f"(backup_unready_after is {self.config.unready_after:g} s)"
            )
            if flusher.last_error is not None:
                reason += f": {flusher.last_error}"
        if self.fenced is not None:
            reason = str(self.fenced)
        return Health(
            flusher.failed_in_a_row,
            flusher.last_success or None,
            behind,
            flusher.last_error,
            flusher.last_error_disk_full,
            reason is None,
            reason,
        )

    def replica_position(self, tenant_id: str) -> tuple[str, int] | None:
        """(generation, last LSN) of the tenant that is in the replica, as far as the catalog's
        position and the carried chunks still waiting say; None if nothing was shipped."""
        position = self.catalog.position(tenant_id)
        if position is None:
            return None
        with self.ledger.lock:
            entry = self.ledger.logs.get(tenant_id)
            carried = [*(entry.carried if entry is not None else ()), *self.ledger.orphans]
        generation = position.generation
        waiting = [c.first_lsn for c in carried if c.tenant == tenant_id and c.generation == generation]
        return position.generation, min([position.lsn, *(lsn - 1 for lsn in waiting)])

    def unshipped_times(self, tenant_id: str, at: float) -> list[float]:
        """The times of the tenant's commits at or before `at` not in the replica yet."""
        return self.ledger.unshipped_times(tenant_id, at)

    def backlog_bytes(self, tenant_id: str | None = None) -> int:
        """Unshipped WAL bytes (estimated from frame counts) of one tenant or all."""
        return self.ledger.backlog_bytes(tenant_id)

    def forget(self, tenant_id: str) -> None:
        """Drop live state so the next open starts a new generation (after an in-place restore)."""
        self.ledger.forget(tenant_id)
        self.catalog.forget_position(tenant_id)


def server_id(layout: Layout) -> str:
    """A stable random id for this data dir, so segment keys of several servers never collide."""
    path = layout.system_dir / "server-id"
    if not path.exists():
        write_durably(path, secrets.token_hex(4).encode(), mode=0o644)
    return path.read_text().strip()
