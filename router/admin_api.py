"""The admin API: tenants and tokens. Every route needs the admin key."""

from __future__ import annotations

import heapq
import re
import time
from itertools import groupby
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router.ack_gate import ACK_SKIP, ACK_TENANTS
from router.auth import require_admin
from router.bounded import replica_work
from router.codec import parse_json_object, read_body, read_json
from router.context import Context, ctx
from tenants.catalog import TenantRow
from tenants.errors import BadRequest, TenantExists
from tenants.ids import is_name, is_name_prefix, validate_tenant_id
from tenants.rfc3339 import format_time

# Marks the per-node requests of a cluster-wide tenant list: answer from this node alone.
LOCAL_LIST = "x-sqlfleet-local"
_LIMIT = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() also accepts '²'
MAX_PAGE = 1000


def admin_context(request: Request) -> Context:
    c = ctx(request)
    require_admin(c.principal(request))
    return c


def reject_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")


async def optional_body(request: Request, limit: int, allowed: set[str]) -> dict[str, Any]:
    """The body of a route whose body is optional: empty (or blank) or a JSON object of
    `allowed` keys. Raises BadRequest (unknown fields too, as every admin body), TooLarge."""
    body = await read_body(request, limit)
    data = {} if not body.strip() else parse_json_object(body)
    reject_unknown(data, allowed)
    return data


async def refuse_handed_over(request: Request, tenant: str) -> None:
    """Raise TenantExists for an id a cluster node has no row of but was handed (the newest
    manifest of its slot names it, backups.handoff): it exists even while its restore fails, so
    whatever makes a tenant (create, import, a restore into a new id) must not make it anew.
    The replica is asked at most for `request_timeout` (then ReplicaUnavailable, nothing made)."""
    c = admin_context(request)
    backups = c.backups
    if (
        backups is not None
        and backups.handoffs.slot_of is not None
        and c.fleet.catalog.get(tenant) is None
        and await replica_work(request).run(
            f"looking whether tenant {tenant!r} was handed to this node",
            None,
            c.config.request_timeout,
            lambda: backups.handoffs.names(tenant),
        )
        and not backups.shipper.deletion_pending(tenant)
    ):
        raise TenantExists(
            f"tenant {tenant!r} already exists (handed to this node, not restored yet: "
            "its own requests say why)"
        )


async def create_tenant(request: Request) -> JSONResponse:
    c = admin_context(request)
    body = await read_json(request, c.config.max_body_bytes)
    reject_unknown(body, {"id", "group"})
    if "id" not in body:
        raise BadRequest("id is required")
    tenant = validate_tenant_id(body["id"])
    group = body.get("group")
    if group is not None and not is_name(group):
        raise BadRequest("group must be null or a name like a tenant id")
    await refuse_handed_over(request, tenant)
    request.scope[ACK_TENANTS] = (tenant,)  # ack=replica: the 201 waits for it to ship
    row = await c.blocking(c.fleet.create, tenant, group)
    if c.backups is not None:  # and for its identity, which reaches the replica in the fleet
        # metadata: a takeover gives a dead node's tenants the identities published there
        what, again = f"the creation of tenant {tenant!r}", "look at the tenant (GET) before retrying"
        await c.blocking(c.backups.metadata_acked, what, again, c.config.request_timeout)
    return JSONResponse(_info(c, row), status_code=201)


async def list_tenants(request: Request) -> JSONResponse:
    c = admin_context(request)
    q = request.query_params
    prefix, after = q.get("prefix", ""), q.get("after") or None
    if not is_name_prefix(prefix):
        raise BadRequest("prefix may only hold a-z, 0-9, '_' and '-'")
    if after is not None:
        validate_tenant_id(after)
    limit_text = q.get("limit", "100")
    if not _LIMIT.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_PAGE:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}")
    limit = int(limit_text)
    rows = await c.blocking(c.fleet.list_tenants, prefix, after, limit + 1, True)
    listed, more = [r.to_json() for r in rows], len(rows) > limit
    if c.placement is not None and LOCAL_LIST not in request.headers:
        # a cluster: every other node's page of the same query, merged by id (a tenant on the
        # move may show on two nodes: once here)
        pages = await c.placement.gather(
            f"{request.url.path}?{request.url.query}", request.headers.get("authorization", ""), LOCAL_LIST
        )
        merged = heapq.merge(listed, *(p["tenants"] for p in pages), key=_by_id)
        listed = [next(same) for _, same in groupby(merged, key=_by_id)]
        more = more or any(p["next"] is not None for p in pages)
    page = listed[:limit]
    next_cursor = page[-1]["id"] if page and (more or len(listed) > limit) else None
    return JSONResponse({"tenants": page, "next": next_cursor})


def _by_id(tenant: dict[str, Any]) -> str:
    return str(tenant["id"])


async def tenant_info(request: Request) -> JSONResponse:
    c = admin_context(request)
    row = await c.blocking(c.fleet.info, request.path_params["tenant"])
    return JSONResponse(_info(c, row))


def _info(c: Context, row: TenantRow) -> dict[str, Any]:
    """A tenant's info as create and info answer it: its row, and for operators where its file
    lives (admin routes only: the tenant API never names a path)."""
    return {**row.to_json(), "path": str(c.fleet.layout.tenant_path(row.id).absolute())}


async def delete_tenant(request: Request) -> Response:
    c = admin_context(request)
    await c.blocking(c.fleet.delete, request.path_params["tenant"])
    return Response(status_code=204)


async def mint_token(request: Request) -> JSONResponse:
    c = admin_context(request)
    tenant = request.path_params["tenant"]
    body = await read_json(request, c.config.max_body_bytes)
    reject_unknown(body, {"access", "expires_in"})
    access = body.get("access", "rw")
    expires_in = body.get("expires_in", 3600)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int):
        raise BadRequest("expires_in must be an integer number of seconds")
    if not 1 <= expires_in <= c.config.max_token_ttl:
        raise BadRequest(f"expires_in must be from 1 to {c.config.max_token_ttl} seconds")
    if not isinstance(access, str):
        raise BadRequest("access must be 'ro' or 'rw'")
    c.fleet.require(tenant)  # a lookup in the catalog's in-memory rows: no worker thread needed
    token, exp = c.auth.mint(tenant, access, expires_in)
    return JSONResponse({"token": token, "tenant": tenant, "access": access, "expires_at": exp})


async def revoke_tokens(request: Request) -> JSONResponse:
    """Every token minted for the tenant until now stops working; tokens minted from now on work."""
    c = admin_context(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    request.scope[ACK_SKIP] = True  # a write, but no commit of the tenant's: ack=replica waits below
    await c.blocking(c.fleet.revoke_tokens, tenant)
    if c.backups is not None:  # the revocation reaches the replica in the fleet metadata
        what, again = f"the revocation of the tokens of tenant {tenant!r}", "revoke again shortly"
        await c.blocking(c.backups.metadata_acked, what, again, c.config.request_timeout)
    return JSONResponse({"tenant": tenant, "revoked_at": format_time(time.time())})


ROUTES = [
    Route("/v1/admin/tenants", create_tenant, methods=["POST"]),
    Route("/v1/admin/tenants", list_tenants, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}", tenant_info, methods=["GET"]),
    Route("/v1/admin/tenants/{tenant}", delete_tenant, methods=["DELETE"]),
    Route("/v1/admin/tenants/{tenant}/tokens", mint_token, methods=["POST"]),
    Route("/v1/admin/tenants/{tenant}/tokens/revoke", revoke_tokens, methods=["POST"]),
]
