"""Hrana over HTTP: the endpoints, and which tenant a request is for.

Served at `/v1/tenants/{tenant}/` (clients resolve `v2/pipeline` against that base URL) and at
the root, where the tenant comes from the Host header (`{tenant}.BASE_DOMAIN`, when that setting
is on) or else from the tenant token's `sub`. Endpoints (HTTP_V2_SPEC.md, HRANA_3_SPEC.md and,
for the legacy clients, HTTP_V1_SPEC.md):

    GET  v2, v3, v3-protobuf  version checks (2xx; no auth, as the clients probe without it)
    POST v2/pipeline, v3/pipeline   {"baton", "requests"} -> {"baton", "base_url", "results"}
    POST v3/cursor           {"baton", "batch"} -> JSON lines: {"baton", "base_url"}, entries...
    POST v3-protobuf/pipeline, v3-protobuf/cursor   the same in protobuf (the cursor's items
                             varint length-delimited)
    POST v1/execute, v1/batch      one statement / one batch on a fresh stream

Both encodings decode into router.hrana.protocol's values and encode its results (the codecs
router.hrana.codec_json and codec_protobuf); the executor alone gives them meaning.
Errors are the protocol's `{"message", "code"}`: per request inside `results`, or as the body of
a 4xx/5xx when the whole HTTP request fails (which ends the stream, as the spec says). That body
is JSON on the protobuf endpoints too: the spec lets the server pick the error's encoding, and
the clients read a message only from a JSON (or text) error body.

Each HTTP request is one job of its tenant (router.scheduler) with one Budget (tenants.budget)
for all its requests and steps: past its time, what would still run SQL gets an error result
(REQUEST_TIME_LIMIT); past its result bytes, the statement whose rows do not fit gets
RESPONSE_TOO_LARGE. The cursor's entries are streamed as they come (router.hrana.cursor).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial, wraps
from typing import Any, Protocol, TypeVar

from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from router.auth import require_tenant
from router.codec import BudgetedResponse, read_body
from router.context import ctx
from router.hrana import codec_json, codec_protobuf
from router.hrana.cursor import CursorOutput, CursorResponse
from router.hrana.errors import RequestTooLarge, TenantRequired
from router.hrana.executor import HRANA, Steps, StreamExecutor
from router.hrana.jobs import learn_inline, point_read, run_on_stream, run_or_inline, try_inline_pipeline
from router.hrana.protocol import (
    CursorEntry,
    CursorHeader,
    CursorRequest,
    Error,
    Outcome,
    PipelineRequest,
    PipelineResponse,
    StreamResult,
)
from router.hrana.protocol import Request as HranaRequest
from router.hrana.streams import Stream, Streams
from router.proxy.placement import host_label
from tenants.budget import Budget
from tenants.errors import SqlfleetError, TooLarge, Unauthorized
from tenants.ids import validate_tenant_id

T = TypeVar("T")
# the scope key under which a Hrana request (HTTP or WebSocket) names its tenant, for the
# middleware that acts on the response (router.ack_gate)
HRANA_TENANT = "sqlfleet.hrana_tenant"
B = TypeVar("B", PipelineRequest, CursorRequest)
Endpoint = Callable[[Request], Awaitable[Response]]


class HttpCodec(Protocol):
    """What the HTTP endpoints need of an encoding (codec_json and codec_protobuf are ones)."""

    MEDIA_TYPE: str
    CURSOR_MEDIA_TYPE: str

    def decode_pipeline_request(self, body: bytes, max_statements: int) -> PipelineRequest: ...
    def encode_pipeline_response(self, response: PipelineResponse) -> bytes: ...
    def decode_cursor_request(self, body: bytes, max_statements: int) -> CursorRequest: ...
    def encode_cursor_header(self, header: CursorHeader) -> bytes: ...
    def encode_cursor_entry(self, entry: CursorEntry) -> bytes: ...


def streams_of(request: Request) -> Streams:
    return ctx(request).streams


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(codec_json.dumps(body), status, headers, media_type=codec_json.MEDIA_TYPE)


def hrana_endpoint(handler: Endpoint) -> Endpoint:
    """Render any SqlfleetError the handler raises as a Hrana Error body."""

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except SqlfleetError as exc:
            return error_response(exc)

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
    readonly = require_tenant(principal, tenant)
    request.scope[HRANA_TENANT] = tenant
    return tenant, readonly


def host_tenant(request: HTTPConnection, base_domain: str | None) -> str | None:
    """The `{tenant}` of a Host `{tenant}.BASE_DOMAIN[:port]`, or None."""
    return host_label(request.headers.get("host"), base_domain)


async def _run(
    request: Request,
    stream: Stream,
    readonly: bool,
    work: Callable[[StreamExecutor], Steps[T]],
    budget: Budget,
) -> T:
    """`work` on the stream as one job of its tenant (router.hrana.jobs); any failure closes
    the stream (rolled back, handle let go). Returns what `work` returns."""
    return await run_on_stream(ctx(request), stream, readonly, work, budget)


async def _stream_request(request: Request, decode: Callable[[bytes, int], B]) -> tuple[B, Stream, bool]:
    """The request's body decoded, the stream its baton names (a new one when it has none),
    and whether the tenant is read-only to this caller."""
    tenant, readonly = resolve_tenant(request)
    body = decode(await _body(request), ctx(request).config.max_batch_statements)
    streams = streams_of(request)
    stream = streams.open(tenant) if body.baton is None else streams.take(tenant, body.baton)
    return body, stream, readonly


async def _body(request: Request) -> bytes:
    try:
        return await read_body(request, ctx(request).config.max_body_bytes)
    except TooLarge as exc:
        raise RequestTooLarge(exc.message) from None


# -- endpoints ---------------------------------------------------------------------------------


async def version(request: Request) -> Response:
    return PlainTextResponse("Hello, this is HTTP API v2 (Hrana over HTTP)")


def _pipeline_steps(
    executor: StreamExecutor, requests: Sequence[HranaRequest | SqlfleetError]
) -> Steps[list[StreamResult]]:
    """A pipeline's results, each `execute` that ran fine judged for running inline next time."""
    results = yield from executor.results(requests)
    for request, result in zip(requests, results, strict=True):
        if isinstance(request, HranaRequest):
            learn_inline(executor, request, result)
    return results


