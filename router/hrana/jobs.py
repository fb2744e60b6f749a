"""A request's work on a Hrana stream, as one job of its tenant: the one entry point both
transports use (an HTTP pipeline or cursor, a WebSocket request), so the isolation bounds are
the same whichever way a client comes in.

The job attaches the stream's handle (pin, lock, access: router.hrana.streams), runs `work` on a
StreamExecutor in the tenant's lane of router.scheduler, and detaches; the stream is then given
back to the registry (idle again, its expiry clock restarted). Event loop only.

A point read outside a transaction may skip the job and run on the event loop, as the REST API
runs one (`try_inline`, tenants.fleet.try_inline): statements a stream's connection has judged
safe (`learn_inline`, in the job) need no thread hand-off. One arriving while its tenant has
jobs keeps its place behind them and then runs on the loop all the same (`run_or_inline`):
else every read arriving meanwhile would become a job too, each in a thread, and a busy
tenant would stay off the loop (a convoy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio

from router.context import Context
from router.hrana.executor import Steps, StreamExecutor
from router.hrana.protocol import Outcome, Request, Response, StreamResult
from router.hrana.streams import Stream
from tenants.budget import Budget
from tenants.errors import SqlfleetError
from tenants.execute import Params, Statement, bindings
from tenants.inline import cannot_write

T = TypeVar("T")
R = TypeVar("R")


async def run_on_stream(
    c: Context,
    stream: Stream,
    readonly: bool,
    work: Callable[[StreamExecutor], Steps[T]],
    budget: Budget,
    *,
    end_on_error: bool = True,
) -> T:
    """`work` on the stream's attached handle as one job of its tenant, then give the stream
    back (its next baton in `stream.next_baton`). Returns what `work` returns; raises what the
    job raises (TenantUnavailable when the tenant's queue is full, what `attach` raises, ...).

    A failure ends the stream (rolled back, handle let go), as an HTTP error must; with
    `end_on_error` False (WebSocket, where one request's error is just its response) only a
    failure that is not a SqlfleetError does (cancelled, a bug)."""
    return await run_or_inline(c, stream, readonly, work, budget, None, end_on_error=end_on_error)


async def run_or_inline(
    c: Context,
    stream: Stream,
    readonly: bool,
    work: Callable[[StreamExecutor], Steps[T]],
    budget: Budget,
    inline: Callable[[], R | None] | None,
    *,
    end_on_error: bool = True,
    waits_as_read: Callable[[], bool] = lambda: False,
) -> T | R:
    """`run_on_stream`, except that `inline()` (work that may run on the event loop, or None
    if it cannot after all) is tried first: at once if the tenant has no jobs, else when this
    job's turn comes (router.scheduler.run_after), so a read arriving behind a job keeps its
    place and still needs no thread. Its value, unless None, is the outcome (`work` never
    runs). A stream inside a transaction never tries it. Only work that cannot write
    (`waits_as_read`: see `point_read`) waits for its turn that way; anything else queues as a
    job, so reads arriving later queue behind it."""
    streams = c.streams
    queued = c.queued(stream.tenant)
    if inline is not None and not stream.locked and not queued:
        try:
            value = inline()
        except BaseException:
            stream.next_baton = streams.give_back(stream)
            raise
        if value is not None:
            stream.next_baton = streams.give_back(stream)
            return value
    ran = False

    def ends(exc: BaseException) -> bool:
        return end_on_error or not isinstance(exc, SqlfleetError)

    def job() -> Steps[T]:
        nonlocal ran
        ran = True
        try:
            frozen = streams.attach(stream, readonly)
            return (yield from work(StreamExecutor(stream, c.fleet.config, readonly, frozen, budget)))
        except BaseException as exc:
            if ends(exc):
                stream.closed = True
            raise
        finally:
            streams.detach(stream)

    try:
        if inline is not None and not stream.locked and queued and waits_as_read():
            return await c.scheduler.run_after(stream.tenant, inline, job())
        # A stream inside a transaction holds the tenant's lock: it must not queue behind
        # requests waiting for that very lock. Others queue per tenant like the REST API.
        return await c.scheduler.run(stream.tenant, job(), queue=not stream.locked)
    except BaseException as exc:
        if not ran and ends(exc):  # refused before it started (queue full, cancelled)
            stream.closed = True
            with anyio.CancelScope(shield=True):
                await c.blocking(streams.detach, stream)
        raise
    finally:
        stream.next_baton = streams.give_back(stream)


def inline_eligible(stream: Stream, request: Request | SqlfleetError) -> bool:
    """Whether `request` is an `execute` that `try_inline` may run: on a stream outside a
    transaction (so not holding the tenant), with positional or named arguments, not both."""
    if not isinstance(request, Request) or request.kind != "execute":
        return False
    stmt = request.stmt
    if stmt is None or stmt.sql is None or stream.locked:
        return False
    return not (stmt.args and stmt.named_args)


def try_inline(c: Context, stream: Stream, request: Request, budget: Budget) -> Response | None:
    """The response to `request`, run here on the event loop, if it may run inline: an
    `inline_eligible` read that the stream's tenant connection judged safe (tenants.inline), the
    tenant's lock free. None otherwise, having changed nothing: then run it as a job. The rows
    count against `budget` (None if they do not fit: the job reports). Tenants with jobs queued
    keep their order: `run_or_inline` tries it when its turn comes."""
    if not inline_eligible(stream, request):
        return None
    stmt = request.stmt
    assert stmt is not None and stmt.sql is not None
    started = time.perf_counter()
    result = c.fleet.try_inline(stream.tenant, Statement(stmt.sql, _params(request)))
    if result is None:
        return None
    used = budget.used
    try:
        for row in result.rows:
            budget.charge(row)
    except SqlfleetError:
        budget.rewind(used)
        return None
    elapsed = (time.perf_counter() - started) * 1000
    return Response("execute", result=Outcome(result, want_rows=stmt.want_rows, duration_ms=elapsed))


def try_inline_pipeline(
    c: Context, stream: Stream, requests: Sequence[Request | SqlfleetError], budget: Budget
) -> list[StreamResult] | None:
    """The results of an HTTP pipeline that is one inline read (`try_inline`), maybe followed by
    `close` (what a client sends for a query outside a transaction); None otherwise, having
    changed nothing."""
    if not _one_execute(stream, requests):
        return None
    first = requests[0]
    assert isinstance(first, Request)
    response = try_inline(c, stream, first, budget)
    if response is None:
        return None
    if len(requests) == 1:
        return [response]
    stream.closed = True
    return [response, Response("close")]


def point_read(stream: Stream, requests: Sequence[Request | SqlfleetError]) -> bool:
    """Whether `requests` are what `try_inline_pipeline` may run (a WebSocket's single request
    too), with a statement that cannot write (tenants.inline.cannot_write): such work may wait
    for its turn to try the loop (`run_or_inline`)."""
    if not _one_execute(stream, requests):
        return False
    first = requests[0]
    assert isinstance(first, Request) and first.stmt is not None and first.stmt.sql is not None
    return cannot_write(first.stmt.sql)


def _one_execute(stream: Stream, requests: Sequence[Request | SqlfleetError]) -> bool:
    """One `inline_eligible` execute, maybe followed by `close`."""
    if not 1 <= len(requests) <= 2 or not inline_eligible(stream, requests[0]):
        return False
    return len(requests) == 1 or (isinstance(requests[1], Request) and requests[1].kind == "close")


def learn_inline(executor: StreamExecutor, request: Request, response: object) -> None:
    """After `request` ran fine on `executor` (in its job): let its tenant connection judge
    whether the statement may run inline next time (tenants.inline). Worker thread only."""
    stmt = request.stmt
    if request.kind != "execute" or stmt is None or stmt.sql is None or not isinstance(response, Response):
        return
    sandbox = executor.handle.sandbox
    if sandbox is not None and not (stmt.args and stmt.named_args):
        sandbox.inline.consider(executor.conn, stmt.sql, bindings(_params(request)))


def _params(request: Request) -> Params:
    stmt = request.stmt
    assert stmt is not None
    return stmt.named_args if stmt.named_args else stmt.args
