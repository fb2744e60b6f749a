"""The LRU pool of open tenant connections.

Contract:
- `lease(id)` opens the tenant on first use (lazily) and yields its Handle with the handle's
  lock held: statements of one tenant are serialized, different tenants run in parallel.
- Eviction keeps at most `capacity` idle handles; a handle with a lease outstanding is never
  closed, so the pool may briefly hold more (bounded by the number of concurrent leases).
- A tenant is never open twice: a re-open waits until the previous close has finished.
- `discard(id)` waits for the outstanding leases (and for an eviction already closing the
  tenant), then closes; leases queued behind it check out afresh, so the opener decides
  whether the tenant reopens or fails. `close_all` refuses checkouts from then on.
- A `before_close` hook that raises is logged; the connection is closed regardless.
- `lease(id, passing=True)` (fleet-wide work such as a rollout) leaves the LRU order alone: a
  tenant it opens evicts nobody, does not count toward `capacity`, and closes when its last
  lease ends; one already open is used where it is, and a regular checkout of a passing handle
  makes it a regular member.
- `pin(id)` holds a handle open without its lock (`users` > 0, so it is never evicted) until
  `unpin`; the pinner takes the lock when it needs it with `acquire`/`release`.
- Waiting for a handle's lock is bounded by `config.busy_timeout` seconds, then TenantBusy.
- Preemption: whoever holds a handle's lock across requests (a Hrana stream's open
  transaction) sets `handle.preempt` while it does. An admin operation (`discard`, or `lease`
  with `preempt=reason`) waits `config.preempt_wait` seconds for the lock, then calls it: the
  holder rolls back and lets go (at once if idle, else when its current request ends).
All methods are thread-safe; `lease` blocks, so async callers run it in a worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import apsw

from metrics.instruments import (
    POOL_CAPACITY,
    POOL_EVICTIONS,
    POOL_HITS,
    POOL_MISSES,
    POOL_OPEN,
    POOL_OPEN_SECONDS,
)
from tenants.config import PoolConfig
from tenants.errors import TenantBusy, TenantNotFound, TenantUnavailable
from tenants.sandbox import SESSION_PRAGMAS, Sandbox

log = logging.getLogger(__name__)


class Latch:
    """A one-shot event: `set` once (from any thread), after which `wait` returns at once. What
    threading.Event does for this, made for a fraction of its cost (a lock, not a Condition):
    the pool makes two per pool miss."""

    __slots__ = ("_lock", "done")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # released by `set`
        self.done = False

    def set(self) -> None:
        self.done = True
        self._lock.release()

    def is_set(self) -> bool:
        return self.done

    def wait(self) -> None:
        if not self.done:
            with self._lock:
                pass


class Handle:
    """One open tenant connection and what guards it."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.conn: apsw.Connection | None = None
        self.sandbox: Sandbox | None = None
        self.lock = threading.Lock()
        self.users = 0
        self.ready = Latch()
        self.error: BaseException | None = None
        self.discarded = False
        self.discard_reason = ""  # why, once discarded ("the tenant is being deleted")
        self.query_only = False
        self.passing = False  # opened by a passing lease, outside the LRU order
        # Set by a holder of `lock` across requests while it holds it: asks it to let go.
        self.preempt: Preempt | None = None

    def set_query_only(self, value: bool) -> None:
        """Switch SQLite's query_only (enforced at execution time, not by reading SQL)."""
        if value == self.query_only:
            return
        assert self.conn is not None and self.sandbox is not None
        self.sandbox.trusted = True
        try:
            # never cached: a tenant must not be able to replay this statement text
            self.conn.cursor().execute(f"PRAGMA query_only={int(value)}", can_cache=False)
        finally:
            self.sandbox.trusted = False
        self.query_only = value

    def reset_session(self) -> dict[str, int]:
        """Put the connection-scoped pragmas tenant SQL set since the last reset back to the
        server's values (tenants.sandbox.SESSION_PRAGMAS), and drop the TEMP objects it made;
        the values the pragmas had, where those differed (for `apply_session`). Cheap when
        nothing was set or made. For the holder of `lock`, about to let go; outside a
        transaction (`foreign_keys` cannot change inside one)."""
        if self.sandbox is None or self.conn is None:
            return {}
        if self.sandbox.temp_created:
            self.sandbox.temp_created = False
            self._drop_temp_objects()
        if not self.sandbox.pragmas_set:
            return {}
        names, self.sandbox.pragmas_set = sorted(self.sandbox.pragmas_set), set()
        had: dict[str, int] = {}
        for name in names:
            value = self.conn.cursor().execute(f"PRAGMA {name}", can_cache=False).fetchall()[0][0]
            if value != SESSION_PRAGMAS[name]:
                had[name] = int(value)  # type: ignore[arg-type]
        self._set_pragmas({name: SESSION_PRAGMAS[name] for name in had})
        return had

    def apply_session(self, values: dict[str, int]) -> None:
        """Set what `reset_session` returned again (a stream taking its connection back)."""
        self._set_pragmas(values)
        if values:
            assert self.sandbox is not None
            self.sandbox.pragmas_set.update(values)

    def _drop_temp_objects(self) -> None:
        """Drop every TEMP trigger, view and table (their indexes go with them): they belong
        to the request or stream that made them, never to the next user of the connection."""
        assert self.conn is not None and self.sandbox is not None
        self.sandbox.trusted = True
        try:
            cursor = self.conn.cursor()
            found = cursor.execute(
                "SELECT type, name FROM temp.sqlite_schema WHERE type IN ('trigger', 'view', 'table')"
                " ORDER BY CASE type WHEN 'trigger' THEN 0 WHEN 'view' THEN 1 ELSE 2 END",
                can_cache=False,
            ).fetchall()
            for kind, name in found:
                quoted = '"' + str(name).replace('"', '""') + '"'
                cursor.execute(f"DROP {str(kind).upper()} IF EXISTS temp.{quoted}", can_cache=False)
        finally:
            self.sandbox.trusted = False

    def _set_pragmas(self, values: dict[str, int]) -> None:
        if not values:
            return
        assert self.conn is not None and self.sandbox is not None
        self.sandbox.trusted = True
        try:
            for name, value in values.items():  # names from SESSION_PRAGMAS, values ints: no quoting
                self.conn.cursor().execute(f"PRAGMA {name}={int(value)}", can_cache=False)
        finally:
            self.sandbox.trusted = False


