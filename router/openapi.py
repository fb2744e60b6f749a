"""The OpenAPI 3 document of every route: request bodies, responses and the error shape."""

from __future__ import annotations

from functools import cache
from typing import Any

TENANT_ID = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}


_VALUE = {
    "description": 'null, integer, real, text, or a blob as {"base64": ...}',
    "nullable": True,
    "oneOf": [
        {"type": "integer", "format": "int64"},
        {"type": "number"},
        {"type": "string"},
        {
            "type": "object",
            "required": ["base64"],
            "properties": {"base64": {"type": "string"}},
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
                "oneOf": [
                    {"type": "array", "items": _ref("Value")},
                    {"type": "object", "additionalProperties": _ref("Value")},
                ]
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

_STATUS_TEXT = {
    400: "Bad input or SQL error",
    401: "Missing, invalid or expired credential",
    403: "Not allowed for this credential",
    404: "No such tenant or route",
    409: "Already exists",
    413: "Too large",
    503: "Tenant unavailable",
    504: "Statement timed out",
}

_TENANT_PARAM = {"name": "tenant", "in": "path", "required": True, "schema": TENANT_ID}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def _op(
    summary: str,
    ok: dict[str, Any],
    errors: tuple[int, ...],
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    secured: bool = True,
    ok_status: str = "200",
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {ok_status: ok, **_errors(*errors)}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = params
    if secured:
        op["security"] = _SECURED
    return op


def _paths() -> dict[str, Any]:
    tenant_errors = (400, 401, 403, 404, 413, 503, 504)
    listing = [
        {"name": "prefix", "in": "query", "schema": {"type": "string", "pattern": "^[a-z0-9_-]{0,63}$"}},
        {"name": "after", "in": "query", "schema": TENANT_ID},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    ]
    status = {"type": "object"}
    return {
        "/v1/tenants/{tenant}/query": {
            "post": _op(
                "Run one statement", _json(_ref("QueryResult")), tenant_errors, "Statement", [_TENANT_PARAM]
            )
        },
        "/v1/tenants/{tenant}/batch": {
            "post": _op(
                "Run statements atomically",
                _json(_ref("BatchResult")),
                tenant_errors,
                "Batch",
                [_TENANT_PARAM],
            )
        },
        "/v1/admin/tenants": {
            "post": _op(
                "Create a tenant",
                _json(_ref("TenantInfo"), "Created"),
                (400, 401, 403, 409, 413),
                "TenantCreate",
                ok_status="201",
            ),
            "get": _op("List tenants", _json(_ref("TenantList")), (400, 401, 403), params=listing),
        },
        "/v1/admin/tenants/{tenant}": {
            "get": _op(
                "Tenant info", _json(_ref("TenantInfo")), (400, 401, 403, 404), params=[_TENANT_PARAM]
            ),
            "delete": _op(
                "Delete a tenant",
                {"description": "Deleted"},
                (400, 401, 403, 404),
                params=[_TENANT_PARAM],
                ok_status="204",
            ),
        },
        "/v1/admin/tenants/{tenant}/tokens": {
            "post": _op(
                "Mint a tenant token",
                _json(_ref("Token")),
                (400, 401, 403, 404, 413),
                "TokenRequest",
                [_TENANT_PARAM],
            )
        },
        "/healthz": {"get": _op("Liveness", _json(status), (), secured=False)},
        "/readyz": {"get": _op("Readiness", _json(status), (503,), secured=False)},
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {
                    "description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                (),
                secured=False,
            )
        },
        "/openapi.json": {"get": _op("This document", _json(status), (), secured=False)},
        "/v1/ping": {
            "get": _op("Bare JSON endpoint", _json(status), (), secured=False),
            "post": _op("Bare JSON endpoint", _json(status), (), secured=False),
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "sqlfleet", "version": "1"},
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "responses": {f"E{s}": _json(_ref("Error"), text) for s, text in _STATUS_TEXT.items()},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "admin key, or an Ed25519 JWT tenant token",
                }
            },
        },
    }
