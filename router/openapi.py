"""The OpenAPI 3 document of every route: request bodies, responses and the error shape."""

from __future__ import annotations

from functools import cache
from typing import Any

from router.openapi_extra import HRANA_ERROR, group_paths, hrana_paths
from router.openapi_kit import STATUS_TEXT, TENANT_ID, TENANT_PARAM
from router.openapi_kit import json_body as _json
from router.openapi_kit import operation as _op
from router.openapi_kit import ref as _ref

_TENANT_PARAM = TENANT_PARAM

# anyOf, not oneOf: every integer is also a JSON number, so oneOf would reject all integers.
# OpenAPI 3.0 has no null type, and `nullable` needs a `type` beside it: it goes on each branch.
_VALUE = {
    "description": 'null, integer, real, text, or a blob as {"base64": ...}',
    "anyOf": [
        {"type": "integer", "format": "int64", "nullable": True},
        {"type": "number", "nullable": True},
        {"type": "string", "nullable": True},
        {
            "type": "object",
            "nullable": True,
            "required": ["base64"],
            "properties": {"base64": {"type": "string", "format": "byte"}},
            "additionalProperties": False,
        },
    ],
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "index": {"type": "integer"},
                },
            }
        },
    },
    "Value": _VALUE,
    "Statement": {
        "type": "object",
        "required": ["sql"],
        "additionalProperties": False,
        "properties": {
            "sql": {"type": "string", "description": "exactly one SQL statement"},
            "params": {
                "anyOf": [
                    {"type": "array", "items": _ref("Value"), "nullable": True},
                    {"type": "object", "additionalProperties": _ref("Value"), "nullable": True},
                ],
            },
        },
    },
    "QueryResult": {
        "type": "object",
        "required": ["columns", "rows", "rows_affected", "last_insert_rowid"],
        "properties": {
            "columns": {"type": "array", "items": {"type": "string"}},
            "rows": {"type": "array", "items": {"type": "array", "items": _ref("Value")}},
            "rows_affected": {"type": "integer"},
            "last_insert_rowid": {"type": "integer", "nullable": True},
        },
    },
    "Batch": {
        "type": "object",
        "required": ["statements"],
        "additionalProperties": False,
        "properties": {"statements": {"type": "array", "minItems": 1, "items": _ref("Statement")}},
    },
    "BatchResult": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": _ref("QueryResult")}},
    },
    "TenantCreate": {
        "type": "object",
        "required": ["id"],
        "additionalProperties": False,
        "properties": {"id": TENANT_ID, "group": {"type": "string", "nullable": True}},
    },
    "TenantInfo": {
        "type": "object",
        "required": ["id", "created_at", "state", "group", "size"],
        "properties": {
            "id": TENANT_ID,
            "created_at": {"type": "string", "format": "date-time"},
            "state": {"type": "string", "enum": ["creating", "active", "deleting", "corrupt", "missing"]},
            "group": {"type": "string", "nullable": True},
            "size": {"type": "integer", "description": "bytes on disk, WAL included"},
            "error": {"type": "string", "nullable": True},
        },
    },
    "TenantList": {
        "type": "object",
        "required": ["tenants", "next"],
        "properties": {
            "tenants": {"type": "array", "items": _ref("TenantInfo")},
            "next": {"type": "string", "nullable": True, "description": "pass as `after` for the next page"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
    },
    "Ready": {
        "type": "object",
        "required": ["ready", "checks"],
        "properties": {
            "ready": {"type": "boolean"},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    },
    "TokenRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "access": {"type": "string", "enum": ["ro", "rw"], "default": "rw"},
            "expires_in": {"type": "integer", "minimum": 1, "default": 3600},
        },
    },
    "Token": {
        "type": "object",
        "required": ["token", "tenant", "access", "expires_at"],
        "properties": {
            "token": {"type": "string"},
            "tenant": TENANT_ID,
            "access": {"type": "string", "enum": ["ro", "rw"]},
            "expires_at": {"type": "integer", "description": "unix seconds"},
        },
    },
}


