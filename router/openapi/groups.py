"""Paths and schemas of schema groups, migrations and rollouts (router/groups_api.py)."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import TENANT_ID, TENANT_PARAM, TIME, json_body, operation, ref

_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
# A rollout's snapshot (schema_sync.rollout.Rollout.snapshot); listings leave out the last three.
ROLLOUT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "group", "state", "reason", "options", "template", "total", "migrated", "current"],
    "properties": {
        "id": {"type": "string"},
        "group": TENANT_ID,
        "state": {
            "type": "string",
            "enum": ["running", "completed", "stopped", "failed", "interrupted", "aborted"],
        },
        "reason": {
            "type": "string",
            "nullable": True,
            "description": "why it stopped, failed or was aborted",
        },
        "dry_run": {"type": "boolean", "description": "counts say what would happen; nothing changed"},
        "options": {
            "type": "object",
            "properties": {
                "dry_run": {"type": "boolean"},
                "canary": {"type": "integer", "nullable": True},
                "max_failures": {"type": "integer", "nullable": True},
                "concurrency": {"type": "integer", "nullable": True},
            },
        },
        "target": {"type": "string", "nullable": True, "description": "the last migration it rolls out"},
        "template": {
            "type": "object",
            "properties": {
                "applied": {"type": "array", "items": {"type": "string"}},
                "tried_only": {"type": "boolean", "description": "false once the rollout released them"},
                "error": {"type": "string"},
            },
        },
        **{
            k: _COUNT
            for k in ("total", "migrated", "current", "failed", "gone", "done", "remaining", "resumed")
        },
        "elapsed_s": {"type": "number"},
        "rate_per_s": {"type": "number"},
        "eta_s": {"type": "number", "nullable": True},
        "started_at": TIME,
        "finished_at": {**TIME, "nullable": True},
        "failures": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["tenant", "code", "error"],
                "properties": {"tenant": TENANT_ID, "code": {"type": "string"}, "error": {"type": "string"}},
            },
        },
        "migrated_tenants": {
            "type": "array",
            "items": TENANT_ID,
            "description": "tenants it migrated (the first 1000): ahead of the head until it releases",
        },
        "plans": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sql", "tenants"],
                "properties": {"sql": {"type": "string"}, "tenants": {"type": "integer"}},
            },
        },
        "nodes": {
            "type": "object",
            "description": "cluster only: each node's part (its state and counts; current_slots: "
            "whether it covered the slots the node owns now)",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "state": {"type": "string"},
                    "current_slots": {"type": "boolean"},
                    **{k: _COUNT for k in ("total", "migrated", "current", "failed", "gone")},
                },
            },
        },
        "unowned_slots": {"type": "integer", "description": "cluster only: slots without an owner now"},
    },
}
ROLLOUT_RESUME: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_failures": {
            "type": "integer",
            "minimum": 1,
            "nullable": True,
            "description": "replaces the rollout's",
        },
        "concurrency": {"type": "integer", "minimum": 1, "maximum": 64, "nullable": True},
    },
}
# stop and abort take no options: an empty body, or an empty object
ROLLOUT_CONTROL: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": {}}


def optional_body(operation: dict[str, Any]) -> dict[str, Any]:
    """`operation` whose request body may be left out (empty)."""
    operation["requestBody"] = {**operation["requestBody"], "required": False}
    return operation


_MIGRATION: dict[str, Any] = {
    "type": "object",
    "required": ["name", "kind", "checksum", "allow_drop"],
    "properties": {
        "name": {"type": "string", "pattern": "^[0-9]{4}_[a-z0-9][a-z0-9_]*$"},
        "kind": {
            "type": "string",
            "enum": ["sql", "alembic", "sync"],
            "description": "sync: a declarative step (make the schema equal the given one)",
        },
        "checksum": {"type": "string"},
        "allow_drop": {"type": "boolean"},
        "alembic_revision": {"type": "string"},
        "alembic_source_sha256": {"type": "string"},
    },
}
_NAMES: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
# A rollout as listings show it: no failures, plans or migrated_tenants.
_ROLLOUT_LISTED: dict[str, Any] = {
    **ROLLOUT,
    "properties": {
        k: v for k, v in ROLLOUT["properties"].items() if k not in ("failures", "plans", "migrated_tenants")
    },
}

SCHEMAS: dict[str, Any] = {
    "GroupCreate": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": TENANT_ID,
            "schema": {"type": "string", "nullable": True, "description": "SQL the template starts with"},
            "template": {
                "type": "string",
                "format": "byte",
                "nullable": True,
                "description": "a SQLite database file (base64) to start from instead of `schema`",
            },
        },
    },
    "Migration": _MIGRATION,
    "Group": {
        "type": "object",
        "required": ["name", "migrations", "released", "head", "pending", "tables", "rollout"],
        "properties": {
            "name": TENANT_ID,
            "migrations": {
                "type": "array",
                "items": {
                    **_MIGRATION,
                    "required": [*_MIGRATION["required"], "released"],
                    "properties": {**_MIGRATION["properties"], "released": {"type": "boolean"}},
                },
            },
            "released": {**_COUNT, "description": "how many of `migrations` the template has"},
            "head": {"type": "string", "nullable": True, "description": "the last released migration"},
            "pending": {**_COUNT, "description": "registered, not released yet"},
            "tables": {**_NAMES, "description": "the template's tables"},
            "rollout": {**_ROLLOUT_LISTED, "nullable": True, "description": "the newest, as listed"},
        },
    },
    "GroupList": {
        "type": "object",
        "required": ["groups"],
        "properties": {"groups": {"type": "array", "items": ref("Group")}},
    },
    "GroupSchema": {
        "type": "object",
        "required": ["group", "sql"],
        "properties": {"group": TENANT_ID, "sql": {"type": "string"}},
    },
    "MigrationCreate": {
        "type": "object",
        "required": ["name", "sql"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "description": "a slug (numbered next) or NNNN_slug"},
            "sql": {"type": "string", "description": "the statements; for `sync`, the whole schema"},
            "kind": {"type": "string", "enum": ["sql", "sync"], "default": "sql"},
            "allow_drop": {"type": "boolean", "default": False, "description": "sync only"},
        },
    },
    "PlanRequest": {
        "type": "object",
        "required": ["schema"],
        "additionalProperties": False,
        "properties": {
            "schema": {"type": "string", "description": "the schema (SQL) to sync to"},
            "allow_drop": {"type": "boolean", "default": False},
            "tenant": {**TENANT_ID, "nullable": True, "description": "plan against this tenant"},
        },
    },
    "SyncPlan": {
        "type": "object",
        "required": ["sql", "blocked", "kept"],
        "properties": {
            "sql": {"type": "string"},
            "blocked": {**_NAMES, "description": "why the plan cannot run as it is"},
            "kept": {**_NAMES, "description": "objects left in place (drops not allowed)"},
        },
    },
    "TenantSchemaStatus": {
        "type": "object",
        "required": ["tenant", "group", "applied", "released", "pending", "error"],
        "properties": {
            "tenant": TENANT_ID,
            "group": TENANT_ID,
            "applied": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "checksum", "applied_at"],
                    "properties": {
                        "name": {"type": "string"},
                        "checksum": {"type": "string", "nullable": True},
                        "applied_at": {"type": "string", "nullable": True},
                    },
                },
            },
            "released": {**_COUNT, "description": "how many migrations the group has released"},
            "pending": {**_NAMES, "nullable": True, "description": "null when `error` says why not"},
            "error": {"type": "string", "nullable": True},
        },
    },
    "RolloutStart": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "dry_run": {"type": "boolean", "default": False},
            "canary": {"type": "integer", "minimum": 1, "nullable": True},
            "max_failures": {"type": "integer", "minimum": 1, "nullable": True},
            "concurrency": {"type": "integer", "minimum": 1, "maximum": 64, "nullable": True},
        },
    },
    "Rollout": ROLLOUT,
    "RolloutList": {
        "type": "object",
        "required": ["rollouts"],
        "properties": {"rollouts": {"type": "array", "items": _ROLLOUT_LISTED}},
    },
    "RolloutResume": ROLLOUT_RESUME,
    "RolloutControl": ROLLOUT_CONTROL,
}


def paths() -> dict[str, Any]:
    group = {"name": "group", "in": "path", "required": True, "schema": TENANT_ID}
    rollout = {"name": "rollout", "in": "path", "required": True, "schema": {"type": "string"}}

    def op(
        summary: str,
        ok: str,
        errors: tuple[int, ...],
        *params: dict[str, Any],
        body: str | None = None,
        status: str = "200",
    ) -> dict[str, Any]:
        # 400, 401, 403 any admin call; 404 a group, tenant or rollout named; 409 a conflict the
        # operation names (an existing group, a running or ended rollout, a migration record
        # that disagrees); 413 a body too large; 503 a tenant busy or unavailable; 504 a
        # statement on a tenant or the template past migration_timeout
        return operation(
            summary, json_body(ref(ok)), errors, body, list(params), ok_status=status, tag="groups"
        )

    auth = (400, 401, 403)
    g = "/v1/admin/groups/{group}"
    return {
        "/v1/admin/groups": {
            "post": op(
                "Create a schema group", "Group", (*auth, 409, 413, 504), body="GroupCreate", status="201"
            ),
            "get": op("List schema groups", "GroupList", auth),
        },
        g: {"get": op("A group's state", "Group", (*auth, 404), group)},
        g + "/schema": {"get": op("A group's current schema", "GroupSchema", (*auth, 404, 504), group)},
        g + "/migrations": {
            "post": op(
                "Register a migration (tried on the template first)",
                "Migration",
                (*auth, 404, 409, 413, 504),
                group,
                body="MigrationCreate",
                status="201",
            )
        },
        g + "/plan": {
            "post": op(
                "Plan a schema change", "SyncPlan", (*auth, 404, 413, 503, 504), group, body="PlanRequest"
            )
        },
        g + "/tenants/{tenant}": {
            "get": op(
                "A tenant's schema status in the group",
                "TenantSchemaStatus",
                (*auth, 404, 409, 503, 504),
                group,
                TENANT_PARAM,
            )
        },
        g + "/rollouts": {
            "post": op(
                "Start a rollout", "Rollout", (*auth, 404, 409, 413), group, body="RolloutStart", status="202"
            ),
            "get": op("List rollouts, newest first", "RolloutList", (*auth, 404), group),
        },
        g + "/rollouts/{rollout}": {
            "get": op("A rollout's progress", "Rollout", (*auth, 404), group, rollout)
        },
        # stop, resume and abort: the body may be empty; an ended rollout (completed, failed,
        # aborted; resume: superseded too) is 409 rollout_finished for each, an unknown one 404
        g + "/rollouts/{rollout}/stop": {
            "post": optional_body(
                op(
                    "Stop a running rollout (a stopped or interrupted one is answered as it is)",
                    "Rollout",
                    (*auth, 404, 409, 413),
                    group,
                    rollout,
                    body="RolloutControl",
                )
            )
        },
        g + "/rollouts/{rollout}/resume": {
            "post": optional_body(
                op(
                    "Resume a stopped or interrupted rollout (the group's newest; 409 "
                    "rollout_running while it runs)",
                    "Rollout",
                    (*auth, 404, 409, 413),
                    group,
                    rollout,
                    body="RolloutResume",
                    status="202",
                )
            )
        },
        g + "/rollouts/{rollout}/abort": {
            "post": optional_body(
                op(
                    "Abort a rollout, releasing nothing (migrated_tenants keep the migration)",
                    "Rollout",
                    (*auth, 404, 409, 413),
                    group,
                    rollout,
                    body="RolloutControl",
                )
            )
        },
    }