Opener = Callable[[str], tuple[apsw.Connection, Sandbox]]
Closer = Callable[[Handle], None]
# Called with the reason, from the preempting thread; must not wait for the handle's lock.
Preempt = Callable[[str], None]


class Pool:
    def __init__(self, config: PoolConfig, opener: Opener, before_close: Closer | None = None) -> None:
        self.capacity = max(1, config.capacity)
        self.busy_timeout = config.busy_timeout
        self.preempt_wait = config.preempt_wait
        self._opener = opener
        self._before_close = before_close
        self._lock = threading.Lock()
        self._handles: OrderedDict[str, Handle] = OrderedDict()
        self._closing: dict[str, Latch] = {}
        self._passing = 0  # handles of `_handles` that are `passing`
        self._closed = False
        POOL_CAPACITY.set(self.capacity)

    def __len__(self) -> int:
        return len(self._handles)

    def is_open(self, tenant_id: str) -> bool:
        return tenant_id in self._handles

    @contextmanager
    def lease(
        self, tenant_id: str, wait: float | None = None, preempt: str | None = None, passing: bool = False
    ) -> Iterator[Handle]:
        """Yield the tenant's open handle, locked (waiting for the lock at most `wait` seconds,
        default `busy_timeout`; with `preempt`, the reason, a holder across requests is
        preempted after `preempt_wait` seconds first; `passing`: see the module docstring).
        Raises whatever the opener raises, TenantBusy, and TenantUnavailable once the pool is
        closed."""
        handle = self._checkout_locked(tenant_id, wait, preempt, passing)
        try:
            yield handle
        finally:
            _reset_session(handle)
            handle.lock.release()
            self._checkin(handle)

    def _checkout_locked(
        self, tenant_id: str, wait: float | None, preempt: str | None, passing: bool = False
    ) -> Handle:
        while True:
            handle = self._checkout(tenant_id, passing)
            try:
                self.acquire(handle, wait, preempt)
                return handle
            except TenantNotFound:
                self._checkin(handle)
                if not handle.discarded:
                    raise
                # Discarded while we queued: that handle is closed. Check out afresh and let the
                # opener decide (reopen a replaced file; refuse a deleted or corrupt tenant).
            except BaseException:
                self._checkin(handle)
                raise

    def try_lease(self, tenant_id: str) -> Handle | None:
        """The tenant's handle, locked, only if it is open and free right now; else None. Never
        waits or opens. Release with `release`. (None for a passing handle too: releasing one
        may close it, which is not for the caller's thread, the event loop.)"""
        with self._lock:
            handle = self._handles.get(tenant_id)
            if handle is None or not handle.ready.is_set() or handle.error is not None or handle.discarded:
                return None
            if handle.passing:
                return None
            if not handle.lock.acquire(blocking=False):
                return None
            handle.users += 1
            self._handles.move_to_end(tenant_id)
        return handle

    def release(self, handle: Handle, used: bool = True) -> None:
        """Undo a `try_lease`; `used` counts it as a pool hit (False: the caller gave up and
        will lease again)."""
        if used:
            POOL_HITS.inc()
        _reset_session(handle)
        handle.lock.release()
        self._checkin(handle)

    def pin(self, tenant_id: str) -> Handle:
        """The tenant's open handle, unlocked, kept open (never evicted) until `unpin`.
        Raises whatever the opener raises."""
        return self._checkout(tenant_id)

    def unpin(self, handle: Handle) -> None:
        """Undo one `pin`. The caller must not hold the handle's lock through `acquire`."""
        self._checkin(handle)

    def acquire(self, handle: Handle, wait: float | None = None, preempt: str | None = None) -> None:
        """Take a pinned or leased handle's lock, waiting at most `wait` seconds (default
        `busy_timeout`), after preempting a holder across requests (see the module docstring)
        if `preempt` gives a reason. Raises TenantBusy on timeout, TenantNotFound if the handle
        was discarded meanwhile. Release with `handle.lock.release()` (from any thread)."""
        limit = self.busy_timeout if wait is None else wait
        if not self._lock_handle(handle, limit, preempt):
            raise TenantBusy(
                f"tenant {handle.tenant_id!r} is busy: a transaction held it for more than {limit:g} s"
            )
        if handle.discarded:
            handle.lock.release()
            raise TenantNotFound(f"tenant {handle.tenant_id!r} does not exist")

    def _lock_handle(self, handle: Handle, wait: float | None, preempt: str | None) -> bool:
        """Take `handle.lock` within `wait` seconds (None: no limit); with a `preempt` reason,
        wait `preempt_wait` seconds first, then preempt the holder and wait `wait` more."""
        if preempt is not None:
            if handle.lock.acquire(timeout=self.preempt_wait):
                return True
            self._preempt(handle, preempt)
        return handle.lock.acquire(timeout=-1 if wait is None else wait)

    def _preempt(self, handle: Handle, reason: str) -> None:
        preempt = handle.preempt
        if preempt is None:
            return  # held by a request, which ends by its own bounds
        log.warning("tenant %s: preempting the transaction that holds it: %s", handle.tenant_id, reason)
        try:
            preempt(reason)
        except Exception:  # the holder's trouble must not fail the admin operation
            log.exception("preempting the holder of tenant %s failed", handle.tenant_id)

    def _checkout(self, tenant_id: str, passing: bool = False) -> Handle:
        """The tenant's handle, open, with a user counted. A request that joined an open already
        under way and saw it fail opens once more for itself: that open began before the request
        (a create or restore may have finished since), and its answer must be about the tenant
        as it is now. Raises what the opener raises, TenantUnavailable once closed."""
        handle, fresh = self._join_or_open(tenant_id, passing)
        if handle.error is not None and not fresh:
            self._checkin(handle)
            handle, fresh = self._join_or_open(tenant_id, passing)
        if handle.error is not None:
            self._checkin(handle)
            raise handle.error
        return handle

    def _join_or_open(self, tenant_id: str, passing: bool) -> tuple[Handle, bool]:
        """The tenant's handle once its open is over (opened here: fresh, or joined), a user
        counted; its `error` says whether the open failed."""
        while True:
            with self._lock:
                if self._closed:
                    raise TenantUnavailable("the server is shutting down")
                closing = self._closing.get(tenant_id)
                if closing is None:
                    handle = self._handles.get(tenant_id)
                    fresh = handle is None
                    if handle is None:
                        handle = self._handles[tenant_id] = Handle(tenant_id)
                        handle.passing = passing
                        self._passing += passing
                    elif not passing:
                        if handle.passing:
                            handle.passing = False
                            self._passing -= 1
                        self._handles.move_to_end(tenant_id)
                    handle.users += 1
                    break
            closing.wait()
        if fresh:
            POOL_MISSES.inc()
            self._open(handle)
        else:
            POOL_HITS.inc()
            handle.ready.wait()
        return handle, fresh

    def _open(self, handle: Handle) -> None:
        started = time.perf_counter()
        try:
            handle.conn, handle.sandbox = self._opener(handle.tenant_id)
        except BaseException as exc:
            handle.error = exc
            with self._lock:
                if self._handles.get(handle.tenant_id) is handle:
                    del self._handles[handle.tenant_id]
                    self._passing -= handle.passing
        finally:
            handle.ready.set()
        POOL_OPEN_SECONDS.observe(time.perf_counter() - started)
        if not handle.passing:
            self._evict()

    def _checkin(self, handle: Handle) -> None:
        with self._lock:
            handle.users -= 1
            done = handle.passing and handle.users == 0 and self._handles.get(handle.tenant_id) is handle
            if done:
                self._take_out(handle)
        if done:
            self._close(handle)
        elif len(self._handles) - self._passing > self.capacity:
            self._evict()

    def _evict(self) -> None:
        victims: list[Handle] = []
        with self._lock:
            excess = len(self._handles) - self._passing - self.capacity
            if excess > 0:
                for handle in self._handles.values():
                    if handle.users == 0 and handle.ready.is_set() and not handle.passing:
                        victims.append(handle)
                        if len(victims) == excess:
                            break
                for handle in victims:
                    self._take_out(handle)
            POOL_OPEN.set(len(self._handles))
        for handle in victims:
            POOL_EVICTIONS.inc()
            self._close(handle)

    def _take_out(self, handle: Handle) -> None:
        # caller holds self._lock
        del self._handles[handle.tenant_id]
        self._passing -= handle.passing
        handle.passing = False
        self._closing[handle.tenant_id] = Latch()

    def _close(self, handle: Handle) -> None:
        try:
            if handle.conn is not None:
                self._run_before_close(handle)
                _close_connection(handle)
        finally:
            handle.conn = None
            with self._lock:
                self._closing.pop(handle.tenant_id).set()

    def _run_before_close(self, handle: Handle) -> None:
        # A failing hook must not leak the connection: it holds the file's exclusive lock and
        # a later open of the tenant would find it busy.
        if self._before_close is None:
            return
        try:
            self._before_close(handle)
        except Exception:
            log.exception("before_close hook failed for tenant %s", handle.tenant_id)

    def discard(self, tenant_id: str, reason: str = "the tenant is being closed") -> None:
        """Close the tenant's handle once its leases are done, preempting (for `reason`) a
        holder across requests after `preempt_wait` seconds; when it returns the tenant has no
        open connection (an eviction under way is waited for too). Idempotent."""
        with self._lock:
            handle = self._handles.get(tenant_id)
            closing = self._closing.get(tenant_id)
            if handle is not None:
                handle.discarded = True
                handle.discard_reason = reason
                self._take_out(handle)
                POOL_OPEN.set(len(self._handles))
        if handle is None:
            if closing is not None:
                closing.wait()
            return
        handle.ready.wait()
        # No limit after the preemption: what still holds the lock is a request, bounded by its
        # own limits (statement timeout, request budget).
        self._lock_handle(handle, None, reason)
        try:
            self._close(handle)
        finally:
            handle.lock.release()

    def close_all(self) -> None:
        """Refuse new checkouts, then close every handle, waiting for outstanding leases
        (preempting holders across requests) and for closes already under way. Idempotent."""
        with self._lock:
            self._closed = True
        for tenant_id in list(self._handles):
            self.discard(tenant_id, "the server is shutting down")
        with self._lock:
            pending = list(self._closing.values())
        for closing in pending:
            closing.wait()


