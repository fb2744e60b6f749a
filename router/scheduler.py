"""Running tenant work in worker threads, fairly.

- One queue per tenant: a tenant's jobs run one at a time (the pool serializes its statements
  anyway), queued on the event loop so that a busy tenant never holds threads that only wait
  for its lock; past `max_queued` waiting jobs it answers 503 at once. Every protocol's tenant
  work goes through it (a Hrana stream inside a transaction holds the tenant's lock itself, so
  its requests skip the queue and never wait behind requests waiting for that very lock).
- Two lanes. Each tenant's worker time is summed with exponential decay (time constant
  `window` seconds); a tenant past `heavy_seconds` runs its jobs in the heavy lane: its own
  max(1, threads // 2) threads at a lower OS priority (nice +10, per thread on Linux). The
  `threads` of the normal lane stay for everyone else, however many tenants are heavy.
- A job is a generator that yields between statements. One that runs in the normal lane
  pauses at its next yield once its tenant turns heavy, and continues in the heavy lane, so a
  long batch cannot keep a normal thread for its whole length either. A job still in its
  first statement `heavy_seconds` after it started lends the normal lane a thread meanwhile
  (as many as the heavy lane has), so light tenants are served even while every normal
  thread is in a statement that turned out long.
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

from tenants.errors import TenantUnavailable
from tenants.watchdog import shared_watchdog

log = logging.getLogger(__name__)
T = TypeVar("T")
Steps = Generator[None, None, T]

_HEAVY_NICE = 10


@dataclass
class _Done(Generic[T]):
    value: T


@dataclass
class _Loan:
    lent: bool = False
    over: bool = False


class _Gate:
    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class Scheduler:
    def __init__(self, threads: int, max_queued: int, heavy_seconds: float, window: float) -> None:
        self.normal = anyio.CapacityLimiter(threads)
        self.heavy_threads = max(1, threads // 2)
        self._threads = anyio.CapacityLimiter(threads + self.heavy_threads)  # the lane's, loans included
        self._lent = 0
        self._watchdog = shared_watchdog()
        self.max_queued = max_queued
        self.heavy_seconds = heavy_seconds
        self.window = window
        self._heavy: ThreadPoolExecutor | None = None  # started on first use
        self._usage: dict[str, tuple[float, float]] = {}  # tenant -> (seconds, as of when)
        self._usage_lock = threading.Lock()
        self._gates: dict[str, _Gate] = {}

    def close(self) -> None:
        """Let the heavy lane's threads go once their jobs end. Idempotent."""
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
        gate = self._gates.get(tenant)
        if gate is None:
            gate = self._gates[tenant] = _Gate()
        if gate.users >= self.max_queued:
            steps.close()  # never started: nothing to clean up in a thread
            raise TenantUnavailable(f"tenant {tenant!r} is busy: {gate.users} requests queued")
        gate.users += 1
        try:
            async with gate.lock:
                return await self._drive(tenant, steps)
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[tenant]

    def queued(self, tenant: str) -> bool:
        """Whether jobs of `tenant` are running or waiting."""
        return tenant in self._gates

    async def _drive(self, tenant: str, steps: Steps[T]) -> T:
        outcome: _Done[T] | None = None
        try:
            while outcome is None:
                heavy = self.is_heavy(tenant)
                outcome = await self._in_lane(heavy, self._advance, tenant, steps, heavy)
        except BaseException:
            if inspect.getgeneratorstate(steps) == inspect.GEN_SUSPENDED:
                with anyio.CancelScope(shield=True):  # paused half-way: its cleanup (rollback,
                    await self.blocking(steps.close)  # the lease) runs, off the loop
            raise
        return outcome.value

    async def _in_lane(self, heavy: bool, fn: Callable[..., T], *args: Any) -> T:
        if not heavy:
            return await self._in_normal_lane(fn, *args)
        if self._heavy is None:
            self._heavy = ThreadPoolExecutor(
                self.heavy_threads, thread_name_prefix="sqlfleet-heavy", initializer=_lower_priority
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
                return await anyio.to_thread.run_sync(
                    fn, *args, limiter=self._threads, abandon_on_cancel=False
                )
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

    def _advance(self, tenant: str, steps: Steps[T], heavy: bool) -> _Done[T] | None:
        """In a worker thread: run `steps` to its end, or (normal lane) to the first yield
        after its tenant turned heavy (None)."""
        start = time.monotonic()
        try:
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    return _Done(done.value)
                if not heavy and self._usage_now(tenant) + time.monotonic() - start > self.heavy_seconds:
                    return None
        finally:
            self._add_usage(tenant, time.monotonic() - start)

    # -- fair share ------------------------------------------------------------------------------

    def is_heavy(self, tenant: str) -> bool:
        """Whether `tenant`'s recent worker time puts it in the heavy lane. Thread-safe."""
        return self._usage_now(tenant) > self.heavy_seconds

    def _usage_now(self, tenant: str) -> float:
        with self._usage_lock:
            seconds, at = self._usage.get(tenant, (0.0, 0.0))
        return seconds * math.exp(-(time.monotonic() - at) / self.window) if seconds else 0.0

    def _add_usage(self, tenant: str, seconds: float) -> None:
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


def _once(fn: Callable[..., T], args: tuple[object, ...]) -> Steps[T]:
    return fn(*args)
    yield  # unreachable: makes this a generator of no steps


def _lower_priority() -> None:
    # A heavy-lane thread: SQLite releases the GIL, so the kernel's share of CPU is what counts.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _HEAVY_NICE)
