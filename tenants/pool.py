"""The LRU pool of open tenant connections.

Contract:
- `lease(id)` opens the tenant on first use (lazily) and yields its Handle with the handle's
  lock held: statements of one tenant are serialized, different tenants run in parallel.
- Eviction keeps at most `capacity` idle handles; a handle with a lease outstanding is never
  closed, so the pool may briefly hold more (bounded by the number of concurrent leases).
- A tenant is never open twice: a re-open waits until the previous close has finished.
- `discard(id)` makes new leases fail, waits for the outstanding ones, then closes.
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
from tenants.errors import TenantNotFound
from tenants.sandbox import Sandbox

log = logging.getLogger(__name__)


class Handle:
    """One open tenant connection and what guards it."""

    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.conn: apsw.Connection | None = None
        self.sandbox: Sandbox | None = None
        self.lock = threading.Lock()
        self.users = 0
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.discarded = False
        self.query_only = False

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


Opener = Callable[[str], tuple[apsw.Connection, Sandbox]]
Closer = Callable[[Handle], None]


class Pool:
    def __init__(self, capacity: int, opener: Opener, before_close: Closer | None = None) -> None:
        self.capacity = max(1, capacity)
        self._opener = opener
        self._before_close = before_close
        self._lock = threading.Lock()
        self._handles: OrderedDict[str, Handle] = OrderedDict()
        self._closing: dict[str, threading.Event] = {}
        POOL_CAPACITY.set(self.capacity)

    def __len__(self) -> int:
        return len(self._handles)

    def is_open(self, tenant_id: str) -> bool:
        return tenant_id in self._handles

    @contextmanager
    def lease(self, tenant_id: str) -> Iterator[Handle]:
        """Yield the tenant's open handle, locked. Raises whatever the opener raises."""
        handle = self._checkout(tenant_id)
        try:
            with handle.lock:
                if handle.discarded:
                    raise TenantNotFound(f"tenant {tenant_id!r} does not exist")
                yield handle
        finally:
            self._checkin(handle)

    def _checkout(self, tenant_id: str) -> Handle:
        while True:
            with self._lock:
                closing = self._closing.get(tenant_id)
                if closing is None:
                    handle = self._handles.get(tenant_id)
                    fresh = handle is None
                    if handle is None:
                        handle = self._handles[tenant_id] = Handle(tenant_id)
                    else:
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
        if handle.error is not None:
            self._checkin(handle)
            raise handle.error
        return handle

    def _open(self, handle: Handle) -> None:
        started = time.perf_counter()
        try:
            handle.conn, handle.sandbox = self._opener(handle.tenant_id)
        except BaseException as exc:
            handle.error = exc
            with self._lock:
                if self._handles.get(handle.tenant_id) is handle:
                    del self._handles[handle.tenant_id]
        finally:
            handle.ready.set()
        POOL_OPEN_SECONDS.observe(time.perf_counter() - started)
        self._evict()

    def _checkin(self, handle: Handle) -> None:
        with self._lock:
            handle.users -= 1
        if len(self._handles) > self.capacity:
            self._evict()

    def _evict(self) -> None:
        victims: list[Handle] = []
        with self._lock:
            excess = len(self._handles) - self.capacity
            if excess > 0:
                for handle in self._handles.values():
                    if handle.users == 0 and handle.ready.is_set():
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
        self._closing[handle.tenant_id] = threading.Event()

    def _close(self, handle: Handle) -> None:
        try:
            if handle.conn is not None:
                if self._before_close is not None:
                    self._before_close(handle)
                handle.conn.close()
        except apsw.Error:
            log.exception("closing tenant %s failed", handle.tenant_id)
        finally:
            handle.conn = None
            with self._lock:
                self._closing.pop(handle.tenant_id).set()

    def discard(self, tenant_id: str) -> None:
        """Close the tenant's handle once its leases are done; leases waiting on it fail."""
        with self._lock:
            handle = self._handles.get(tenant_id)
            if handle is None:
                return
            handle.discarded = True
            self._take_out(handle)
            POOL_OPEN.set(len(self._handles))
        handle.ready.wait()
        with handle.lock:
            self._close(handle)

    def close_all(self) -> None:
        """Close every handle, waiting for outstanding leases. Idempotent."""
        for tenant_id in list(self._handles):
            self.discard(tenant_id)
