"""The whole document: every area's paths and schemas, the shared error shape and responses."""

from __future__ import annotations

from functools import cache
from typing import Any

from router.openapi import admin, backups, changes, cluster, groups, hrana, system, tenant, transfer
from router.openapi.builders import STATUS_TEXT, json_body, ref

TAGS = ("tenant", "admin", "system", "groups", "backups", "hrana", "transfer", "cluster")

ERROR: dict[str, Any] = {
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
}


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document served at /openapi.json. Built once; do not mutate it."""
    schemas = {
        "Error": ERROR,
        **tenant.SCHEMAS,
        **admin.SCHEMAS,
        **system.SCHEMAS,
        **hrana.SCHEMAS,
        **backups.SCHEMAS,
        **transfer.SCHEMAS,
        **groups.SCHEMAS,
        **cluster.SCHEMAS,
    }
    responses = {
        **{f"E{s}": json_body(ref("Error"), text) for s, text in STATUS_TEXT.items()},
        **{f"H{s}": json_body(ref("HranaError"), text) for s, text in STATUS_TEXT.items()},
    }
    paths = {
        **tenant.paths(),
        **admin.paths(),
        **system.paths(),
        **groups.paths(),
        **backups.paths(),
        **hrana.paths(),
        **transfer.paths(),
        **changes.paths(),
        **cluster.paths(),
    }
    _body_timeouts(paths)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "sqlfleet",
            "version": "1",
            "description": (
                "Durability: with ack=local (the default) a 2xx means the commits are durable on "
                "the server's disk (a lost disk loses at most about a backup flush interval); with "
                "ack=replica a 2xx (and any answer showing data) is sent only once the commits are "
                "durably in the replica, so no acknowledged write is lost, and a 503 "
                "replica_unavailable leaves a write's outcome unknown."
            ),
        },
        "tags": [{"name": name} for name in TAGS],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "admin key, or an Ed25519 JWT tenant token: bound to the tenant it was "
                        "minted for (a tenant created again under its id refuses it) and "
                        "revocable per tenant (POST /v1/admin/tenants/{tenant}/tokens/revoke)"
                    ),
                }
            },
        },
    }


def _body_timeouts(paths: dict[str, Any]) -> None:
    """Every operation that takes a body may answer 408 (router/body_deadline.py), in the error
    shape of its other errors (Hrana's or ours)."""
    for operations in paths.values():
        for op in operations.values():
            if "requestBody" not in op:
                continue
            refs = [r.get("$ref", "") for r in op["responses"].values()]
            kind = "H" if any(r.startswith("#/components/responses/H") for r in refs) else "E"
            op["responses"].setdefault("408", {"$ref": f"#/components/responses/{kind}408"})
