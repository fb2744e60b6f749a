"""Paths and schemas of data in and out (router/transfer_api.py): export, dump, import."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import TENANT_PARAM, json_body, operation, ref

_HEADERS = {
    "X-Sqlfleet-Consistent-At": {
        "description": "the copy holds every commit before this moment (RFC 3339) and none after",
        "schema": {"type": "string", "format": "date-time"},
    },
}

SCHEMAS: dict[str, Any] = {
    "Imported": {
        "type": "object",
        "description": "the tenant's info, and what was imported",
        "required": ["id", "imported"],
        "properties": {
            "id": {"type": "string"},
            "imported": {
                "type": "object",
                "required": ["bytes", "page_size", "replaced", "schema_steps"],
                "properties": {
                    "bytes": {"type": "integer"},
                    "page_size": {"type": "integer"},
                    "replaced": {"type": "boolean"},
                    "schema_steps": {
                        "type": "integer",
                        "description": "schema changes made to join the group (0 without one)",
                    },
                },
            },
        },
    },
}


def _streamed(summary: str, media_type: str, description: str) -> dict[str, Any]:
    ok = {
        "description": description,
        "headers": _HEADERS,
        "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
    }
    op = operation(summary, ok, (400, 401, 403, 404, 429, 503, 504), params=[TENANT_PARAM], tag="transfer")
    op["description"] = (
        "Made from a consistent copy taken in short steps (writers wait one step at most), then "
        "streamed; bounded by transfer_timeout overall and transfer_idle_timeout per piece, not "
        "by request_timeout; 503 tenant_busy when a client's transaction holds the tenant past "
        "busy_timeout. A tenant token (ro is enough) or the admin key."
    )
    return op


def paths() -> dict[str, Any]:
    replace = {"name": "replace", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]}}
    group = {
        "name": "group",
        "in": "query",
        "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
    }
    upload = {
        "required": True,
        "content": {"application/vnd.sqlite3": {"schema": {"type": "string", "format": "binary"}}},
    }
    imported = operation(
        "Import an SQLite file as a tenant",
        json_body(ref("Imported"), "Replaced (with replace=true)"),
        (400, 401, 403, 404, 409, 413, 429, 503),
        params=[TENANT_PARAM, replace, group],
        tag="transfer",
    )
    imported["responses"]["201"] = json_body(ref("Imported"), "Created")
    imported["requestBody"] = upload
    imported["description"] = (
        "The file is checked before it goes live (a real SQLite file, UTF-8, rollback-journal "
        "header, whole pages, within max_db_bytes, integrity_check ok, a schema tenant SQL "
        "could CREATE); a bad one gets 400/413 naming what is wrong and nothing changes. With "
        "replace=true it takes the place of the tenant's data: the state before stays restorable "
        "(restore to a moment before the import), and the tenant's tokens keep working. With "
        "group=G (new tenants; a replacement stays in the tenant's group) the file's schema is "
        "synced to the group's released schema where no data is lost, else 400 plan_blocked "
        "naming each difference."
    )
    return {
        "/v1/tenants/{tenant}/export": {
            "get": _streamed(
                "Export the tenant as an SQLite file", "application/vnd.sqlite3", "A plain SQLite file"
            )
        },
        "/v1/tenants/{tenant}/dump": {
            "get": _streamed("Dump the tenant as SQL text", "application/sql", "SQL text, like sqlite3 .dump")
        },
        "/v1/admin/tenants/{tenant}/import": {"put": imported},
    }
