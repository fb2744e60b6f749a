"""The OpenAPI paths of schema groups (router/groups_api.py) and Hrana over HTTP
(router/hrana/), kept apart from the core document in router/openapi.py."""

from __future__ import annotations

from typing import Any

from router.openapi_kit import TENANT_ID, TENANT_PARAM, json_body, operation


def group_paths() -> dict[str, Any]:
    """Schema groups, migrations and rollouts (router/groups_api.py)."""
    anything = {"type": "object"}
    group = {"name": "group", "in": "path", "required": True, "schema": TENANT_ID}
    rollout = {"name": "rollout", "in": "path", "required": True, "schema": {"type": "string"}}
    errors = (400, 401, 403, 404, 409, 413)

    def op(summary: str, *params: dict[str, Any], body: bool = False, ok: str = "200") -> dict[str, Any]:
        result = operation(
            summary, json_body(anything), errors, None, list(params), ok_status=ok, tag="groups"
        )
        if body:
            result["requestBody"] = {"required": True, "content": {"application/json": {"schema": anything}}}
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


def hrana_paths() -> dict[str, Any]:
    """Hrana over HTTP (router/hrana/), per libsql's HRANA_3_SPEC / HTTP_V2_SPEC: under a
    tenant's prefix, and at the root with the tenant taken from the token's `sub`."""
    anything = {"type": "object", "description": "see the Hrana over HTTP specification"}
    text = {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}
    errors = (400, 401, 403, 404, 413, 429, 503)
    paths: dict[str, Any] = {}

    def op(
        summary: str, ok: dict[str, Any], params: list[dict[str, Any]] | None, body: bool
    ) -> dict[str, Any]:
        # the version probes (GET, no body) answer anyone, as libsql-server's do
        result = operation(
            summary, ok, errors if body else (), None, params, secured=body, tag="hrana", error_kind="H"
        )
        if body:
            result["requestBody"] = {"required": True, "content": {"application/json": {"schema": anything}}}
        return result

    for prefix, params in (("/v1/tenants/{tenant}", [TENANT_PARAM]), ("", None)):
        paths |= {
            f"{prefix}/v2": {"get": op("Hrana version probe", text, params, False)},
            f"{prefix}/v3": {"get": op("Hrana version probe", text, params, False)},
            f"{prefix}/v2/pipeline": {"post": op("Hrana v2 pipeline", json_body(anything), params, True)},
            f"{prefix}/v3/pipeline": {"post": op("Hrana v3 pipeline", json_body(anything), params, True)},
            f"{prefix}/v3/cursor": {
                "post": op("Hrana v3 cursor (newline-delimited JSON)", text, params, True)
            },
            f"{prefix}/v1/execute": {"post": op("HTTP v1: one statement", json_body(anything), params, True)},
            f"{prefix}/v1/batch": {"post": op("HTTP v1: a batch", json_body(anything), params, True)},
        }
    return paths


HRANA_ERROR = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}, "code": {"type": "string", "nullable": True}},
}
