"""Running tenant work in worker threads, fairly.

- One queue per tenant: a tenant's jobs run one at a time (the pool serializes its statements
  anyway), queued on the event loop so that a busy tenant never holds threads that only wait
  for its lock; past `max_queued` waiting jobs it answers 503 at once. Every protocol's tenant
  work goes through it (a Hrana stream inside a transaction holds the tenant's lock itself, so
  its requests skip the queue and never wait behind requests waiting for that very lock).
- Two lanes. Each tenant's worker time is summed with exponential decay (time constant
  `window` seconds); a tenant past `heavy_seconds` runs its jobs in the heavy lane: its own
  max(1, threads // 2) threads at a lower OS priority (see OS priority below). The
  `threads` of the normal lane stay for everyone else, however many tenants are heavy. Only a
  job's time beyond `grace` counts: a tenant holds one thread at a time, so many quick jobs
  deny nobody a thread, and they slow down when the server is busy (the heavy tenants make it
  so), which must not push their tenant into the lane where it waits behind those very tenants.
- A job is a generator that yields between statements. One that runs in the normal lane
  pauses at its next yield once its tenant turns heavy, and continues in the heavy lane, so a
  long batch cannot keep a normal thread for its whole length either. A job still in its
  first statement `heavy_seconds` after it started lends the normal lane a thread meanwhile
  (as many as the heavy lane has), so light tenants are served even while every normal
  thread is in a statement that turned out long.
- Admission (router.admission, optional): a normal-lane job of a tenant not open in the pool
  waits on the loop for a slot before it takes a thread, so few pool misses compete for the GIL
  at once; it gives the slot back at its end, before a commit, or after a few ms.
- OS priority (nice, per thread on Linux, relative to the event loop's thread): the loop's thread
  keeps the process's own, normal-lane threads run +5 below it and heavy-lane threads +15.
  The loop answers every request (point reads inline, on it): when statements keep every core
  busy (SQLite releases the GIL), it must still get a CPU first. Heavy threads stay as far below
  normal ones as before (about 9x less CPU share each).
Event loop only, except where noted.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

from router.admission import Admission
from tenants.errors import TenantUnavailable
from tenants.watchdog import shared_watchdog

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
Steps = Generator[None, None, T]

_NORMAL_NICE = 5
_HEAVY_NICE = 15


@dataclass
class _Done(Generic[T]):
    value: T


@dataclass
class _Job:
    elapsed: float = 0.0  # seconds it ran, in every lane


@dataclass
class _Loan:
    lent: bool = False
    over: bool = False


class _Gate:
    def __init__(self) -> None:
        # asyncio's: a free one is taken without a trip through the event loop (anyio's yields
        # on every acquire); every Hrana request and every queued read takes it
        self.lock = asyncio.Lock()
        self.users = 0  # requests holding or waiting for the lock
        # of them, those whose work runs (or may run) in a worker thread: jobs, and reads the
        # loop declined. Reads that wait only to try the loop in turn are not: a read arriving
        # behind nothing but such reads runs on the loop at once (else, under steady load, one
        # queued read kept every later read queued behind the gate, each paying its lock)
        self.jobs = 0


class Scheduler:
    def __init__(
        self,
        threads: int,
        max_queued: int,
        heavy_seconds: float,
        window: float,
        grace: float,
        admission: Admission | None = None,
    ) -> None:
        self.admission = admission  # None: every normal-lane job runs at once
        self.normal = anyio.CapacityLimiter(threads)
        self.heavy_threads = max(1, threads // 2)
        # The lane's threads, loans included (`normal` gates how many run): an executor of its
        # own, like the heavy lane's, rather than anyio's to_thread behind a second limiter, so
        # its threads are niced once, when they start, and a job's hand-off is one submit.
        self._normal_pool = ThreadPoolExecutor(
            threads + self.heavy_threads,
            thread_name_prefix="sqlfleet-worker",
            initializer=_lower_priority,
            initargs=(_NORMAL_NICE,),
        )
        self._lent = 0
        self._watchdog = shared_watchdog()
        self.max_queued = max_queued
        self.heavy_seconds = heavy_seconds
        self.window = window
        self.grace = grace
        self._heavy: ThreadPoolExecutor | None = None  # started on first use
        self._usage: dict[str, tuple[float, float]] = {}  # tenant -> (seconds, as of when)
        self._usage_lock = threading.Lock()
        self._gates: dict[str, _Gate] = {}

    def close(self) -> None:
        """Let the lanes' threads go once their jobs end. Idempotent."""
        self._normal_pool.shutdown(wait=False)
        if self._heavy is not None:
            self._heavy.shutdown(wait=False)

    # -- running ---------------------------------------------------------------------------------

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in a normal-lane thread: server work, not a tenant's."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.normal)

    async def call(self, tenant: str, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` as one job of `tenant` (queued, in the tenant's lane)."""
        return await self.run(tenant, _once(fn, args))

    async def run(self, tenant: str, steps: Steps[T], queue: bool = True) -> T:
        """Run the job `steps` for `tenant`, behind the tenant's other jobs unless not `queue`.
        Raises TenantUnavailable (503) when `max_queued` jobs already wait, and whatever the
        job raises. An unfinished job (cancelled, refused) is closed in a thread."""
        if not queue:
            return await self._drive(tenant, steps)
        return await self.run_after(tenant, _never, steps)

    async def run_after(self, tenant: str, first: Callable[[], R | None], steps: Steps[T]) -> R | T:
        """`run(tenant, steps)`, except that once the job's turn comes, `first()` is tried on
        the event loop, and its value, unless None, is the outcome (then `steps` never runs).
        For work that may run inline (a point read) but arrived while the tenant had jobs: it
        keeps its place behind them, and needs no worker thread once they are done."""
        gate = self._gates.get(tenant)
        if gate is None:
            gate = self._gates[tenant] = _Gate()
        if gate.users >= self.max_queued:
            steps.close()  # never started: nothing to clean up in a thread
            raise TenantUnavailable(f"tenant {tenant!r} is busy: {gate.users} requests queued")
        gate.users += 1
        job = first is _never
        gate.jobs += job
        try:
            async with gate.lock:
                value = first()
                if value is not None:
                    steps.close()  # never started
                    return value
                if not job:
                    job = True
                    gate.jobs += 1
                return await self._drive(tenant, steps)
        finally:
            gate.users -= 1
            gate.jobs -= job
            if gate.users == 0:
                del self._gates[tenant]

    def queued(self, tenant: str) -> bool:
        """Whether jobs of `tenant` (work for a worker thread) are running or waiting: reads
        waiting only for their turn to try the loop do not count."""
        gate = self._gates.get(tenant)
        return gate is not None and gate.jobs > 0

    async def _drive(self, tenant: str, steps: Steps[T]) -> T:
        outcome: _Done[T] | None = None
        job = _Job()
        try:
            while outcome is None:
                heavy = self.is_heavy(tenant)
                outcome = await self._in_lane(heavy, tenant, self._advance, tenant, steps, heavy, job)
        except BaseException:
            if inspect.getgeneratorstate(steps) == inspect.GEN_SUSPENDED:
                with anyio.CancelScope(shield=True):  # paused half-way: its cleanup (rollback,
                    await self.blocking(steps.close)  # the lease) runs, off the loop
            raise
        return outcome.value

    async def _in_lane(self, heavy: bool, tenant: str, fn: Callable[..., T], *args: Any) -> T:
        if not heavy:
            admission = self.admission
            if admission is None or admission.is_open(tenant):
                return await self._in_normal_lane(fn, *args)
            slot = await admission.take()  # before a thread: waiting for a slot holds none
            try:
                return await self._in_normal_lane(admission.run, slot, fn, *args)
            finally:
                slot.give_back()
        if self._heavy is None:
            self._heavy = ThreadPoolExecutor(
                self.heavy_threads,
                thread_name_prefix="sqlfleet-heavy",
                initializer=_lower_priority,
                initargs=(_HEAVY_NICE,),
            )
        return await _uncancellable(asyncio.wrap_future(self._heavy.submit(fn, *args)))

    async def _in_normal_lane(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on a normal-lane thread. One that is still running `heavy_seconds` after
        it started is heavy work already: it lends the lane a thread (at most `heavy_threads`
        at once), so tenants that turn heavy at the same time never hold the whole lane for the
        length of their current statement."""
        async with self.normal:
            loan = _Loan()
            loop = asyncio.get_running_loop()

            def due() -> None:  # on the watchdog's thread
                with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to lend
                    loop.call_soon_threadsafe(self._lend, loan)

            alarm = self._watchdog.arm(time.monotonic() + self.heavy_seconds, due)
            try:
                # not abandoned on cancel: a job stopped half-way would leave its tenant's lease behind
                return await _uncancellable(asyncio.wrap_future(self._normal_pool.submit(fn, *args)))
            finally:
                self._watchdog.disarm(alarm)
                loan.over = True
                if loan.lent:
                    self._lent -= 1
                    self.normal.total_tokens -= 1

    def _lend(self, loan: _Loan) -> None:
        # event loop
        if not loan.over and self._lent < self.heavy_threads:
            loan.lent = True
            self._lent += 1
            self.normal.total_tokens += 1

    def _advance(self, tenant: str, steps: Steps[T], heavy: bool, job: _Job) -> _Done[T] | None:
        """In a worker thread: run `steps` to its end, or (normal lane) to the first yield
        after its tenant turned heavy (None)."""
        start = time.monotonic()
        before = job.elapsed
        try:
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    return _Done(done.value)
                grown = self._counted(before + time.monotonic() - start) - self._counted(before)
                if not heavy and self._usage_now(tenant) + grown > self.heavy_seconds:
                    return None
        finally:
            job.elapsed = before + time.monotonic() - start
            self._add_usage(tenant, self._counted(job.elapsed) - self._counted(before))

    def _counted(self, seconds: float) -> float:
        """What a job that ran `seconds` adds to its tenant's usage."""
        return max(0.0, seconds - self.grace)

    # -- fair share ------------------------------------------------------------------------------

    def is_heavy(self, tenant: str) -> bool:
        """Whether `tenant`'s recent worker time puts it in the heavy lane. Thread-safe."""
        return self._usage_now(tenant) > self.heavy_seconds

    def _usage_now(self, tenant: str) -> float:
        with self._usage_lock:
            seconds, at = self._usage.get(tenant, (0.0, 0.0))
        return seconds * math.exp(-(time.monotonic() - at) / self.window) if seconds else 0.0

    def _add_usage(self, tenant: str, seconds: float) -> None:
        if seconds <= 0:
            return
        now = time.monotonic()
        with self._usage_lock:
            old, at = self._usage.get(tenant, (0.0, now))
            self._usage[tenant] = (old * math.exp(-(now - at) / self.window) + seconds, now)
            if len(self._usage) > 1024:  # forget tenants whose usage has decayed to nothing
                floor = self.heavy_seconds / 100
                for name, (value, when) in list(self._usage.items()):
                    if value * math.exp(-(now - when) / self.window) < floor:
                        del self._usage[name]


async def _uncancellable(future: asyncio.Future[T]) -> T:
    with anyio.CancelScope(shield=True):
        await asyncio.wait([future])
    return future.result()


def _never() -> None:
    return None


def _once(fn: Callable[..., T], args: tuple[object, ...]) -> Steps[T]:
    return fn(*args)
    yield  # unreachable: makes this a generator of no steps


def _lower_priority(by: int) -> None:
    # This worker thread's nice `by` above its own so far (at most 19): above the event loop's,
    # which started it. SQLite releases the GIL, so the kernel's share of CPU is what counts.
    # Lowering needs no privilege; raising it back would, so it only ever goes down.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(
            os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0) + by)
        )
