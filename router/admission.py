"""Admission: how many pool misses compete for the CPU at once.

APSW lets go of the GIL around every SQLite call (each prepare, step, open and close) and takes it
back for every callback, ~35 times per pool miss. With many worker threads busy there is always
a waiter, so each release wakes another thread: on this project's 2-core machine almost half of
the server's CPU went to the kernel switching threads, and the 10k fleet loop (every request a
miss) served 680 requests/s with 16 busy workers but 880 with one or two. Waiting for the disk
is another matter: commits of different tenants must fsync at once (64 tenants' single-row
inserts: 1,924 writes/s with 16 threads, 1,258 with one).

So a normal-lane job of a tenant that is not open in the pool starts in its worker thread only
once it holds a *slot* (at most `slots` are held), and gives it back when it ends, when it is
about to wait for the disk (SQLite's commit hook: the commit's WAL write and fsync come next),
or `lend_after` seconds after it took it (a long statement, a restore from the replica,
anything else that waits), whichever comes first. A job without its slot runs on to its end:
slots bound the jobs that compete for the CPU, the lane's `worker_threads` still bound those
that run. Jobs of open tenants (a point query, a write) need no slot: limiting them too cost
writes more than it saved (1,613 against 1,713 writes/s). Jobs wait for a slot on the event
loop, before they take a thread: a thread waiting on a lock costs a wake-up and a GIL hand-off
more, and would hold a thread that jobs of open tenants need.

Event loop only, except `run` and the commit hook (a worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import apsw

from metrics.instruments import ADMISSION_WAITING, ADMISSION_WAITS
from tenants.hooks import FleetHooks
from tenants.sandbox import Sandbox

T = TypeVar("T")

# A job holding its slot this long is waiting for something (or runs long): it lends the slot.
# Longer than a pool miss takes (~1 ms of CPU, a few ms with its GIL waits), short enough that
# a slot is never held for long by work that does not use the CPU.
LEND_AFTER = 0.005


class Slot:
    """One job's claim to run; `give_back` on the event loop (idempotent)."""

    __slots__ = ("_admission", "_loop", "_timer", "asked", "held")

    def __init__(self, admission: Admission, loop: asyncio.AbstractEventLoop) -> None:
        self._admission = admission
        self._loop = loop
        self.held = True
        self.asked = False  # the job's thread asked for it to be given back
        self._timer = loop.call_later(admission.lend_after, self.give_back)

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self._timer.cancel()
            self._admission.free.release()

    def give_back_soon(self) -> None:
        """From the job's thread: give it back as soon as the loop can. Never raises (it runs
        in SQLite's commit hook, where raising would roll the commit back)."""
        if not self.asked:
            self.asked = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits for it
                self._loop.call_soon_threadsafe(self.give_back)


class Admission(FleetHooks):
    """At most `slots` (>= 1) normal-lane jobs hold a slot; see the module's docstring."""

    def __init__(self, slots: int, lend_after: float, is_open: Callable[[str], bool]) -> None:
        self.lend_after = lend_after
        self.is_open = is_open
        self.free = asyncio.Semaphore(slots)  # bound to the loop that first waits on it
        self._local = threading.local()  # .slot: the slot of this worker thread's job, if any

    async def take(self) -> Slot:
        """Wait for a slot (FIFO); the caller gives it back (`Slot.give_back`) once the job ends."""
        if self.free.locked():  # counted only then: a free slot costs nothing more
            ADMISSION_WAITS.inc()
            ADMISSION_WAITING.inc()
            try:
                await self.free.acquire()
            finally:
                ADMISSION_WAITING.dec()
        else:
            await self.free.acquire()
        return Slot(self, asyncio.get_running_loop())

    def run(self, slot: Slot, fn: Callable[..., T], *args: object) -> T:
        """In the worker thread: `fn(*args)` as the job holding `slot`."""
        self._local.slot = slot
        try:
            return fn(*args)
        finally:
            self._local.slot = None

    def after_open(self, tenant_id: str, conn: apsw.Connection, sandbox: Sandbox) -> None:
        conn.set_commit_hook(self._before_commit, id=Admission)

    def _before_commit(self) -> bool:
        """SQLite's commit hook: False lets the commit go on (its WAL write and fsync come next)."""
        slot: Slot | None = getattr(self._local, "slot", None)
        if slot is not None:
            slot.give_back_soon()
        return False
