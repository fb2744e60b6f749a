"""Paths and schemas of the per-tenant REST API (router/tenant_api.py): one statement, a batch."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import TENANT_PARAM, json_body, operation, ref

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
    "Value": _VALUE,
    "Statement": {
        "type": "object",
        "required": ["sql"],
        "additionalProperties": False,
        "properties": {
            "sql": {"type": "string", "description": "exactly one SQL statement"},
            "params": {
                "anyOf": [
                    {"type": "array", "items": ref("Value"), "nullable": True},
                    {"type": "object", "additionalProperties": ref("Value"), "nullable": True},
                ],
            },
        },
    },
    "QueryResult": {
        "type": "object",
        "required": ["columns", "rows", "rows_affected", "last_insert_rowid"],
        "properties": {
            "columns": {"type": "array", "items": {"type": "string"}},
            "rows": {"type": "array", "items": {"type": "array", "items": ref("Value")}},
            "rows_affected": {"type": "integer"},
            "last_insert_rowid": {"type": "integer", "nullable": True},
        },
    },
    "Batch": {
        "type": "object",
        "required": ["statements"],
        "additionalProperties": False,
        "properties": {"statements": {"type": "array", "minItems": 1, "items": ref("Statement")}},
    },
    "BatchResult": {
        "type": "object",
        "required": ["results"],
        "properties": {"results": {"type": "array", "items": ref("QueryResult")}},
    },
}


def paths() -> dict[str, Any]:
    errors = (400, 401, 403, 404, 413, 429, 503, 504)  # 429: a disk quota (wal_full, replica_quota_exceeded)
    return {
        "/v1/tenants/{tenant}/query": {
            "post": operation(
                "Run one statement",
                json_body(ref("QueryResult")),
                errors,
                "Statement",
                [TENANT_PARAM],
                tag="tenant",
            )
        },
        "/v1/tenants/{tenant}/batch": {
            "post": operation(
                "Run statements atomically",
                json_body(ref("BatchResult")),
                errors,
                "Batch",
                [TENANT_PARAM],
                tag="tenant",
            )
        },
    }
