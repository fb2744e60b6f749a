"""Admin routes for backups: restore to a moment, list restore points, verify, rebuild, DR (the
fleet metadata, then the tenants), rekey."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backups.service import Backups, parse_moment
from router.ack_gate import ACK_TENANTS
from router.admin_api import admin_context, refuse_handed_over, reject_unknown
from router.bounded import replica_work
from router.codec import read_json
from router.context import Context
from router.errors import BackupsDisabled
from tenants.errors import BadRequest
from tenants.ids import validate_tenant_id
from tenants.rfc3339 import format_time


def _backups(request: Request) -> tuple[Context, Backups]:
    c = admin_context(request)
    if c.backups is None:
        raise BackupsDisabled("backups are turned off on this server (SQLFLEET_BACKUPS=false)")
    return c, c.backups


async def restore(request: Request) -> JSONResponse:
    c, backups = _backups(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    body = await read_json(request, c.config.max_body_bytes)
    reject_unknown(body, {"timestamp", "as"})
    stamp, target = body.get("timestamp", "latest"), body.get("as")
    if not isinstance(stamp, str):
        raise BadRequest("timestamp must be an RFC 3339 string or 'latest'")
    if target is not None:
        request.scope[ACK_TENANTS] = (validate_tenant_id(target),)  # ack=replica: what it wrote
        if target != tenant:
            await refuse_handed_over(request, target)  # a cluster node: handed here, not restored yet
    moment = parse_moment(stamp)
    result = await replica_work(request).run(
        f"the restore of tenant {tenant!r}",
        f"look at tenant {target or tenant!r} (GET /v1/admin/tenants/...) before retrying",
        c.config.request_timeout,
        lambda: backups.restore(tenant, moment, target),
        lambda: backups.replica_answered,  # a long restore that reads on is waited for
    )
    return JSONResponse(result.to_json())


async def describe(request: Request) -> JSONResponse:
    c, backups = _backups(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    work = replica_work(request)
    what = f"listing the backups of tenant {tenant!r}"
    return JSONResponse(
        await work.run(what, None, c.config.request_timeout, lambda: backups.describe(tenant))
    )


async def verify(request: Request) -> JSONResponse:
    c, backups = _backups(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    work = replica_work(request)
    what = f"verifying the backups of tenant {tenant!r}"
    verified = await work.run(
        what, None, c.config.request_timeout, lambda: backups.verify(tenant), lambda: backups.replica_answered
    )
    return JSONResponse(verified)


async def rebuild(request: Request) -> JSONResponse:
    c, backups = _backups(request)
    answered = [0.0]  # time.monotonic() of the last segment it read

    def step(done: int, total: int) -> None:
        answered[0] = time.monotonic()

    segments = await replica_work(request).run(
        "rebuilding the backup catalog",
        "it is safe to run again",
        c.config.request_timeout,
        lambda: backups.rebuild_catalog(step),
        lambda: answered[0],
    )
    return JSONResponse({"segments": segments})


async def rekey(request: Request) -> JSONResponse:
    """One batch of re-encrypting the backups with the current key; the answer's `next` goes
    into the next call's `after` until it is null."""
    c, backups = _backups(request)
    body = await read_json(request, c.config.max_body_bytes)
    reject_unknown(body, {"after", "limit"})
    after, limit = body.get("after"), body.get("limit", REKEY_BATCH)
    if after is not None and not isinstance(after, str):
        raise BadRequest("after must be a segment key (the previous answer's next) or null")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_REKEY_BATCH:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_REKEY_BATCH}")
    batch = await replica_work(request).run(
        "re-encrypting a batch of backups",
        "it is safe to run again from the same `after`",
        c.config.request_timeout,
        lambda: backups.rekey(after, limit),
    )
    return JSONResponse(batch.to_json())


async def restore_fleet(request: Request) -> JSONResponse:
    """Disaster recovery's first step: put back the schema groups this server lacks; says whether
    the tokens of the tenants still to restore will work here (`warning` when not)."""
    c, backups = _backups(request)
    restored = await replica_work(request).run(
        "restoring the fleet metadata",
        "it is safe to run again",
        c.config.request_timeout,
        backups.restore_fleet,
    )
    return JSONResponse(restored.to_json())


async def restorable(request: Request) -> JSONResponse:
    """Tenants the bucket can restore, with whether each exists locally; those whose last event
    is their deletion (`deleted`: when) only with `?deleted=true` (restoring one undeletes it):
    `restore --all` puts back what a lost server had, never what was deleted."""
    c, backups = _backups(request)
    flag = request.query_params.get("deleted", "false")
    if flag not in ("true", "false"):
        raise BadRequest("deleted must be true or false")

    def listing() -> list[dict[str, Any]]:
        backups.flush()  # a tenant created a moment ago is restorable once this returns
        return [
            {"id": t, "exists": c.fleet.exists(t), "deleted": None if at is None else format_time(at)}
            for t, at in backups.backed_up_tenants()
            if at is None or flag == "true"
        ]

    work = replica_work(request)
    return JSONResponse(
        {"tenants": await work.run("listing the restorable tenants", None, c.config.request_timeout, listing)}
    )


REKEY_BATCH = 100  # segments one rekey call looks at, unless asked otherwise
MAX_REKEY_BATCH = 10_000
_T = "/v1/admin/tenants/{tenant}"
ROUTES = [
    Route(_T + "/restore", restore, methods=["POST"]),
    Route(_T + "/backups", describe, methods=["GET"]),
    Route(_T + "/backups/verify", verify, methods=["POST"]),
    Route("/v1/admin/backups/rebuild", rebuild, methods=["POST"]),
    Route("/v1/admin/backups/tenants", restorable, methods=["GET"]),
    Route("/v1/admin/backups/fleet/restore", restore_fleet, methods=["POST"]),
    Route("/v1/admin/backups/rekey", rekey, methods=["POST"]),
]
