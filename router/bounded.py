"""Admin work that needs the backup replica, answered within the request's deadline.

A replica that hangs (S3 not answering) must not hold an admin request longer than
`request_timeout`, nor pile up worker threads: such work (restore, describe, verify, rebuild,
rekey, fleet restore) runs on a few threads of its own (`ReplicaWork`), and a request waits for
it only until its deadline, or, for work that reports its progress (a restore reading segment
after segment), until `request_timeout` after the replica's last answer. Past it: 503
`replica_unavailable` with Retry-After; work that changes something is not stopped (a thread
cannot be), so its answer says the outcome is unknown and how to look
(router.proxy.arrivals.Opening does the same for opening tenants).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from starlette.requests import Request

from tenants.errors import ReplicaUnavailable

T = TypeVar("T")

# Threads that run replica work at once. Bounded, so a hung replica holds at most this many
# (each until the replica client's own timeout); requests beyond them wait for a free one,
# within their deadline.
REPLICA_THREADS = 4


class ReplicaWork:
    """Runs blocking calls on at most `threads` threads, each awaited at most until a deadline.
    A call past its deadline is abandoned, not stopped: it keeps its thread until it returns,
    and no new call starts on that thread meanwhile. Event loop only; idle threads end with the
    process."""

    def __init__(self, threads: int = REPLICA_THREADS) -> None:
        self._threads = threads
        self._free: asyncio.Semaphore | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def run(
        self,
        what: str,
        changes: str | None,
        seconds: float,
        call: Callable[[], T],
        answered: Callable[[], float] | None = None,
    ) -> T:
        """`call()` on one of the threads, and what it returned. Raises ReplicaUnavailable when
        no thread was free or the call did not return within `seconds` (with `answered`, the
        time.monotonic() of the replica's last answer to it: within `seconds` of that): `what`
        names the work ("the restore of tenant 'a'"); `changes` (None: it changes nothing) says
        how to see whether it took effect, as it may still do."""
        if self._free is None or self._pool is None:
            self._free = asyncio.Semaphore(self._threads)
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="replica-work")
        free, loop, deadline = self._free, asyncio.get_running_loop(), time.monotonic() + seconds
        try:
            await asyncio.wait_for(free.acquire(), seconds)
        except TimeoutError:
            raise _slow(what, None, seconds) from None  # never started: nothing to look at
        done = self._pool.submit(call)  # no await since the acquire: a token per running call

        def release(_: Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(free.release)

        done.add_done_callback(release)
        waited = asyncio.wrap_future(done)
        while not waited.done():
            until = deadline if answered is None else max(deadline, answered() + seconds)
            left = until - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait((waited,), timeout=min(left, 1.0))  # then look at `answered` again
        if not waited.done():
            started = not done.cancel()  # a call not started yet never will (False: running)
            waited.cancel()
            raise _slow(what, changes if started else None, seconds)
        return waited.result()


def replica_work(request: Request) -> ReplicaWork:
    """The app's ReplicaWork (one per app: its semaphore belongs to the app's event loop)."""
    work: ReplicaWork | None = getattr(request.app.state, "replica_work", None)
    if work is None:
        work = request.app.state.replica_work = ReplicaWork()
    return work


def _slow(what: str, changes: str | None, seconds: float) -> ReplicaUnavailable:
    if changes is None:
        outcome = "nothing was changed: retry shortly"
    else:
        outcome = f"it goes on and may still take effect, so its outcome is unknown: {changes}"
    return ReplicaUnavailable(
        f"{what} needs the backup replica, which did not answer within {seconds:g} s; {outcome}",
        retry_after=5,
    )
