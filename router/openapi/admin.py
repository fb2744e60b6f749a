"""Paths and schemas of the tenant admin API (router/admin_api.py): create, list, inspect,
delete, mint and revoke tokens."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import TENANT_ID, TENANT_PARAM, TIME, json_body, operation, ref
from tenants.state import TenantState

SCHEMAS: dict[str, Any] = {
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
            "created_at": TIME,
            "state": {"type": "string", "enum": [state.value for state in TenantState]},
            "group": {"type": "string", "nullable": True},
            "size": {"type": "integer", "description": "bytes on disk, WAL included, measured when asked"},
            "error": {"type": "string", "nullable": True},
            "path": {
                "type": "string",
                "description": "the tenant's file on the server (tenant info only, for operators)",
            },
        },
    },
    "TenantList": {
        "type": "object",
        "required": ["tenants", "next"],
        "properties": {
            "tenants": {"type": "array", "items": ref("TenantInfo")},
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
    "TokensRevoked": {
        "type": "object",
        "required": ["tenant", "revoked_at"],
        "properties": {
            "tenant": TENANT_ID,
            "revoked_at": {
                **TIME,
                "description": "tokens minted before this moment are refused (401); later ones work",
            },
        },
    },
}


def paths() -> dict[str, Any]:
    listing = [
        {"name": "prefix", "in": "query", "schema": {"type": "string", "pattern": "^[a-z0-9_-]{0,63}$"}},
        {"name": "after", "in": "query", "schema": TENANT_ID},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    ]
    return {
        "/v1/admin/tenants": {
            "post": operation(
                "Create a tenant",
                json_body(ref("TenantInfo"), "Created"),
                (400, 401, 403, 404, 409, 413),  # 404: no such group
                "TenantCreate",
                ok_status="201",
                tag="admin",
            ),
            "get": operation(
                "List tenants", json_body(ref("TenantList")), (400, 401, 403), params=listing, tag="admin"
            ),
        },
        "/v1/admin/tenants/{tenant}": {
            "get": operation(
                "Tenant info",
                json_body(ref("TenantInfo")),
                (400, 401, 403, 404),
                params=[TENANT_PARAM],
                tag="admin",
            ),
            "delete": operation(
                "Delete a tenant",
                {"description": "Deleted"},
                (400, 401, 403, 404),
                params=[TENANT_PARAM],
                ok_status="204",
                tag="admin",
            ),
        },
        "/v1/admin/tenants/{tenant}/tokens": {
            "post": operation(
                "Mint a tenant token",
                json_body(ref("Token")),
                (400, 401, 403, 404, 413, 503),
                "TokenRequest",
                [TENANT_PARAM],
                tag="admin",
            )
        },
        "/v1/admin/tenants/{tenant}/tokens/revoke": {
            "post": {
                **operation(
                    "Revoke the tenant's tokens",
                    json_body(ref("TokensRevoked")),
                    (400, 401, 403, 404),
                    params=[TENANT_PARAM],
                    tag="admin",
                ),
                "description": (
                    "Every token minted for the tenant until now is refused from now on, without "
                    "changing the server's signing key. Tokens are also bound to the tenant's "
                    "incarnation: one minted before the tenant was deleted and created again never "
                    "works for the new tenant."
                ),
            }
        },
    }
