"""Paths and the error schema of Hrana over HTTP (router/hrana/), per libsql's HRANA_3_SPEC and
HTTP_V2_SPEC: under a tenant's prefix, and at the root with the tenant taken from the token's `sub`."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import TENANT_PARAM, TEXT, json_body, operation, request_body

SCHEMAS: dict[str, Any] = {
    "HranaError": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}, "code": {"type": "string", "nullable": True}},
    },
}


def paths() -> dict[str, Any]:
    anything = {"type": "object", "description": "see the Hrana over HTTP specification"}
    errors = (400, 401, 403, 404, 413, 429, 503)
    result: dict[str, Any] = {}

    def op(
        summary: str, ok: dict[str, Any], params: list[dict[str, Any]] | None, body: bool
    ) -> dict[str, Any]:
        # the version probes (GET, no body) answer anyone, as libsql-server's do
        op = operation(
            summary, ok, errors if body else (), None, params, secured=body, tag="hrana", error_kind="H"
        )
        if body:
            op["requestBody"] = request_body(anything)
        return op

    for prefix, params in (("/v1/tenants/{tenant}", [TENANT_PARAM]), ("", None)):
        result |= {
            f"{prefix}/v2": {"get": op("Hrana version probe", TEXT, params, False)},
            f"{prefix}/v3": {"get": op("Hrana version probe", TEXT, params, False)},
            f"{prefix}/v2/pipeline": {"post": op("Hrana v2 pipeline", json_body(anything), params, True)},
            f"{prefix}/v3/pipeline": {"post": op("Hrana v3 pipeline", json_body(anything), params, True)},
            f"{prefix}/v3/cursor": {
                "post": op("Hrana v3 cursor (newline-delimited JSON)", TEXT, params, True)
            },
            f"{prefix}/v1/execute": {"post": op("HTTP v1: one statement", json_body(anything), params, True)},
            f"{prefix}/v1/batch": {"post": op("HTTP v1: a batch", json_body(anything), params, True)},
        }
    return result
