"""Paths and schemas of the system routes (router/app.py): probes, metrics, this document."""

from __future__ import annotations

from typing import Any

from router.openapi.builders import TEXT, json_body, operation, ref

SCHEMAS: dict[str, Any] = {
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
    "Pong": {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean", "enum": [True]}}},
    "OpenApiDocument": {
        "type": "object",
        "required": ["openapi", "info", "paths"],
        "description": "an OpenAPI 3.0 document",
        "properties": {
            "openapi": {"type": "string"},
            "info": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "version": {"type": "string"}},
            },
            "paths": {
                "type": "object",
                "description": "path template -> method -> operation",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["summary", "responses"],
                        "properties": {
                            "summary": {"type": "string"},
                            "responses": {"description": "by status"},
                        },
                    },
                },
            },
            "components": {
                "type": "object",
                "properties": {
                    "schemas": {"description": "JSON schemas by name"},
                    "responses": {"description": "shared responses by name"},
                    "securitySchemes": {"description": "how to authenticate"},
                },
            },
        },
    },
}


def paths() -> dict[str, Any]:
    def open_op(summary: str, ok: dict[str, Any]) -> dict[str, Any]:
        return operation(summary, ok, (), secured=False)

    return {
        "/healthz": {"get": open_op("Liveness", json_body(ref("Health")))},
        "/readyz": {
            "get": {
                "summary": "Readiness: 503 while the data dir is not held or the server is stopping",
                "tags": ["system"],
                "responses": {"200": json_body(ref("Ready")), "503": json_body(ref("Ready"), "Not ready")},
            }
        },
        "/metrics": {"get": open_op("Prometheus metrics (text exposition format)", TEXT)},
        "/openapi.json": {"get": open_op("This document", json_body(ref("OpenApiDocument")))},
        "/v1/ping": {
            "get": open_op("Bare JSON endpoint", json_body(ref("Pong"))),
            "post": open_op("Bare JSON endpoint", json_body(ref("Pong"))),
        },
    }
