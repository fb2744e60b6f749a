"""Hrana over HTTP: the endpoints, and which tenant a request is for.

Served at `/v1/tenants/{tenant}/` (clients resolve `v2/pipeline` against that base URL) and at
the root, where the tenant comes from the Host header (`{tenant}.BASE_DOMAIN`, when that setting
is on) or else from the tenant token's `sub`. Endpoints (HTTP_V2_SPEC.md, HRANA_3_SPEC.md and,
for the legacy clients, HTTP_V1_SPEC.md):

    GET  v2, v3              version checks (2xx; no auth, as the clients probe without it)
    POST v2/pipeline, v3/pipeline   {"baton", "requests"} -> {"baton", "base_url", "results"}
    POST v3/cursor           {"baton", "batch"} -> JSON lines: {"baton", "base_url"}, entries...
    POST v1/execute, v1/batch      one statement / one batch on a fresh stream

`v3-protobuf` is not served: its version check answers 404, so clients fall back to JSON.
Errors are the protocol's `{"message", "code"}`: per request inside `results`, or as the body of
a 4xx/5xx when the whole HTTP request fails (which ends the stream, as the spec says).

Each HTTP request is one job of its tenant (router.scheduler) with one Budget (tenants.budget)
for all its requests and steps: past its time, what would still run SQL gets an error result
(REQUEST_TIME_LIMIT); past its result bytes, the statement whose rows do not fit gets
RESPONSE_TOO_LARGE. The cursor's entries are streamed as they come (router.hrana.cursor).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from router.auth import require_tenant
from router.codec import BudgetedResponse, read_json
from router.context import ctx
from router.hrana.cursor import CursorOutput, CursorResponse
from router.hrana.errors import ProtocolError, RequestTooLarge, TenantRequired, hrana_error
from router.hrana.executor import HRANA, Steps, StreamExecutor
from router.hrana.protocol import (
    batch_result,
    parse_batch,
    parse_request,
    parse_stmt,
    stmt_result,
)
from router.hrana.streams import Stream, Streams
from router.hrana.values import dumps_infinity_safe
from tenants.budget import Budget
from tenants.errors import SqlfleetError, TooLarge, Unauthorized
from tenants.ids import validate_tenant_id

T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]


def streams_of(request: Request) -> Streams:
    return ctx(request).streams


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(body), status, headers, media_type="application/json")


def _dumps(body: Any) -> str:
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate quoted back in a message: escape everything
        text = json.dumps(body, separators=(",", ":"))
    return dumps_infinity_safe(text)


def hrana_endpoint(handler: Endpoint) -> Endpoint:
    """Render any SqlfleetError the handler raises as a Hrana Error body."""

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except SqlfleetError as exc:
            return _error_response(exc)

    return endpoint


def resolve_tenant(request: Request) -> tuple[str, bool]:
    """(tenant, read-only?) of an authenticated request. Raises Unauthorized, Forbidden,
    InvalidTenantId, TenantRequired (the admin key at the root, with no tenant in the Host)."""
    c = ctx(request)
    principal = c.principal(request)
    tenant = request.path_params.get("tenant") or host_tenant(request, c.config.base_domain)
    if tenant is None:
        tenant = principal.tenant
    if tenant is None:
        raise TenantRequired(
            "the root Hrana endpoints serve the tenant of a tenant token: use a tenant token, "
            "or the admin key with the base URL /v1/tenants/{tenant}/"
        )
    tenant = validate_tenant_id(tenant)
    return tenant, require_tenant(principal, tenant)


def host_tenant(request: Request, base_domain: str | None) -> str | None:
    """The `{tenant}` of a Host `{tenant}.BASE_DOMAIN[:port]`, or None."""
    if not base_domain:
        return None
    host = request.headers.get("host", "").lower()
    if ":" in host and not host.startswith("["):  # drop the port (an IPv6 literal has no tenant)
        host = host.rpartition(":")[0]
    suffix = "." + base_domain.lower().strip(".")
    label = host.removesuffix(suffix)
    if label == host or not label or "." in label:
        return None
    return label


async def _run(
    request: Request,
    stream: Stream,
    readonly: bool,
    work: Callable[[StreamExecutor], Steps[T]],
    budget: Budget,
) -> T:
    """`work` on the stream's attached handle as one job of its tenant (router.scheduler),
    then give the stream back; any failure closes the stream (rolled back, handle let go).
    Returns what `work` returns."""
    c, streams = ctx(request), streams_of(request)
    ran = False

    def job() -> Steps[T]:
        nonlocal ran
        ran = True
        try:
            frozen = streams.attach(stream, readonly)
            return (yield from work(StreamExecutor(stream, c.fleet.config, readonly, frozen, budget)))
        except BaseException:
            stream.closed = True
            raise
        finally:
            streams.detach(stream)

    try:
        # A stream inside a transaction holds the tenant's lock: it must not queue behind
        # requests waiting for that very lock. Others queue per tenant like the REST API.
        return await c.scheduler.run(stream.tenant, job(), queue=not stream.locked)
    except BaseException:
        if not ran:  # refused before it started (queue full, cancelled): end the stream too
            stream.closed = True
            with anyio.CancelScope(shield=True):
                await c.blocking(streams.detach, stream)
        raise
    finally:
        stream.next_baton = streams.give_back(stream)


def _stream_for(request: Request, tenant: str, baton: Any) -> Stream:
    streams = streams_of(request)
    if baton is None:
        return streams.open(tenant)
    if not isinstance(baton, str):
        raise ProtocolError("baton must be a string or null")
    return streams.take(tenant, baton)


async def _body(request: Request) -> dict[str, Any]:
    try:
        return await read_json(request, ctx(request).config.max_body_bytes)
    except TooLarge as exc:
        raise RequestTooLarge(exc.message) from None


# -- endpoints ---------------------------------------------------------------------------------


async def version(request: Request) -> Response:
    return PlainTextResponse("Hello, this is HTTP API v2 (Hrana over HTTP)")


@hrana_endpoint
async def pipeline(request: Request) -> Response:
    tenant, readonly = resolve_tenant(request)
    c = ctx(request)
    body = await _body(request)
    raw = body.get("requests")
    if not isinstance(raw, list):
        raise ProtocolError("requests must be an array")
    if len(raw) > c.config.max_batch_statements:
        raise ProtocolError(f"at most {c.config.max_batch_statements} requests per pipeline")
    requests: list[Any] = []
    for index, item in enumerate(raw):
        try:
            requests.append(parse_request(item, f"requests[{index}]", c.config.max_batch_statements))
        except ProtocolError as exc:  # answered in its slot; the other requests still run
            requests.append(exc)
    stream = _stream_for(request, tenant, body.get("baton"))
    budget = c.budget(HRANA)
    try:
        results = await _run(request, stream, readonly, lambda s: s.results(requests), budget)
        out = _dumps({"baton": stream.next_baton, "base_url": None, "results": results})
    except BaseException:
        budget.release()
        raise
    return BudgetedResponse(out, budget)


@hrana_endpoint
async def cursor(request: Request) -> Response:
    tenant, readonly = resolve_tenant(request)
    c = ctx(request)
    body = await _body(request)
    batch = parse_batch(body.get("batch"), "batch", c.config.max_batch_statements)
    stream = _stream_for(request, tenant, body.get("baton"))
    budget = c.budget(HRANA)
    streams = streams_of(request)

    def steps(executor: StreamExecutor, output: CursorOutput) -> Steps[None]:
        # attached: nothing can refuse the request as a whole any more, so the header goes
        # first (its baton is the stream's next one, as give_back will say)
        output.emit({"baton": streams.baton(stream), "base_url": None})
        yield from executor.cursor_steps(batch, output.emit)

    async def produce(output: CursorOutput) -> None:
        await _run(request, stream, readonly, lambda s: steps(s, output), budget)

    return CursorResponse(produce, _dumps, budget, _error_response)


@hrana_endpoint
async def v1_execute(request: Request) -> Response:
    tenant, readonly = resolve_tenant(request)
    stmt = parse_stmt((await _body(request)).get("stmt"), "stmt")

    def work(executor: StreamExecutor) -> Steps[dict[str, Any]]:
        executor.stream.closed = True  # a fresh stream per request (HTTP v1)
        return {"result": stmt_result(executor.execute(stmt))}
        yield  # unreachable: one statement, no steps

    return await _v1(request, tenant, readonly, work)


@hrana_endpoint
async def v1_batch(request: Request) -> Response:
    tenant, readonly = resolve_tenant(request)
    c = ctx(request)
    batch = parse_batch((await _body(request)).get("batch"), "batch", c.config.max_batch_statements)

    def work(executor: StreamExecutor) -> Steps[dict[str, Any]]:
        executor.stream.closed = True
        return {"result": batch_result((yield from executor.batch_steps(batch)))}

    return await _v1(request, tenant, readonly, work)


async def _v1(
    request: Request, tenant: str, readonly: bool, work: Callable[[StreamExecutor], Steps[dict[str, Any]]]
) -> Response:
    budget = ctx(request).budget(HRANA)
    try:
        result = await _run(request, streams_of(request).open(tenant), readonly, work, budget)
        out = _dumps(result)
    except BaseException:
        budget.release()
        raise
    return BudgetedResponse(out, budget)


def _error_response(exc: SqlfleetError) -> Response:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="sqlfleet"'
    return json_response(hrana_error(exc), exc.status, headers)


def _routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/v2", version, methods=["GET"]),
        Route(f"{prefix}/v3", version, methods=["GET"]),
        Route(f"{prefix}/v2/pipeline", pipeline, methods=["POST"]),
        Route(f"{prefix}/v3/pipeline", pipeline, methods=["POST"]),
        Route(f"{prefix}/v3/cursor", cursor, methods=["POST"]),
        Route(f"{prefix}/v1/execute", v1_execute, methods=["POST"]),
        Route(f"{prefix}/v1/batch", v1_batch, methods=["POST"]),
    ]


ROUTES = [*_routes("/v1/tenants/{tenant}"), *_routes("")]
