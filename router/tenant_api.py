"""The per-tenant REST API: one statement, or an atomic batch.

Each request has a Budget (tenants.budget): `request_timeout` seconds for all its statements
(504 request_time_limit past it; a batch is rolled back), and `max_request_result_bytes` of
results as its JSON holds them (413 results_too_large, decided before anything is sent).
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.auth import require_tenant
from router.codec import REST, BudgetedResponse, dumps, encode_result, parse_statement, read_json
from router.context import Context, ctx
from tenants.budget import Budget
from tenants.errors import BadRequest
from tenants.execute import QueryResult, Statement
from tenants.fleet import Fleet
from tenants.ids import validate_tenant_id
from tenants.inline import cannot_write

# Larger inline results are encoded to JSON in a thread, not on the event loop.
INLINE_MAX_ROWS = 200
INLINE_MAX_BYTES = 64 << 10


def _tenant(request: Request, c: Context) -> tuple[str, bool]:
    """(tenant id, read-only?) after authentication and authorization."""
    principal = c.principal(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    return tenant, require_tenant(principal, tenant)


# Results are encoded in the worker thread too: a result of megabytes would otherwise hold
# the event loop while it is turned into JSON.
def _run_one(
    fleet: Fleet, tenant: str, stmt: Statement, readonly: bool, budget: Budget
) -> Generator[None, None, bytes]:
    return dumps(encode_result(fleet.execute(tenant, stmt, readonly, budget)))
    yield  # unreachable: makes this a job of one step (router.scheduler)


def _encode(result: QueryResult) -> bytes:
    return dumps(encode_result(result))


def _run_batch(
    fleet: Fleet, tenant: str, stmts: Sequence[Statement], readonly: bool, budget: Budget
) -> Generator[None, None, bytes]:
    results = yield from fleet.batch_steps(tenant, stmts, readonly, budget)
    return dumps({"results": [encode_result(r) for r in results]})


def _parse_indexed(raw: object, index: int) -> Statement:
    """parse_statement, whose error names the failing index as SQL errors in a batch do."""
    try:
        return parse_statement(raw, f"statements[{index}]")
    except BadRequest as exc:
        exc.detail["index"] = index
        raise


async def query(request: Request) -> Response:
    c = ctx(request)
    tenant, readonly = _tenant(request, c)
    stmt = parse_statement(await read_json(request, c.config.max_body_bytes))
    budget = c.budget(REST)
    try:
        # A point read on an open, idle tenant runs on the loop (tenants.inline decides what
        # may): no thread hand-off. Anything else (a write, a slow or large read, a tenant that
        # is closed) goes to a worker thread. On a tenant with jobs (work for a thread) a read
        # waits its turn behind them (a write queued before it still goes first), then tries the
        # loop: else every read arriving while one job was queued would be queued too, each in a
        # thread. Reads waiting so are no jobs: a read arriving behind nothing else runs at once.
        queued = c.queued(tenant)
        result = None if queued else c.fleet.try_inline(tenant, stmt)
        if result is None:
            steps = _run_one(c.fleet, tenant, stmt, readonly, budget)
            if queued and cannot_write(stmt.sql):
                outcome = await c.scheduler.run_after(
                    tenant, functools.partial(c.fleet.try_inline, tenant, stmt), steps
                )
            else:
                outcome = await c.scheduler.run(tenant, steps)
            if isinstance(outcome, bytes):  # ran in a worker thread, and was encoded there
                return BudgetedResponse(outcome, budget)
            result = outcome
        for row in result.rows:
            budget.charge(row)
        small = len(result.rows) <= INLINE_MAX_ROWS and result.size <= INLINE_MAX_BYTES
        body = dumps(encode_result(result)) if small else await c.blocking(_encode, result)
    except BaseException:
        budget.release()
        raise
    return BudgetedResponse(body, budget)


async def batch(request: Request) -> Response:
    c = ctx(request)
    tenant, readonly = _tenant(request, c)
    body = await read_json(request, c.config.max_body_bytes)
    unknown = set(body) - {"statements"}
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    raw = body.get("statements")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("statements must be a non-empty array")
    if len(raw) > c.config.max_batch_statements:
        raise BadRequest(f"at most {c.config.max_batch_statements} statements per batch")
    stmts = [_parse_indexed(s, i) for i, s in enumerate(raw)]
    budget = c.budget(REST)
    try:
        result = await c.scheduler.run(tenant, _run_batch(c.fleet, tenant, stmts, readonly, budget))
    except BaseException:
        budget.release()
        raise
    return BudgetedResponse(result, budget)


ROUTES = [
    Route("/v1/tenants/{tenant}/query", query, methods=["POST"]),
    Route("/v1/tenants/{tenant}/batch", batch, methods=["POST"]),
]
