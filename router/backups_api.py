"""Admin routes for backups: restore to a moment, list restore points, verify, rebuild, DR (the
fleet metadata, then the tenants), rekey.

In a cluster each node's backup catalog holds the rows of the tenants it served. A slot moves
with its live tenants only (backups.handoff), so a tenant deleted before its slot moved is known
to the node that deleted it alone: the list of restorable tenants merges every live node's (each
tenant once, as the node knowing its latest event has it), and the restore of a tenant absent
from its owner first adds to the owner's catalog the rows every other live node holds of it (an
undelete through any node, wherever its slot went since). A restore `as` a new id runs on the
new id's owner (router.proxy): when the source's slot is another node's, the rows every other
live node holds of the source are lent to the catalog for that restore only (see `BackupCatalog.lent`). Each
asks the other nodes as the cluster-wide tenant list does (`Placement.gather`: a node that does
not answer, or not within the request's deadline, makes it a 503).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backups.catalog import ChunkRow
from backups.fleet_doc import TenantRecord
from backups.service import Backups, RestoreResult, parse_moment
from router.ack_gate import ACK_SKIP, ACK_TENANTS
from router.admin_api import LOCAL_LIST, admin_context, optional_body, refuse_handed_over, reject_unknown
from router.bounded import replica_work
from router.codec import read_json
from router.context import Context
from router.errors import BackupsDisabled
from router.proxy.errors import NodeSilent, NoOwner
from router.proxy.placement import Placement
from tenants.errors import BadRequest, TenantNotFound
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
    lent: list[ChunkRow] = []
    record = None  # the source as its owner has it, when that is another node (its group)
    if c.placement is not None and target not in (None, tenant) and not c.placement.locate(tenant).here:
        source = c.placement.locate(tenant)  # another node's
        if source.token == 0:  # its owner's catalog (it may hold the only rows) is out of reach
            raise NoOwner.of(source.slot, None)
        lent, record = await _held_elsewhere(request, c, c.placement, backups, tenant)
    else:
        await _known_elsewhere(request, c, backups, tenant)

    def restoring() -> RestoreResult:
        with backups.catalog.lent(tenant, lent):
            return backups.restore(tenant, moment, target, record)

    result = await replica_work(request).run(
        f"the restore of tenant {tenant!r}",
        f"look at tenant {target or tenant!r} (GET /v1/admin/tenants/...) before retrying",
        c.config.request_timeout,
        restoring,
        lambda: backups.replica_answered,  # a long restore that reads on is waited for
    )
    return JSONResponse(result.to_json())


async def _known_elsewhere(request: Request, c: Context, backups: Backups, tenant: str) -> None:
    """Before a cluster node restores `tenant`, absent here (deleted, perhaps before its slot
    moved here): add to the catalog the rows of it every other live node holds (idempotent; a
    later deletion's tombstone among them is what makes the restore an undelete). Raises as
    `_held_elsewhere`."""
    if c.placement is None or c.fleet.exists(tenant):
        return
    rows, _ = await _held_elsewhere(request, c, c.placement, backups, tenant)
    if rows:
        await c.blocking(backups.catalog.add_rows, rows)


async def _held_elsewhere(
    request: Request, c: Context, placement: Placement, backups: Backups, tenant: str
) -> tuple[list[ChunkRow], TenantRecord | None]:
    """The backup catalog rows of `tenant` every other live node holds (each flushes first),
    and its record from the node where it exists, if one does. Raises TenantNotFound when
    neither they nor this node hold any rows, NodeSilent (503) when they did not all answer
    within the request's deadline, the gather's own 503 when one failed."""
    path, auth = f"/v1/admin/backups/tenants/{tenant}", request.headers.get("authorization", "")
    try:
        async with asyncio.timeout(c.config.request_timeout):
            answers = await placement.gather(path, auth, LOCAL_LIST)
    except TimeoutError:
        raise NodeSilent.of(f"the backups of tenant {tenant!r}", c.config.request_timeout) from None
    rows = [ChunkRow.from_row(tuple(row)) for answer in answers for row in answer["rows"]]
    rows = [row for row in rows if row.tenant == tenant]
    if not rows and not await c.blocking(backups.catalog.chunks, tenant):
        raise TenantNotFound(
            f"tenant {tenant!r} does not exist, and no live node's backups hold anything of it"
        )
    records = [TenantRecord.from_json(answer["record"]) for answer in answers if "record" in answer]
    return rows, max(records, key=lambda r: r.updated, default=None)


async def backup_rows(request: Request) -> JSONResponse:
    """This node's backup catalog rows of one tenant, as the catalog stores them (what the owner
    of a tenant's slot asks the other nodes for before restoring a tenant it lacks)."""
    c, backups = _backups(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    request.scope[ACK_SKIP] = True  # reads no tenant data: nothing to wait for under ack=replica

    def rows() -> list[list[Any]]:
        backups.flush()  # a deletion a moment ago: its tombstone is among them once this returns
        # the catalog's own columns (BackupCatalog.add_rows, ChunkRow.from_row): commits as JSON text
        return [[*dataclasses.astuple(r)[:-1], json.dumps(r.commits)] for r in backups.catalog.chunks(tenant)]

    what = f"listing this node's backups of tenant {tenant!r}"
    found = await replica_work(request).run(what, None, c.config.request_timeout, rows)
    row = c.fleet.catalog.get(tenant)
    if row is None:
        return JSONResponse({"tenant": tenant, "rows": found})
    # here: who it is (a restore `as` another id on another node keeps its group, as on one server)
    record = TenantRecord(row.created_at, row.group, row.incarnation, row.token_generation, time.time())
    return JSONResponse({"tenant": tenant, "rows": found, "record": dataclasses.asdict(record)})


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
    # it verifies the newest backup against the live tenant and takes no field: one sent (a
    # `timestamp`) would be ignored, and the answer taken for what it did not check
    await optional_body(request, c.config.max_body_bytes, set())
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
    `restore --all` puts back what a lost server had, never what was deleted. In a cluster: every
    live node's, each tenant once, as the node that knows its latest event has it (an existing
    tenant before all), `exists` meaning on its owner."""
    c, backups = _backups(request)
    flag = request.query_params.get("deleted", "false")
    if flag not in ("true", "false"):
        raise BadRequest("deleted must be true or false")
    # None on a single server, and for another node's part of a cluster-wide list (LOCAL_LIST)
    placement = None if LOCAL_LIST in request.headers else c.placement

    def listing() -> list[dict[str, Any]]:
        backups.flush()  # a tenant created a moment ago is restorable once this returns
        return [
            {"id": t, "exists": c.fleet.exists(t), "deleted": None if at is None else format_time(at)}
            | ({"newest": newest} if c.placement is not None else {})
            for t, at, newest in backups.known_tenants()
            if at is None or flag == "true" or placement is not None  # filtered once merged
        ]

    work = replica_work(request)
    listed = await work.run("listing the restorable tenants", None, c.config.request_timeout, listing)
    if placement is not None:  # a node may know a tenant better: every part unfiltered
        parts = await placement.gather(
            "/v1/admin/backups/tenants?deleted=true", request.headers.get("authorization", ""), LOCAL_LIST
        )
        newest: dict[str, dict[str, Any]] = {}
        for entry in [*listed, *(e for part in parts for e in part["tenants"])]:
            held = newest.get(entry["id"])
            if held is None or (entry["exists"], entry["newest"]) > (held["exists"], held["newest"]):
                newest[entry["id"]] = entry
        listed = [
            {k: v for k, v in entry.items() if k != "newest"}
            for _, entry in sorted(newest.items())
            if entry["deleted"] is None or flag == "true"
        ]
    return JSONResponse({"tenants": listed})


REKEY_BATCH = 100  # segments one rekey call looks at, unless asked otherwise
MAX_REKEY_BATCH = 10_000
_T = "/v1/admin/tenants/{tenant}"
ROUTES = [
    Route(_T + "/restore", restore, methods=["POST"]),
    Route(_T + "/backups", describe, methods=["GET"]),
    Route(_T + "/backups/verify", verify, methods=["POST"]),
    Route("/v1/admin/backups/rebuild", rebuild, methods=["POST"]),
    Route("/v1/admin/backups/tenants", restorable, methods=["GET"]),
    Route("/v1/admin/backups/tenants/{tenant}", backup_rows, methods=["GET"]),
    Route("/v1/admin/backups/fleet/restore", restore_fleet, methods=["POST"]),
    Route("/v1/admin/backups/rekey", rekey, methods=["POST"]),
]
