"""Checks every HTTP response of the router tests against the API contract.

- no body ever carries a traceback; no 500 ever;
- a response of a documented operation has a documented status, and its JSON body validates
  against the documented schema (OpenAPI 3.0 `nullable` included, via OAS30Validator): for
  our routes every 4xx/5xx is the one error shape {"error": {"code", "message"}};
- unknown routes and methods answer in that shape too.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any, TypeVar

import httpx
import httpx2
from openapi_schema_validator import OAS30Validator

from router.openapi import openapi_document

_TEMPLATE = re.compile(r"\{[^}/]+\}")

# What the checks read: a real server's answer (httpx) or the in-process app's (the TestClient's).
Response = httpx.Response | httpx2.Response
AnyClient = TypeVar("AnyClient", httpx.Client, httpx2.Client)


@cache
def _path_patterns() -> list[tuple[re.Pattern[str], str]]:
    return [
        (re.compile("^" + _TEMPLATE.sub("[^/]+", path) + "$"), path) for path in openapi_document()["paths"]
    ]


def operation(method: str, path: str) -> dict[str, Any] | None:
    """The documented operation for `method path` (a concrete path), or None."""
    for pattern, template in _path_patterns():
        if pattern.match(path):
            op: dict[str, Any] | None = openapi_document()["paths"][template].get(method.lower())
            return op
    return None


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    doc = openapi_document()
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def validate(instance: Any, schema: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless `instance` matches `schema` (refs into the doc)."""
    root = {"components": openapi_document()["components"], **schema}
    OAS30Validator(root).validate(instance)


def schema_of(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def assert_error_shape(response: Response) -> None:
    body = response.json()
    assert set(body) == {"error"}, response.text
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], response.text
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], response.text
    validate(body, schema_of("Error"))


def check_response(response: Response) -> None:
    """The contract every response of the app must meet (see the module docstring)."""
    response.read()
    request = response.request
    status = response.status_code
    where = f"{request.method} {request.url.path} -> {status}: {response.text[:300]}"
    assert "Traceback" not in response.text and 'File "' not in response.text, where
    assert status != 500, where
    op = operation(request.method, request.url.path)
    if op is None or request.method == "HEAD":
        if status >= 400:  # an unknown route or method: our error shape
            assert_error_shape(response)
        return
    documented = op["responses"]
    assert str(status) in documented, f"undocumented status: {where}"
    content = _deref(documented[str(status)]).get("content", {})
    if "application/json" in content:
        assert response.headers["content-type"].startswith("application/json"), where
        validate(response.json(), content["application/json"]["schema"])


def checking(client: AnyClient) -> AnyClient:
    """`client`, with every response checked by `check_response`."""
    client.event_hooks["response"].append(check_response)
    return client
