"""Paths and the error schema of Hrana over HTTP (router/hrana/), per libsql's HRANA_3_SPEC and
HTTP_V2_SPEC: under a tenant's prefix, and at the root with the tenant taken from the token's `sub`.
The protobuf endpoints take and give the messages of router/hrana/proto/hrana_http.proto; their
error bodies are JSON, as the JSON endpoints' are."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import TENANT_PARAM, TEXT, json_body, operation, ref

PROTOBUF = "application/x-protobuf"

_SPEC = "see the Hrana specification (HRANA_3_SPEC)"
# Hrana's own structures, typed to their first level: what is inside (values, results) is the
# specification's, validated by the decoder (router/hrana/codec_json.py), not restated here.
_STMT: dict[str, Any] = {
    "type": "object",
    "description": "a statement: sql or sql_id, positional args or named_args, want_rows",
    "properties": {
        "sql": {"type": "string", "nullable": True},
        "sql_id": {"type": "integer", "nullable": True},
        "args": {"type": "array", "items": {}},
        "named_args": {"type": "array", "items": {}},
        "want_rows": {"type": "boolean"},
    },
}
_BATCH: dict[str, Any] = {
    "type": "object",
    "required": ["steps"],
    "properties": {
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["stmt"],
                "properties": {"stmt": _STMT, "condition": {"description": _SPEC}},
            },
        }
    },
}
_RESULT: dict[str, Any] = {"description": f"a StmtResult or BatchResult: {_SPEC}"}
_REQUEST_KINDS = [
    "close",
    "execute",
    "batch",
    "sequence",
    "describe",
    "store_sql",
    "close_sql",
    "get_autocommit",
]

SCHEMAS: dict[str, Any] = {
    "HranaError": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}, "code": {"type": "string", "nullable": True}},
    },
    "HranaPipelineRequest": {
        "type": "object",
        "required": ["requests"],
        "properties": {
            "baton": {"type": "string", "nullable": True, "description": "the stream to go on with"},
            "requests": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "description": f"a stream request; its other fields by type: {_SPEC}",
                    "properties": {"type": {"type": "string", "enum": _REQUEST_KINDS}},
                },
            },
        },
    },
    "HranaPipelineResponse": {
        "type": "object",
        "required": ["baton", "base_url", "results"],
        "properties": {
            "baton": {"type": "string", "nullable": True},
            "base_url": {"type": "string", "nullable": True},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"type": "string", "enum": ["ok", "error"]},
                        "response": {
                            "type": "object",
                            "required": ["type"],
                            "description": f"the request's answer; its other fields by type: {_SPEC}",
                            "properties": {"type": {"type": "string", "enum": _REQUEST_KINDS}},
                        },
                        "error": {"$ref": "#/components/schemas/HranaError"},
                    },
                },
            },
        },
    },
    "HranaCursorRequest": {
        "type": "object",
        "required": ["batch"],
        "properties": {"baton": {"type": "string", "nullable": True}, "batch": _BATCH},
    },
    "HranaV1Execute": {"type": "object", "required": ["stmt"], "properties": {"stmt": _STMT}},
    "HranaV1Batch": {"type": "object", "required": ["batch"], "properties": {"batch": _BATCH}},
    "HranaV1Result": {"type": "object", "required": ["result"], "properties": {"result": _RESULT}},
}


def paths() -> dict[str, Any]:
    errors = (400, 401, 403, 404, 413, 429, 503)
    result: dict[str, Any] = {}

    def op(
        summary: str,
        ok: dict[str, Any],
        params: list[dict[str, Any]] | None,
        body: str | None,
        media_type: str = "application/json",
    ) -> dict[str, Any]:
        # the version probes (GET, no body) answer anyone, as libsql-server's do
        secured = body is not None
        op = operation(
            summary, ok, errors if secured else (), None, params, secured=secured, tag="hrana", error_kind="H"
        )
        if body is not None:
            schema = ref(body) if media_type == "application/json" else binary
            op["requestBody"] = {"required": True, "content": {media_type: {"schema": schema}}}
        return op

    binary = {"type": "string", "format": "binary"}

    def protobuf(message: str, media_type: str = PROTOBUF) -> dict[str, Any]:
        return {"description": message, "content": {media_type: {"schema": binary}}}

    for prefix, params in (("/v1/tenants/{tenant}", [TENANT_PARAM]), ("", None)):
        result |= {
            f"{prefix}/v2": {"get": op("Hrana version probe", TEXT, params, None)},
            f"{prefix}/v3": {"get": op("Hrana version probe", TEXT, params, None)},
            f"{prefix}/v2/pipeline": {
                "post": op(
                    "Hrana v2 pipeline",
                    json_body(ref("HranaPipelineResponse")),
                    params,
                    "HranaPipelineRequest",
                )
            },
            f"{prefix}/v3/pipeline": {
                "post": op(
                    "Hrana v3 pipeline",
                    json_body(ref("HranaPipelineResponse")),
                    params,
                    "HranaPipelineRequest",
                )
            },
            f"{prefix}/v3/cursor": {
                "post": op("Hrana v3 cursor (newline-delimited JSON)", TEXT, params, "HranaCursorRequest")
            },
            f"{prefix}/v3-protobuf": {"get": op("Hrana version probe (protobuf)", TEXT, params, None)},
            f"{prefix}/v3-protobuf/pipeline": {
                "post": op(
                    "Hrana v3 pipeline, protobuf: PipelineReqBody -> PipelineRespBody",
                    protobuf("hrana.http.PipelineRespBody"),
                    params,
                    "protobuf",
                    PROTOBUF,
                )
            },
            f"{prefix}/v3-protobuf/cursor": {
                "post": op(
                    "Hrana v3 cursor, protobuf: CursorReqBody -> CursorRespBody, then CursorEntry "
                    "messages, each prefixed by its length as a varint",
                    protobuf("hrana.http.CursorRespBody, then hrana.CursorEntry", "application/octet-stream"),
                    params,
                    "protobuf",
                    PROTOBUF,
                )
            },
            f"{prefix}/v1/execute": {
                "post": op(
                    "HTTP v1: one statement", json_body(ref("HranaV1Result")), params, "HranaV1Execute"
                )
            },
            f"{prefix}/v1/batch": {
                "post": op("HTTP v1: a batch", json_body(ref("HranaV1Result")), params, "HranaV1Batch")
            },
        }
    return result