# How long a close waits for a copy that reads the connection (an export's SQLite backup, kept
# between its steps) to finish its current step elsewhere: a step is a bounded number of pages.
_CLOSE_WAIT = 5.0
_CLOSE_RETRY = 0.005


def _close_connection(handle: Handle) -> None:
    """Close the handle's connection. A backup reading it closes with it, but not while the
    backup's own destination connection is in use in another thread (APSW raises
    ThreadingViolationError then, even with force): that is waited out, up to _CLOSE_WAIT s.
    An unclosed connection would keep the file's exclusive lock until garbage-collected."""
    assert handle.conn is not None
    deadline = time.monotonic() + _CLOSE_WAIT
    while True:
        try:
            handle.conn.close()
            return
        except apsw.ThreadingViolationError:
            if time.monotonic() >= deadline:
                log.exception("closing tenant %s failed", handle.tenant_id)
                return
            time.sleep(_CLOSE_RETRY)
        except apsw.Error:
            log.exception("closing tenant %s failed", handle.tenant_id)
            return


def _reset_session(handle: Handle) -> None:
    """`handle.reset_session()` for a holder letting go: logged, never raised (the connection
    is the tenant's own, and a failure here must not turn a done request into an error)."""
    try:
        handle.reset_session()
    except apsw.Error:
        log.exception("tenant %s: resetting the connection's session state failed", handle.tenant_id)
