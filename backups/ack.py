"""Durable acks (`ack = replica`): a response waits until what it wrote or read is in the replica.

A request's response is held until every commit of its tenant made before the response was
formed is in a segment durably PUT (`wait`): its own writes, and what it read that others
committed (the output gate: never show data a lost disk could take back). The waiting is async
on the event loop: one future per waiting response, no thread blocked. A waiter wakes the flush
loop early (`wake`), which gathers what else arrives within `ack_window` and ships one segment
for all of them (group commit); after each flush the shipper calls `shipped`, which releases the
waiters whose commits are all in the replica now (by position: the ledger's per-tenant unshipped
commits, in `Ledger.clock` order). A flush that failed releases every waiter with
ReplicaUnavailable (`failed`); once the incarnation is fenced every wait fails at once. A wait
never ends in success unless its commits shipped.

A refusal says what happened in the client's terms (never the replica's endpoint, bucket or keys:
the flush logs those), essential first: whether the request wrote (its outcome is then unknown:
read it back before retrying) or only read (retry). `wrote` says so when the caller knows it (the
gate tracks the request's own statements); else `since` (when the request arrived) tells by the
clock: a commit made while it ran may be its own, and is taken to be.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from backups.errors import ReplicaFenced
from backups.ledger import Ledger
from tenants.errors import ReplicaUnavailable, disk_full

# What a refused response tells its client, what to do first.
WROTE = (
    "the write's outcome is unknown, read it back before retrying: it is committed on this "
    "server but not in the backup replica"
)
READ = "a read, retry shortly: the data this response would show is not in the backup replica yet"


class _Refused(Exception):
    """A waiter released without success; its text is the reason in a client's terms."""


@dataclass(eq=False)
class _Waiter:
    tenant: str
    at: float  # every commit of `tenant` at or before this must be in the replica
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None] = field(repr=False)


class Acks:
    """Thread-safe: `wait` runs on event loops, `shipped`/`failed`/`close` in the flushing
    thread. `wake()` must not block (it sets an event of the flush loop)."""

    def __init__(self, ledger: Ledger, wake: Callable[[], None]) -> None:
        self.ledger = ledger
        self._wake = wake
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        self._broken: str | None = None  # why every wait fails now (fenced, shut down)

    def pending(self, tenants: Iterable[str]) -> list[tuple[str, float]]:
        """(tenant, now) for each of `tenants` with a commit not in the replica yet: what a
        response formed now must wait for. Never blocks for long (the ledger's lock)."""
        at = self.ledger.clock()
        return [(t, at) for t in dict.fromkeys(tenants) if self.ledger.has_unshipped(t, at)]

    def clock(self) -> float:
        """Now, on the clock commits are noted by: a request's arrival, for `wait`'s `since`."""
        return self.ledger.clock()

    async def wait(
        self, tenants: Iterable[str], timeout: float, since: float | None = None, wrote: bool | None = None
    ) -> None:
        """Return once every commit of `tenants` made before the call is in the replica (at
        once if there is none). Raises ReplicaUnavailable past `timeout` seconds, when a flush
        fails meanwhile, or when shipping stopped for good (fenced, shut down); its message
        tells a read from a write by `wrote` (whether the request wrote), or if None by `since`
        (a `clock()` taken when the request arrived). Event loop only."""
        await self.wait_for(self.pending(tenants), timeout, since, wrote)

    async def wait_for(
        self,
        marks: list[tuple[str, float]],
        timeout: float,
        since: float | None = None,
        wrote: bool | None = None,
    ) -> None:
        """`wait` for marks taken earlier by `pending`."""
        if not marks:
            return
        loop = asyncio.get_running_loop()
        waiters = [_Waiter(t, at, loop, loop.create_future()) for t, at in marks]
        with self._lock:
            broken = self._broken
            if broken is None:
                self._waiters += waiters
        if broken is not None:
            raise self._refusal(marks, broken, since, wrote)
        self._wake()
        try:
            async with asyncio.timeout(timeout):
                for waiter in waiters:
                    await waiter.future
        except TimeoutError:
            reason = f"the backup replica did not take it within {timeout:.3g} s"
            raise self._refusal(marks, reason, since, wrote) from None
        except _Refused as exc:
            raise self._refusal(marks, str(exc), since, wrote) from None
        finally:
            with self._lock:
                gone = set(waiters)
                self._waiters = [w for w in self._waiters if w not in gone]

    def _refusal(
        self, marks: list[tuple[str, float]], reason: str, since: float | None, wrote: bool | None
    ) -> ReplicaUnavailable:
        """The error a waiter gets: a write's (its outcome is unknown) when the request wrote,
        or, not knowing that (`wrote` None), when a commit made during it is what waits; else a
        read's (nothing to check: retry). What to do first, then why (a WebSocket close reason
        holds about a hundred bytes of it: router.hrana.ws.close)."""
        tenant = marks[0][0]
        if wrote is None:
            wrote = since is None or any(self._changed(t, since, at) for t, at in marks)
        what = WROTE if wrote else READ
        return ReplicaUnavailable(f"{what} (tenant {tenant!r}: {reason}; ack=replica)", retry_after=1)

    def waiting(self) -> int:
        """Responses waiting now (for metrics and tests)."""
        with self._lock:
            return len(self._waiters)

    def shipped(self) -> None:
        """After a flush succeeded: release every waiter whose commits are all in the replica."""
        with self._lock:
            done = [w for w in self._waiters if not self.ledger.has_unshipped(w.tenant, w.at)]
            gone = set(done)
            self._waiters = [w for w in self._waiters if w not in gone]
        for waiter in done:
            _settle(waiter, None)

    def failed(self, exc: BaseException, *, for_good: bool = False) -> None:
        """After a flush failed (`for_good`: fenced or shut down, nothing will ship any more):
        release every waiter with ReplicaUnavailable, never with success. `exc` is only told
        apart by kind: its text (endpoint, bucket, keys) is for the log the flush writes."""
        if isinstance(exc, ReplicaFenced):
            reason = "another server has taken over this server's tenants"
        elif for_good:
            reason = "the server is shutting down"
        elif disk_full(exc):
            reason = "the server's disk is full"
        else:
            reason = "the backup replica could not be reached"
        with self._lock:
            waiters, self._waiters = self._waiters, []
            if for_good:
                self._broken = reason
        for waiter in waiters:
            _settle(waiter, reason)

    def _changed(self, tenant: str, since: float, at: float) -> bool:
        """Whether a commit or the deletion of `tenant` made after `since` (up to `at`) is not in
        the replica yet."""
        ledger = self.ledger
        if any(t > since for t in ledger.unshipped_times(tenant, at)):
            return True
        with ledger.lock:
            return any(
                c.tenant == tenant and since < c.taken_at <= at
                for c in [*ledger.tombstones, *ledger.shipping]
            )


def _settle(waiter: _Waiter, reason: str | None) -> None:
    def settle() -> None:
        if not waiter.future.done():
            if reason is None:
                waiter.future.set_result(None)
            else:  # one instance per waiter: each raise adds its own traceback
                waiter.future.set_exception(_Refused(reason))

    with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
        waiter.loop.call_soon_threadsafe(settle)