def _paths() -> dict[str, Any]:
    return {
        **_rest_paths(),
        **_admin_paths(),
        **_system_paths(),
        **group_paths(),
        **_backup_paths(),
        **hrana_paths(),
    }


def _rest_paths() -> dict[str, Any]:
    errors = (400, 401, 403, 404, 413, 503, 504)
    return {
        "/v1/tenants/{tenant}/query": {
            "post": _op(
                "Run one statement",
                _json(_ref("QueryResult")),
                errors,
                "Statement",
                [_TENANT_PARAM],
                tag="tenant",
            )
        },
        "/v1/tenants/{tenant}/batch": {
            "post": _op(
                "Run statements atomically",
                _json(_ref("BatchResult")),
                errors,
                "Batch",
                [_TENANT_PARAM],
                tag="tenant",
            )
        },
    }


def _admin_paths() -> dict[str, Any]:
    listing = [
        {"name": "prefix", "in": "query", "schema": {"type": "string", "pattern": "^[a-z0-9_-]{0,63}$"}},
        {"name": "after", "in": "query", "schema": TENANT_ID},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    ]
    return {
        "/v1/admin/tenants": {
            "post": _op(
                "Create a tenant",
                _json(_ref("TenantInfo"), "Created"),
                (400, 401, 403, 409, 413),
                "TenantCreate",
                ok_status="201",
                tag="admin",
            ),
            "get": _op(
                "List tenants", _json(_ref("TenantList")), (400, 401, 403), params=listing, tag="admin"
            ),
        },
        "/v1/admin/tenants/{tenant}": {
            "get": _op(
                "Tenant info",
                _json(_ref("TenantInfo")),
                (400, 401, 403, 404),
                params=[_TENANT_PARAM],
                tag="admin",
            ),
            "delete": _op(
                "Delete a tenant",
                {"description": "Deleted"},
                (400, 401, 403, 404),
                params=[_TENANT_PARAM],
                ok_status="204",
                tag="admin",
            ),
        },
        "/v1/admin/tenants/{tenant}/tokens": {
            "post": _op(
                "Mint a tenant token",
                _json(_ref("Token")),
                (400, 401, 403, 404, 413, 503),
                "TokenRequest",
                [_TENANT_PARAM],
                tag="admin",
            )
        },
    }


def _system_paths() -> dict[str, Any]:
    anything = {"type": "object"}
    text = {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/healthz": {"get": _op("Liveness", _json(_ref("Health")), (), secured=False)},
        "/readyz": {
            "get": {
                "summary": "Readiness: 503 while the data dir is not held or the server is stopping",
                "tags": ["system"],
                "responses": {"200": _json(_ref("Ready")), "503": _json(_ref("Ready"), "Not ready")},
            }
        },
        "/metrics": {"get": _op("Prometheus metrics (text exposition format)", text, (), secured=False)},
        "/openapi.json": {"get": _op("This document", _json(anything), (), secured=False)},
        "/v1/ping": {
            "get": _op("Bare JSON endpoint", _json(anything), (), secured=False),
            "post": _op("Bare JSON endpoint", _json(anything), (), secured=False),
        },
    }


def _backup_paths() -> dict[str, Any]:
    """Backups and restore (router/backups_api.py); 409 when the server runs without backups,
    502/503 when the replica fails or cannot be reached, 500 when a restored file fails its
    integrity check (a broken backup)."""

    def op(summary: str, ok: str, errors: tuple[int, ...], body: str | None = None,
           tenant: bool = True) -> dict[str, Any]:  # fmt: skip
        params = [_TENANT_PARAM] if tenant else None
        return _op(summary, _json(_ref(ok)), errors, body, params, tag="backups")

    return {
        "/v1/admin/tenants/{tenant}/restore": {
            "post": op(
                "Restore a tenant to a moment, in place or as a new tenant",
                "RestoreResult",
                (400, 401, 403, 404, 409, 413, 500, 502, 503),
                "RestoreRequest",
            )
        },
        "/v1/admin/tenants/{tenant}/backups": {
            "get": op(
                "A tenant's restore points: window, generations, snapshots",
                "BackupInfo",
                (400, 401, 403, 404, 409),
            )
        },
        "/v1/admin/tenants/{tenant}/backups/verify": {
            "post": op(
                "Restore the latest state aside and compare it page by page",
                "BackupVerify",
                (400, 401, 403, 404, 409, 500, 502, 503),
            )
        },
        "/v1/admin/backups/rebuild": {
            "post": op(
                "Rebuild the backup catalog from the replica",
                "BackupRebuild",
                (400, 401, 403, 409, 502, 503),
                tenant=False,
            )
        },
        "/v1/admin/backups/tenants": {
            "get": op(
                "Tenants the replica can restore", "RestorableTenants", (400, 401, 403, 409), tenant=False
            )
        },
    }


