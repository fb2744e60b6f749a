"""The per-tenant REST API: one statement, or an atomic batch."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from router.auth import require_tenant
from router.codec import encode_result, parse_statement, read_json
from router.context import ctx
from tenants.errors import BadRequest
from tenants.ids import validate_tenant_id


def _tenant(request: Request) -> tuple[str, bool]:
    """(tenant id, read-only?) after authentication and authorization."""
    principal = ctx(request).principal(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    return tenant, require_tenant(principal, tenant)


async def query(request: Request) -> JSONResponse:
    tenant, readonly = _tenant(request)
    c = ctx(request)
    stmt = parse_statement(await read_json(request, c.config.max_body_bytes))
    result = await c.blocking(c.fleet.execute, tenant, stmt, readonly)
    return JSONResponse(encode_result(result))


async def batch(request: Request) -> JSONResponse:
    tenant, readonly = _tenant(request)
    c = ctx(request)
    body = await read_json(request, c.config.max_body_bytes)
    raw = body.get("statements")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("statements must be a non-empty array")
    if len(raw) > c.config.max_batch_statements:
        raise BadRequest(f"at most {c.config.max_batch_statements} statements per batch")
    if set(body) - {"statements"}:
        raise BadRequest(f"unknown fields: {', '.join(sorted(set(body) - {'statements'}))}")
    stmts = [parse_statement(s, f"statements[{i}]") for i, s in enumerate(raw)]
    results = await c.blocking(c.fleet.batch, tenant, stmts, readonly)
    return JSONResponse({"results": [encode_result(r) for r in results]})


ROUTES = [
    Route("/v1/tenants/{tenant}/query", query, methods=["POST"]),
    Route("/v1/tenants/{tenant}/batch", batch, methods=["POST"]),
]
