"""The change feed's tenant side: what each commit changed, kept in a bounded ring per tenant.

What SQLite tells us, and how it is used (APSW 3.54, SQLite built with the preupdate hook):
- The preupdate hook names every row an INSERT, UPDATE or DELETE touches (table, rowid), also
  in triggers, foreign-key actions and REPLACE conflict deletes, and it disables the DELETE
  truncate optimization, so `DELETE FROM t` reports each row. It does not fire for virtual
  tables (it does for their shadow tables), TEMP tables are ignored, and a WITHOUT ROWID
  table has no rowid to name its rows by. (The plain update hook, one per connection, says
  less and never fires for WITHOUT ROWID tables.) The hook also fires for changes a failed
  statement or `ROLLBACK TO` later undoes, with no callback for the undo.
- The commit hook runs before a commit, the rollback hook on every rollback (a refused or
  failed commit included); a `SQLITE_TRACE_PROFILE` trace runs when a statement ends, after
  its commit. The wal_hook would mark the commit too, but a connection has one and the
  checkpointer or the shipper owns it.
So: the preupdate hook notes which rows a transaction touched (a bounded set of keys); the
rollback hook forgets them; once the statement that committed has ended, still in the
committing thread and under the tenant's lock, every touched row is read back by rowid. The
row as committed is what the feed carries: `insert` or `update` with the new row, or `delete`.
That makes undone statements harmless (a row an undone statement touched shows as an
`update` carrying its unchanged values, never as a change that did not happen) and costs the
writer one indexed read per changed row, for tenants with subscribers only.

What the feed cannot carry is said, never skipped silently: an entry `{"op": "resync"}` names
a table whose rows changed unseen (WITHOUT ROWID, a virtual table, a table dropped or renamed
in the same transaction), `{"op": "schema"}` marks a transaction that changed the schema
(DROP TABLE removes rows with no entry), and a transaction of more than `max_txn_bytes`, a
subscriber further behind than the ring keeps, a position the ring does not know (the server
restarted, the feed went idle) and a tenant replaced by a restore or import each give a
`Resync` event. Changes to `_sqlfleet_*` bookkeeping are not carried.

The ring is in memory only: positions (ring generation, commit sequence) do not survive a
restart. Hooks are installed only on tenants with subscribers (and for `linger` seconds after
the last one left), always with the tenant's lock held, so the point from which a ring is
complete (`ready`) is exact. Nothing here waits for a subscriber: a commit appends to its ring
and calls the subscribers' wake callbacks, which must not block.

Parts: tenants.change_events (the events), tenants.change_ring (one tenant's ring),
tenants.change_recorder (the hooks on one connection); here, subscriptions and the FleetHooks
that bind the hooks to the tenants that have subscribers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import apsw

from tenants.change_events import Encode, End, Resync
from tenants.change_recorder import Recorder
from tenants.change_ring import Ring
from tenants.errors import SqlfleetError, TenantBusy, TenantUnavailable
from tenants.hooks import FleetHooks
from tenants.pool import Handle, Pool
from tenants.sandbox import Sandbox

_ARM_WAIT = 0.5  # seconds a new ring waits for its open tenant's lock before leaving it to the next request


@dataclass(frozen=True)
class FeedConfig:
    """Built by `ops.settings.Settings` (no defaults here)."""

    buffer_bytes: int  # encoded events kept per tenant
    max_txn_bytes: int  # one transaction's changes past this: a Resync instead
    max_subscribers: int  # on this server
    max_subscribers_per_tenant: int
    linger: float  # seconds a ring outlives its last subscriber, for reconnects
    heartbeat: float  # seconds between a quiet stream's heartbeats (the router sends them)


class TooManySubscribers(SqlfleetError):
    status = 429
    code = "too_many_subscribers"


class FeedBusy(SqlfleetError):
    """The server holds `max_subscribers` subscriptions already."""

    status = 503
    code = "server_busy"


class Subscription:
    """One subscriber's place in its tenant's ring. `read` and `close` may be called from any
    thread (the event loop): they never block on a writer."""

    def __init__(
        self,
        feed: ChangeFeed,
        tenant_id: str,
        ring: Ring,
        after: int,
        notice: Resync | None,
        wake: Callable[[], None],
    ) -> None:
        self.tenant_id = tenant_id
        self._feed = feed
        self._ring = ring
        self._after = after
        self._notice = notice
        self._wake = wake
        self.closed = False

    @property
    def ready(self) -> bool:
        """Whether the ring is complete from `position` on (else wait: its open tenant was busy)."""
        return self._ring.armed or self._ring.end is not None

    @property
    def position(self) -> str:
        """The position of the last event read (or where the subscription started)."""
        return self._ring.position(self._after)

    def read(self, max_bytes: int) -> tuple[list[bytes], Resync | End | None]:
        """The next encoded events (about `max_bytes`, at least one), or else a notice: Resync
        (this subscriber fell behind or asked for an unknown position; reading goes on from the
        newest event) or End (nothing more will come); ([], None) when there is nothing new."""
        if self._notice is not None:
            notice, self._notice = self._notice, None
            return [], notice
        frames, after, behind = self._ring.read(self._after, max_bytes)
        self._after = after
        if behind:
            reason = "this subscriber fell further behind than changes_buffer_bytes keeps"
            return [], Resync(self.position, reason, time.time())
        if frames:
            return frames, None
        return [], self._ring.end

    def close(self) -> None:
        """Give up the subscription (idempotent)."""
        if not self.closed:
            self.closed = True
            self._feed._unsubscribe(self._ring, self._wake)


class ChangeFeed(FleetHooks):
    """The rings of the tenants with subscribers, and the hooks that fill them. Thread-safe;
    `subscribe` may wait (at most ~0.5 s) for the tenant's lock: call it from a worker thread."""

    def __init__(self, config: FeedConfig, pool: Pool, encode: Encode) -> None:
        self.config = config
        self._pool = pool
        self._encode = encode
        self._lock = threading.Lock()
        self._rings: dict[str, Ring] = {}
        self._recorders: dict[str, Recorder] = {}
        self._due: set[str] = set()  # open tenants whose hooks must be bound or removed
        self._total = 0
        self._closed: End | None = None

    # -- subscribers -----------------------------------------------------------------------------

    def subscribe(self, tenant_id: str, last_event_id: str | None, wake: Callable[[], None]) -> Subscription:
        """A subscription to the tenant's events after `last_event_id` (a position an event
        carried), or after the newest when None; an unknown position starts at the newest with
        a Resync notice. `wake()` is called, from any thread, whenever there is something new to
        read. Raises TooManySubscribers, FeedBusy, TenantUnavailable (shutting down), and what
        leasing the open tenant raises (TenantNotFound ...). The caller checked the tenant exists."""
        with self._lock:
            if self._closed is not None:
                raise TenantUnavailable(f"the change feed is closed: {self._closed.reason}")
            self._sweep_locked()
            if self._total >= self.config.max_subscribers:
                raise FeedBusy(
                    f"the server has {self._total} change feed subscribers (changes_max_subscribers)"
                )
            ring = self._rings.get(tenant_id)
            if ring is None:
                ring = self._rings[tenant_id] = Ring(self.config.buffer_bytes)
            elif ring.subscribers >= self.config.max_subscribers_per_tenant:
                raise TooManySubscribers(
                    f"tenant {tenant_id!r} has {ring.subscribers} change feed subscribers "
                    "(changes_max_subscribers_per_tenant)"
                )
            ring.subscribers += 1
            self._total += 1
            ring.add_wake(wake)
        try:
            # a tenant already found busy is left to its next request: one wait, not one each
            if not ring.armed and tenant_id not in self._due:
                self._arm(tenant_id, ring)
        except BaseException:
            self._unsubscribe(ring, wake)
            raise
        return self._start(tenant_id, ring, last_event_id, wake)

    def _start(
        self, tenant_id: str, ring: Ring, last_event_id: str | None, wake: Callable[[], None]
    ) -> Subscription:
        head = ring.head()
        if last_event_id is None:
            return Subscription(self, tenant_id, ring, head, None, wake)
        generation, _, seq = last_event_id.strip().rpartition("-")
        if generation == ring.generation and seq.isdigit() and ring.known(int(seq)):
            return Subscription(self, tenant_id, ring, int(seq), None, wake)
        reason = (
            f"position {last_event_id[:40]!r} is not in the feed (the server restarted, the feed "
            "had no subscriber for changes_linger, or the subscriber fell too far behind)"
        )
        return Subscription(
            self, tenant_id, ring, head, Resync(ring.position(head), reason, time.time()), wake
        )

    def _unsubscribe(self, ring: Ring, wake: Callable[[], None]) -> None:
        with self._lock:
            ring.subscribers -= 1
            self._total -= 1
            ring.remove_wake(wake)
            if ring.subscribers == 0:
                ring.idle_since = time.monotonic()

    def _arm(self, tenant_id: str, ring: Ring) -> None:
        """Make the ring complete from now: bind the hooks to the tenant's open connection, or,
        when it is closed, leave that to `after_open`; when it is busy, to the next request."""
        if not self._pool.is_open(tenant_id):
            # A tenant opened from now on finds the ring in after_open, before any request.
            ring.armed = True
            ring.wake()
            return
        try:
            with self._pool.lease(tenant_id, wait=_ARM_WAIT) as handle:
                assert handle.conn is not None
                self._bind(tenant_id, handle.conn)
        except TenantBusy:  # a transaction holds it: the next request binds (work_due)
            with self._lock:
                self._due.add(tenant_id)

    def sweep(self) -> None:
        """Drop the rings whose last subscriber left more than `linger` seconds ago."""
        with self._lock:
            self._sweep_locked()

    def _sweep_locked(self) -> None:
        now = time.monotonic()
        idle = [(r.idle_since, t) for t, r in self._rings.items() if r.subscribers == 0]
        # idle rings also make room for new ones beyond max_subscribers (memory: rings x buffer)
        excess = len(self._rings) - self.config.max_subscribers
        for since, tenant_id in sorted(idle):
            if now - since < self.config.linger and excess <= 0:
                break
            self._rings.pop(tenant_id).dropped = True
            excess -= 1
            if tenant_id in self._recorders:
                self._due.add(tenant_id)

    def subscribers(self, tenant_id: str | None = None) -> int:
        with self._lock:
            if tenant_id is None:
                return self._total
            ring = self._rings.get(tenant_id)
            return ring.subscribers if ring is not None else 0

    def close(self, reason: str) -> None:
        """End every subscription (server stopping) and refuse new ones. Idempotent."""
        with self._lock:
            if self._closed is not None:
                return
            self._closed = End(reason)
            rings = list(self._rings.values())
        for ring in rings:
            ring.finish(End(reason))

    # -- hooks -----------------------------------------------------------------------------------

    def _bind(self, tenant_id: str, conn: apsw.Connection) -> None:
        """Bind (or remove) the hooks of the tenant's connection as its ring says. For the
        holder of the tenant's lock, outside a transaction."""
        with self._lock:
            ring = self._rings.get(tenant_id)
            recorder = self._recorders.get(tenant_id)
            self._due.discard(tenant_id)
        if recorder is not None and recorder.conn is not conn:
            recorder = None  # of a connection closed meanwhile
        if ring is None:
            if recorder is not None:
                recorder.uninstall()
                with self._lock:
                    self._recorders.pop(tenant_id, None)
            return
        if recorder is None:
            recorder = Recorder(conn, self.config.max_txn_bytes, self._encode)
        recorder.ring = ring
        with self._lock:
            self._recorders[tenant_id] = recorder
        ring.armed = True
        ring.wake()

    def after_open(self, tenant_id: str, conn: apsw.Connection, sandbox: Sandbox) -> None:
        if tenant_id in self._rings:
            self._bind(tenant_id, conn)

    def work_due(self, tenant_id: str) -> bool:
        return tenant_id in self._due

    def before_use(self, tenant_id: str, handle: Handle) -> None:
        if handle.conn is not None:
            self._bind(tenant_id, handle.conn)

    def before_close(self, tenant_id: str, conn: apsw.Connection) -> None:
        with self._lock:
            self._due.discard(tenant_id)
            ring = self._rings.get(tenant_id)
            recorder = self._recorders.get(tenant_id)
            if recorder is not None and recorder.conn is conn:
                del self._recorders[tenant_id]
                recorder.uninstall()
        if ring is not None and not ring.armed:
            # it was busy when subscribed to: closed, nothing commits until after_open binds
            ring.armed = True
            ring.wake()

    def after_create(self, tenant_id: str, path: Path) -> None:
        ring = self._rings.get(tenant_id)
        if ring is not None:  # subscribers of a tenant replaced in place (restore, import)
            reason = "the tenant's database was replaced (a restore or an import in place)"
            now = time.time()
            ring.publish(
                self._encode, lambda position: Resync(position, reason, now), self.config.max_txn_bytes
            )

    def after_delete(self, tenant_id: str) -> None:
        with self._lock:
            ring = self._rings.pop(tenant_id, None)
            self._due.discard(tenant_id)
        if ring is not None:
            ring.finish(End("the tenant was deleted"))

    def after_revoke(self, tenant_id: str) -> None:
        ring = self._rings.get(tenant_id)
        if ring is not None:
            ring.wake()  # subscribers check their credentials again
