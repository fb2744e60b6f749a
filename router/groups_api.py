"""Admin routes for schema groups: create and list groups, register migrations, plan a schema
change, run a rollout, watch, stop, resume or abort it. Every route needs the admin key."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from router.admin_api import admin_context, reject_unknown
from router.codec import parse_json_object, read_body, read_json
from router.context import Context
from schema_sync import catch_up
from schema_sync.groups import GroupStore
from schema_sync.migrations import applied, pending
from schema_sync.plan import Plan
from schema_sync.rollout import RolloutOptions
from schema_sync.rollouts import Rollouts
from schema_sync.session import SchemaSession
from schema_sync.sync import plan_against
from tenants.errors import BadRequest, SqlfleetError
from tenants.ids import validate_tenant_id

MAX_CONCURRENCY = 64


def _context(request: Request) -> tuple[Context, GroupStore, Rollouts]:
    c = admin_context(request)
    return c, c.groups, c.rollouts


def _group_json(groups: GroupStore, rollouts: Rollouts, name: str) -> dict[str, Any]:
    """The group's state, and its newest rollout (as `GET .../rollouts` lists it) or None."""
    return {"name": name, **groups.get(name).state(fresh=True).to_json(), "rollout": rollouts.latest(name)}


def _text(body: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false")
    return value


def _count(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{key} must be an integer from {low} to {high}")
    return value


async def _acked(c: Context, what: str, again: str) -> None:
    """ack=replica on a single server: a group change is acknowledged once in the replica (the
    fleet metadata carries it). A cluster keeps its groups in etcd, durable on its own."""
    if c.backups is not None and c.placement is None:
        await c.blocking(c.backups.metadata_acked, what, again, c.config.request_timeout)


async def create_group(request: Request) -> JSONResponse:
    c, groups, rollouts = _context(request)
    body = await read_json(request, c.config.max_body_bytes)
    reject_unknown(body, {"name", "schema", "template"})
    name = _text(body, "name")
    schema = _text(body, "schema", required=False)
    encoded = _text(body, "template", required=False)
    if schema is not None and encoded is not None:
        raise BadRequest("give either schema (SQL) or template (a base64 database file), not both")
    template = None
    if encoded is not None:
        try:
            template = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise BadRequest("template must be base64") from None
    assert name is not None
    await c.blocking(groups.create, name, schema, template)
    await _acked(c, f"the creation of group {name!r}", "look at the group before creating it again")
    return JSONResponse(await c.blocking(_group_json, groups, rollouts, name), status_code=201)


async def list_groups(request: Request) -> JSONResponse:
    c, groups, rollouts = _context(request)
    await c.blocking(groups.sync)
    names = await c.blocking(groups.names)
    return JSONResponse({"groups": [await c.blocking(_group_json, groups, rollouts, n) for n in names]})


async def group_info(request: Request) -> JSONResponse:
    c, groups, rollouts = _context(request)
    await c.blocking(groups.sync, request.path_params["group"])
    return JSONResponse(await c.blocking(_group_json, groups, rollouts, request.path_params["group"]))


async def group_schema(request: Request) -> JSONResponse:
    """The newest schema (every registered migration applied), or `?released=1` the template's."""
    c, groups, _ = _context(request)
    await c.blocking(groups.sync, request.path_params["group"])
    group = await c.blocking(groups.get, request.path_params["group"])
    released = request.query_params.get("released") in ("1", "true")
    upto = (await c.blocking(group.state, True)).head if released else None
    return JSONResponse({"group": group.name, "sql": await c.blocking(group.schema_sql, upto)})


async def add_migration(request: Request) -> JSONResponse:
    c, groups, _ = _context(request)
    name = request.path_params["group"]
    body = await read_json(request, c.config.max_body_bytes)
    reject_unknown(body, {"name", "sql", "kind", "allow_drop"})
    migration_name, sql = _text(body, "name"), _text(body, "sql")
    kind = body.get("kind", "sql")
    assert migration_name is not None and sql is not None
    if kind == "sql":
        if _flag(body, "allow_drop"):
            raise BadRequest("allow_drop applies to sync steps only")
        migration = await c.blocking(groups.add_migration, name, migration_name, sql)
    elif kind == "sync":
        migration = await c.blocking(groups.add_sync, name, migration_name, sql, _flag(body, "allow_drop"))
    else:
        raise BadRequest("kind must be 'sql' or 'sync'")
    await _acked(
        c, f"migration {migration.name} of group {name!r}", "look at the group before adding it again"
    )
    return JSONResponse(migration.to_json(), status_code=201)


async def plan(request: Request) -> JSONResponse:
    """What syncing to `schema` would do: to the group's newest schema, or to one tenant."""
    c, groups, _ = _context(request)
    name = request.path_params["group"]
    body = await read_json(request, c.config.max_body_bytes)
    reject_unknown(body, {"schema", "allow_drop", "tenant"})
    schema, allow_drop = _text(body, "schema"), _flag(body, "allow_drop")
    tenant = body.get("tenant")
    assert schema is not None
    if tenant is None:
        await c.blocking(groups.sync, name)
        result = await c.blocking(groups.plan_sync, name, schema, allow_drop)
    else:
        result = await c.blocking(
            _plan_tenant, c, groups, name, validate_tenant_id(tenant), schema, allow_drop
        )
    return JSONResponse({"sql": result.render(), "blocked": result.blocked, "kept": result.kept})


def _plan_tenant(
    c: Context, groups: GroupStore, name: str, tenant: str, schema: str, allow_drop: bool
) -> Plan:
    groups.sync(name)
    group = groups.get(name)
    row = c.fleet.require(tenant)
    if row.group != group.name:
        raise BadRequest(f"tenant {tenant!r} is not in group {group.name!r}")
    with groups.target(schema) as target, catch_up.suppressed(), c.fleet.lease(tenant) as handle:
        assert handle.conn is not None
        session = SchemaSession(handle.conn, handle.sandbox, groups.timeout)
        with session.attached(target, "sqlfleet_target") as alias:
            return plan_against(session, alias, allow_drop)


async def tenant_status(request: Request) -> JSONResponse:
    """Where one tenant stands against its group: applied, pending, or why it disagrees."""
    c, groups, _ = _context(request)
    tenant = validate_tenant_id(request.path_params["tenant"])
    return JSONResponse(await c.blocking(_tenant_status, c, groups, request.path_params["group"], tenant))


def _tenant_status(c: Context, groups: GroupStore, name: str, tenant: str) -> dict[str, Any]:
    groups.sync(name)
    group = groups.get(name)
    if c.fleet.require(tenant).group != group.name:
        raise BadRequest(f"tenant {tenant!r} is not in group {group.name!r}")
    state = group.state()
    with catch_up.suppressed(), c.fleet.lease(tenant) as handle:
        assert handle.conn is not None
        history = applied(SchemaSession(handle.conn, handle.sandbox, groups.timeout))
    result: dict[str, Any] = {
        "tenant": tenant,
        "group": group.name,
        "applied": [{"name": a.name, "checksum": a.checksum, "applied_at": a.applied_at} for a in history],
        "released": state.head,
    }
    try:
        result["pending"] = [m.name for m in pending(history, state.migrations, f"tenant {tenant}")]
        result["error"] = None
    except SqlfleetError as exc:
        result["pending"], result["error"] = None, exc.message
    return result


async def start_rollout(request: Request) -> JSONResponse:
    c, _, rollouts = _context(request)
    body = await read_json(request, c.config.max_body_bytes)
    reject_unknown(body, {"dry_run", "canary", "max_failures", "concurrency"})
    options = RolloutOptions(
        dry_run=_flag(body, "dry_run"),
        canary=_count(body, "canary", 1, 1 << 31),
        max_failures=_count(body, "max_failures", 1, 1 << 31),
        concurrency=_count(body, "concurrency", 1, MAX_CONCURRENCY),
    )
    snapshot = await c.blocking(rollouts.start_snapshot, request.path_params["group"], options)
    return JSONResponse(snapshot, status_code=202)


async def list_rollouts(request: Request) -> JSONResponse:
    c, _, rollouts = _context(request)
    return JSONResponse({"rollouts": await c.blocking(rollouts.history, request.path_params["group"])})


async def rollout_status(request: Request) -> JSONResponse:
    c, _, rollouts = _context(request)
    p = request.path_params
    return JSONResponse(await c.blocking(rollouts.status, p["group"], p["rollout"]))


async def _control_body(c: Context, request: Request, allowed: set[str]) -> dict[str, Any]:
    """The body of stop, resume and abort: empty (or blank) or a JSON object of `allowed` keys.
    Raises BadRequest, TooLarge."""
    body = await read_body(request, c.config.max_body_bytes)
    data = {} if not body.strip() else parse_json_object(body)
    reject_unknown(data, allowed)
    return data


async def stop_rollout(request: Request) -> JSONResponse:
    """Stop a running rollout (a stopped or interrupted one: answered as it is)."""
    c, _, rollouts = _context(request)
    p = request.path_params
    await _control_body(c, request, set())
    return JSONResponse(await c.blocking(rollouts.stop, p["group"], p["rollout"]))


async def resume_rollout(request: Request) -> JSONResponse:
    """Go on with a stopped or interrupted rollout (the group's newest), optionally with new
    `max_failures` and `concurrency`; it releases when every tenant has had its turn."""
    c, _, rollouts = _context(request)
    p = request.path_params
    body = await _control_body(c, request, {"max_failures", "concurrency"})
    max_failures = _count(body, "max_failures", 1, 1 << 31)
    concurrency = _count(body, "concurrency", 1, MAX_CONCURRENCY)
    snapshot = await c.blocking(rollouts.resume_snapshot, p["group"], p["rollout"], max_failures, concurrency)
    return JSONResponse(snapshot, status_code=202)


async def abort_rollout(request: Request) -> JSONResponse:
    """End a running, stopped or interrupted rollout, releasing nothing; the tenants it migrated
    are in the answer's `migrated_tenants`."""
    c, _, rollouts = _context(request)
    p = request.path_params
    await _control_body(c, request, set())
    return JSONResponse(await c.blocking(rollouts.abort, p["group"], p["rollout"]))


_G = "/v1/admin/groups/{group}"
ROUTES = [
    Route("/v1/admin/groups", create_group, methods=["POST"]),
    Route("/v1/admin/groups", list_groups, methods=["GET"]),
    Route(_G, group_info, methods=["GET"]),
    Route(_G + "/schema", group_schema, methods=["GET"]),
    Route(_G + "/migrations", add_migration, methods=["POST"]),
    Route(_G + "/plan", plan, methods=["POST"]),
    Route(_G + "/tenants/{tenant}", tenant_status, methods=["GET"]),
    Route(_G + "/rollouts", start_rollout, methods=["POST"]),
    Route(_G + "/rollouts", list_rollouts, methods=["GET"]),
    Route(_G + "/rollouts/{rollout}", rollout_status, methods=["GET"]),
    Route(_G + "/rollouts/{rollout}/stop", stop_rollout, methods=["POST"]),
    Route(_G + "/rollouts/{rollout}/resume", resume_rollout, methods=["POST"]),
    Route(_G + "/rollouts/{rollout}/abort", abort_rollout, methods=["POST"]),
]
