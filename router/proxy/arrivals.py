"""Tenants a cluster node serves but holds only in the replica (issue 17, "through any node").

A tenant handed to this node (a planned move, a takeover) lives in a handoff manifest until it
is first opened, which restores it (tenants.fleet asks its hooks to recover a tenant it has no
row of; backups.handoff says where its backups are). A query opens its tenant anyway; admin and
data routes look at the catalog first (create, delete, info, tokens, backups, export, import,
the change feed), so before one of those is served here for a tenant the catalog lacks, the
proxy opens it once: then every route sees it as any other tenant (a create of its id is 409,
a delete deletes it).

Opening a tenant the catalog lacks reads the replica (a LIST of the slot's manifests, perhaps
a restore), which can hang as long as the replica does: it runs on a few threads of its own
(`Opening`), and a request waits for it only until its deadline, then answers 503. A tenant
found in no manifest is not looked for again by the route (backups.handoff.looked_up).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from tenants.errors import SqlfleetError, TenantNotFound
from tenants.fleet import Fleet

# Threads that open tenants at once. Bounded, so a hung replica holds at most this many (each
# until the replica client's own timeout); requests beyond them wait for a free one, within
# their deadline.
OPENING_THREADS = 8


class Arrivals:
    """`present` reads the catalog's in-memory rows (event loop); `arrive` is blocking (a
    restore, for a tenant a manifest names) and thread-safe (the pool serializes the opens of
    one tenant, so a tenant is restored once however many requests arrive at the same time)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def present(self, tenant: str) -> bool:
        return self.fleet.catalog.get(tenant) is not None

    def arrive(self, tenant: str) -> bool:
        """Open `tenant` once if it exists anywhere this node can restore it from; True when
        it exists nowhere (the replica said so: the route need not ask it again, see
        backups.handoff.looked_up). Whatever else fails (busy, not this node's, the replica) is
        the route's to report."""
        try:
            with self.fleet.lease(tenant, readonly=True, passing=True):
                return False
        except TenantNotFound:
            return True
        except SqlfleetError:
            return False


class Opening:
    """Runs blocking calls on at most `threads` threads, each awaited at most until a deadline.
    A call past its deadline is abandoned, not stopped: it keeps its thread until it returns, and
    no new call starts on that thread meanwhile (so a hung replica never piles up threads).
    Event loop only; its idle threads end with the process."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._free: asyncio.Semaphore | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, call: Callable[[str], bool], arg: str, seconds: float) -> bool | None:
        """`call(arg)` on one of the threads, and what it returned; None when no thread was free
        or the call did not return within `seconds` (it may still be running then)."""
        if self._free is None or self._pool is None:
            self._free = asyncio.Semaphore(self._threads)
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="tenant-opening")
        free, loop, deadline = self._free, asyncio.get_running_loop(), time.monotonic() + seconds
        try:
            await asyncio.wait_for(free.acquire(), seconds)
        except TimeoutError:
            return None
        done = self._pool.submit(call, arg)  # no await since the acquire: a token per running call

        def release(_: Future[bool]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(free.release)

        done.add_done_callback(release)
        waited = asyncio.wrap_future(done)
        finished, _ = await asyncio.wait((waited,), timeout=max(0.0, deadline - time.monotonic()))
        if not finished:
            waited.cancel()  # stops only a call not yet started; either way the token returns
            return None
        return waited.result()
