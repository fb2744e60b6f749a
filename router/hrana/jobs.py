"""A request's work on a Hrana stream, as one job of its tenant: the one entry point both
transports use (an HTTP pipeline or cursor, a WebSocket request), so the isolation bounds are
the same whichever way a client comes in.

The job attaches the stream's handle (pin, lock, access: router.hrana.streams), runs `work` on a
StreamExecutor in the tenant's lane of router.scheduler, and detaches; the stream is then given
back to the registry (idle again, its expiry clock restarted). Event loop only.

A point read outside a transaction may skip the job and run on the event loop, as the REST API
runs one (`try_inline`, tenants.fleet.try_inline): statements a stream's connection has judged
safe (`learn_inline`, in the job) need no thread hand-off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import anyio

from router.context import Context
from router.hrana.executor import Steps, StreamExecutor
from router.hrana.protocol import Outcome, Request, Response
from router.hrana.streams import Stream
from tenants.budget import Budget
from tenants.errors import SqlfleetError
from tenants.execute import Params, Statement, bindings

T = TypeVar("T")


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
    streams = c.streams
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


def try_inline(c: Context, stream: Stream, request: Request, budget: Budget) -> Response | None:
    """The response to `request`, run here on the event loop, if it is an `execute` that may
    run inline: a read the stream's tenant connection judged safe (tenants.inline), on a stream
    outside a transaction (so not holding the tenant), of a tenant with no jobs queued (they
    keep their order), the tenant's lock free. None otherwise, having changed nothing: then run
    it as a job. The rows count against `budget` (None if they do not fit: the job reports)."""
    stmt = request.stmt
    if request.kind != "execute" or stmt is None or stmt.sql is None or stream.locked:
        return None
    if (stmt.args and stmt.named_args) or c.queued(stream.tenant):
        return None
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
