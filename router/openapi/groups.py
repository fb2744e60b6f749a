"""Paths of schema groups, migrations and rollouts (router/groups_api.py)."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import ANYTHING, TENANT_ID, TENANT_PARAM, json_body, operation, request_body


def paths() -> dict[str, Any]:
    group = {"name": "group", "in": "path", "required": True, "schema": TENANT_ID}
    rollout = {"name": "rollout", "in": "path", "required": True, "schema": {"type": "string"}}
    errors = (400, 401, 403, 404, 409, 413)

    def op(summary: str, *params: dict[str, Any], body: bool = False, ok: str = "200") -> dict[str, Any]:
        result = operation(
            summary, json_body(ANYTHING), errors, None, list(params), ok_status=ok, tag="groups"
        )
        if body:
            result["requestBody"] = request_body(ANYTHING)
        return result

    g = "/v1/admin/groups/{group}"
    return {
        "/v1/admin/groups": {
            "post": op("Create a schema group", body=True, ok="201"),
            "get": op("List schema groups"),
        },
        g: {"get": op("A group's state", group)},
        g + "/schema": {"get": op("A group's current schema", group)},
        g + "/migrations": {"post": op("Register a migration", group, body=True, ok="201")},
        g + "/plan": {"post": op("Plan a schema change", group, body=True)},
        g + "/tenants/{tenant}": {"get": op("A tenant's schema status in the group", group, TENANT_PARAM)},
        g + "/rollouts": {
            "post": op("Start a rollout", group, body=True, ok="202"),
            "get": op("List rollouts", group),
        },
        g + "/rollouts/{rollout}": {"get": op("A rollout's progress", group, rollout)},
        g + "/rollouts/{rollout}/stop": {"post": op("Stop a rollout", group, rollout)},
    }