def _pipeline(codec: HttpCodec) -> Endpoint:
    @hrana_endpoint
    async def pipeline(request: Request) -> Response:
        body, stream, readonly = await _stream_request(request, codec.decode_pipeline_request)
        c = ctx(request)
        budget = c.budget(HRANA)
        try:
            # a point read (and close) runs on the loop, at once or when its turn comes (jobs.py)
            inline = partial(try_inline_pipeline, c, stream, body.requests, budget)
            work = partial(_pipeline_steps, requests=body.requests)
            reads = partial(point_read, stream, body.requests)  # asked only when the tenant has jobs
            results = await run_or_inline(c, stream, readonly, work, budget, inline, waits_as_read=reads)
            out = codec.encode_pipeline_response(PipelineResponse(stream.next_baton, None, results))
        except BaseException:
            budget.release()
            raise
        return BudgetedResponse(out, budget, media_type=codec.MEDIA_TYPE)

    return pipeline


def _cursor(codec: HttpCodec) -> Endpoint:
    def encode(item: CursorHeader | CursorEntry) -> bytes:
        if isinstance(item, CursorHeader):
            return codec.encode_cursor_header(item)
        return codec.encode_cursor_entry(item)

    @hrana_endpoint
    async def cursor(request: Request) -> Response:
        body, stream, readonly = await _stream_request(request, codec.decode_cursor_request)
        budget = ctx(request).budget(HRANA)
        streams = streams_of(request)

        def steps(executor: StreamExecutor, output: CursorOutput) -> Steps[None]:
            # attached: nothing can refuse the request as a whole any more, so the header goes
            # first (its baton is the stream's next one, as give_back will say)
            output.emit(CursorHeader(streams.baton(stream), None))
            yield from executor.cursor_steps(body.batch, output.emit)

        async def produce(output: CursorOutput) -> None:
            await _run(request, stream, readonly, lambda s: steps(s, output), budget)

        return CursorResponse(produce, encode, budget, error_response, codec.CURSOR_MEDIA_TYPE)

    return cursor