_RESTORE_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "timestamp": {"type": "string", "description": "RFC 3339, or 'latest'", "default": "latest"},
        "as": {**TENANT_ID, "nullable": True, "description": "restore into this new tenant instead"},
    },
}


_TIME = {"type": "string", "format": "date-time"}
_BACKUP_SCHEMAS: dict[str, Any] = {
    "RestoreResult": {
        "type": "object",
        "required": ["tenant", "restored_to", "generation", "commits_applied"],
        "properties": {
            "tenant": {**TENANT_ID, "description": "the tenant restored into"},
            "restored_to": {**_TIME, "description": "time of the last commit applied"},
            "generation": {"type": "string", "description": "backup generation restored from"},
            "commits_applied": {"type": "integer", "description": "commits replayed onto the snapshot"},
        },
    },
    "BackupInfo": {
        "type": "object",
        "required": ["tenant", "earliest", "latest", "generations", "snapshots", "deleted", "backlog_bytes"],
        "properties": {
            "tenant": TENANT_ID,
            "earliest": {**_TIME, "nullable": True, "description": "earliest restorable moment"},
            "latest": {**_TIME, "description": "latest restorable moment (last shipped commit)"},
            "generations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "started"],
                    "properties": {"id": {"type": "string"}, "started": _TIME},
                },
            },
            "snapshots": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["generation", "lsn", "taken", "bytes"],
                    "properties": {
                        "generation": {"type": "string"},
                        "lsn": {"type": "integer", "description": "last WAL frame the image includes"},
                        "taken": _TIME,
                        "bytes": {"type": "integer", "description": "compressed size"},
                    },
                },
            },
            "deleted": {"type": "boolean", "description": "the tenant's last event is its deletion"},
            "backlog_bytes": {"type": "integer", "description": "committed WAL bytes not yet shipped"},
        },
    },
    "BackupVerify": {
        "type": "object",
        "required": ["tenant", "ok", "pages", "differing_pages", "restored_to"],
        "properties": {
            "tenant": TENANT_ID,
            "ok": {"type": "boolean", "description": "restored file equals the live database"},
            "pages": {"type": "integer", "description": "pages of the live database"},
            "differing_pages": {"type": "array", "items": {"type": "integer"}, "maxItems": 100},
            "restored_to": _TIME,
        },
    },
    "BackupRebuild": {
        "type": "object",
        "required": ["segments"],
        "properties": {"segments": {"type": "integer", "description": "segment objects read"}},
    },
    "RestorableTenants": {
        "type": "object",
        "required": ["tenants"],
        "properties": {
            "tenants": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "exists"],
                    "properties": {"id": TENANT_ID, "exists": {"type": "boolean"}},
                },
            }
        },
    },
}


@cache
def openapi_document() -> dict[str, Any]:
    schemas = {**SCHEMAS, "HranaError": HRANA_ERROR, "RestoreRequest": _RESTORE_REQUEST, **_BACKUP_SCHEMAS}
    responses = {
        **{f"E{s}": _json(_ref("Error"), text) for s, text in STATUS_TEXT.items()},
        **{f"H{s}": _json(_ref("HranaError"), text) for s, text in STATUS_TEXT.items()},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "sqlfleet", "version": "1"},
        "tags": [{"name": name} for name in ("tenant", "admin", "system", "groups", "backups", "hrana")],
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "admin key, or an Ed25519 JWT tenant token",
                }
            },
        },
    }