@hrana_endpoint
async def v1_execute(request: Request) -> Response:
    tenant, readonly = resolve_tenant(request)
    stmt = codec_json.decode_v1_execute(await _body(request))

    def work(executor: StreamExecutor) -> Steps[bytes]:
        executor.stream.closed = True  # a fresh stream per request (HTTP v1)
        return codec_json.encode_v1_execute(executor.execute(stmt))
        yield  # unreachable: one statement, no steps

    return await _v1(request, tenant, readonly, work)


@hrana_endpoint
async def v1_batch(request: Request) -> Response:
    tenant, readonly = resolve_tenant(request)
    c = ctx(request)
    batch = codec_json.decode_v1_batch(await _body(request), c.config.max_batch_statements)

    def work(executor: StreamExecutor) -> Steps[bytes]:
        executor.stream.closed = True
        outcomes: list[Outcome | None] = yield from executor.batch_steps(batch)
        return codec_json.encode_v1_batch(outcomes)

    return await _v1(request, tenant, readonly, work)


async def _v1(
    request: Request, tenant: str, readonly: bool, work: Callable[[StreamExecutor], Steps[bytes]]
) -> Response:
    budget = ctx(request).budget(HRANA)
    try:
        out = await _run(request, streams_of(request).open(tenant), readonly, work, budget)
    except BaseException:
        budget.release()
        raise
    return BudgetedResponse(out, budget)


def error_response(exc: SqlfleetError) -> Response:
    """`exc` as a Hrana HTTP route answers it: the protocol's Error body, JSON on every route
    (the protobuf ones too, as libsql-server does), Retry-After on a 429 or 503."""
    headers = {"Retry-After": str(exc.detail.get("retry_after", 1))} if exc.status in (429, 503) else {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="sqlfleet"'
    body = codec_json.encode_error(Error.of(exc))
    return Response(body, exc.status, headers, media_type=codec_json.MEDIA_TYPE)


# typed as HttpCodec, so mypy checks that the modules fit
_JSON: HttpCodec = codec_json
_PROTOBUF: HttpCodec = codec_protobuf


def _routes(prefix: str) -> list[Route]:
    json_pipeline, json_cursor = _pipeline(_JSON), _cursor(_JSON)
    return [
        Route(f"{prefix}/v2", version, methods=["GET"]),
        Route(f"{prefix}/v3", version, methods=["GET"]),
        Route(f"{prefix}/v3-protobuf", version, methods=["GET"]),
        Route(f"{prefix}/v2/pipeline", json_pipeline, methods=["POST"]),
        Route(f"{prefix}/v3/pipeline", json_pipeline, methods=["POST"]),
        Route(f"{prefix}/v3/cursor", json_cursor, methods=["POST"]),
        Route(f"{prefix}/v3-protobuf/pipeline", _pipeline(_PROTOBUF), methods=["POST"]),
        Route(f"{prefix}/v3-protobuf/cursor", _cursor(_PROTOBUF), methods=["POST"]),
        Route(f"{prefix}/v1/execute", v1_execute, methods=["POST"]),
        Route(f"{prefix}/v1/batch", v1_batch, methods=["POST"]),
    ]


ROUTES = [*_routes("/v1/tenants/{tenant}"), *_routes("")]
