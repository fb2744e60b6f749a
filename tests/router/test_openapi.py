"""/openapi.json: a valid OpenAPI 3 document of every route, and real responses match it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate as validate_spec
from starlette.routing import BaseRoute, Mount, Route

from router.openapi import openapi_document
from tenants.state import TenantState
from tests.support.app import ADMIN, InProcess, bearer
from tests.support.http_contract import check_response, operation, schema_of, validate


def _routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path template, methods) of every HTTP route, mounts included."""
    for route in routes:
        if isinstance(route, Mount):
            yield from _routes(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            yield prefix + route.path, set(route.methods or ())


def test_the_served_document_is_valid_openapi_3(app: InProcess) -> None:
    r = app.client.get("/openapi.json")
    assert r.status_code == 200
    document = r.json()
    assert document["openapi"].startswith("3.")
    validate_spec(document)
    assert document == openapi_document()


def test_every_route_and_method_of_the_app_is_documented_with_responses(app: InProcess) -> None:
    paths = openapi_document()["paths"]
    served: set[tuple[str, str]] = set()
    for path, methods in _routes(app.server.app.routes):
        # Starlette adds HEAD to every GET route; it answers like GET without a body
        assert "HEAD" not in methods or "GET" in methods, path
        for method in methods - {"HEAD"}:
            served.add((path, method.lower()))
            assert path in paths, f"{path} is not documented"
            op = paths[path].get(method.lower())
            assert op is not None, f"{method} {path} is not documented"
            assert op["summary"]
            assert any(status.startswith("2") for status in op["responses"]), (method, path)
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == set(_path_params(path)), (method, path)
    documented = {(path, method) for path, ops in paths.items() for method in ops}
    assert documented == served, "documented operations that the app does not serve"


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]


def test_secured_operations_document_401_and_403_and_only_probes_are_open() -> None:
    open_ops = set()
    for path, ops in openapi_document()["paths"].items():
        for method, op in ops.items():
            if "security" in op:
                assert op["security"] == [{"bearer": []}], (method, path)
                assert {"400", "401", "403"} <= set(op["responses"]), (method, path)
            else:
                open_ops.add((method, path))
    assert {path for _, path in open_ops} == {
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/ping",
        "/v2",
        "/v3",
        "/v3-protobuf",
        "/v1/tenants/{tenant}/v2",
        "/v1/tenants/{tenant}/v3",
        "/v1/tenants/{tenant}/v3-protobuf",
    }
    assert all(method == "get" or path == "/v1/ping" for method, path in open_ops)


def test_one_real_call_per_operation_matches_its_documented_schema(app: InProcess) -> None:
    """The `app` fixture validates every response; this makes sure each operation is called."""
    app.create("acme")
    token = app.token("acme")
    calls: list[tuple[str, str, Any, dict[str, str]]] = [
        ("POST", "/v1/tenants/acme/query", {"sql": "create table t(x, y)"}, bearer(token)),
        (
            "POST",
            "/v1/tenants/acme/query",
            {"sql": "insert into t values (?, ?)", "params": [1, None]},
            ADMIN,
        ),
        ("POST", "/v1/tenants/acme/query", {"sql": "select x, y, x'00', 1.5, 'a' from t"}, ADMIN),
        (
            "POST",
            "/v1/tenants/acme/batch",
            {"statements": [{"sql": "select 1"}, {"sql": "select null"}]},
            ADMIN,
        ),
        ("POST", "/v1/admin/tenants", {"id": "victim", "group": None}, ADMIN),
        ("GET", "/v1/admin/tenants?limit=1", None, ADMIN),
        ("GET", "/v1/admin/tenants/acme", None, ADMIN),
        ("POST", "/v1/admin/tenants/acme/tokens", {"access": "ro"}, ADMIN),
        ("POST", "/v1/admin/tenants/victim/tokens/revoke", None, ADMIN),
        ("DELETE", "/v1/admin/tenants/victim", None, ADMIN),
        ("GET", "/healthz", None, {}),
        ("GET", "/readyz", None, {}),
        ("GET", "/metrics", None, {}),
        ("GET", "/openapi.json", None, {}),
        ("GET", "/v1/ping", None, {}),
        ("POST", "/v1/ping", None, {}),
    ]
    called = set()
    for method, path, body, headers in calls:
        r = app.client.request(method, path, json=body, headers=headers)
        assert r.status_code < 300, (method, path, r.text)
        op = operation(method, r.request.url.path)
        assert op is not None
        called.add(id(op))
    # Hrana and backups have their own tests, which speak their protocols
    documented = {
        id(op)
        for ops in openapi_document()["paths"].values()
        for op in ops.values()
        if op["tags"][0] in ("tenant", "admin", "system")
    }
    assert called == documented


def test_every_tenant_state_is_documented() -> None:
    state = openapi_document()["components"]["schemas"]["TenantInfo"]["properties"]["state"]
    assert state["enum"] == ["creating", "active", "deleting", "corrupt", "missing", "restoring"]
    assert state["enum"] == [s.value for s in TenantState]


def test_the_value_schema_accepts_every_value_kind_and_nothing_else() -> None:
    good: list[Any] = [None, 0, -(2**63), 1.5, "text", {"base64": "AAE="}]
    for value in good:
        validate(value, schema_of("Value"))
    bad: list[Any] = [[1], {"base64": 1}, {"base64": "AA==", "x": 1}, True]
    for value in bad:
        with pytest.raises(jsonschema.ValidationError):
            validate(value, schema_of("Value"))


def _response(method: str, path: str, status: int, body: bytes) -> httpx.Response:
    request = httpx.Request(method, f"http://test{path}")
    return httpx.Response(status, content=body, headers={"content-type": "application/json"}, request=request)


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("POST", "/v1/tenants/a/query", 500, b'{"error": {"code": "internal", "message": "x"}}'),
        ("POST", "/v1/tenants/a/query", 400, b'{"error": {"code": "x", "message": "Traceback ..."}}'),
        ("POST", "/v1/tenants/a/query", 400, b'{"detail": "bad"}'),
        ("POST", "/v1/tenants/a/query", 409, b'{"error": {"code": "x", "message": "y"}}'),
        ("POST", "/v1/tenants/a/query", 200, b'{"columns": [], "rows": [[[1]]]}'),
        ("GET", "/v1/admin/tenants", 200, b'{"tenants": [{"id": "a"}], "next": null}'),
    ],
)
def test_the_contract_checker_catches_violations(method: str, path: str, status: int, body: bytes) -> None:
    """The checker the `app` fixture runs on every response can fail."""
    with pytest.raises((AssertionError, jsonschema.ValidationError)):
        check_response(_response(method, path, status, body))


def _schemas_in(schema: dict[str, Any], seen: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, node) of every schema inside `schema`, references followed once each."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        if name not in seen:
            seen.add(name)
            yield from _schemas_in(schema_of_component(name), seen)
        return
    yield "", schema
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from ((f"{key}{w}", s) for w, s in _schemas_in(schema[key], seen))
    for name, sub in schema.get("properties", {}).items():
        yield from ((f".{name}{w}", s) for w, s in _schemas_in(sub, seen))
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key, [])):
            yield from ((f"{key}[{i}]{w}", s) for w, s in _schemas_in(sub, seen))


def schema_of_component(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = openapi_document()["components"]["schemas"][name]
    return schema


def _bodies(op: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for media, content in op.get("requestBody", {}).get("content", {}).items():
        yield f"request {media}", content["schema"]
    for status, response in op["responses"].items():
        for media, content in response.get("content", {}).items():
            yield f"{status} {media}", content["schema"]


def test_no_operation_has_an_untyped_object_body() -> None:
    """Every object in a request or response body says what it holds (its properties, or what
    its values are), rather than a bare {"type": "object"}."""
    untyped = []
    for path, ops in openapi_document()["paths"].items():
        for method, op in ops.items():
            for body, schema in _bodies(op):
                for where, node in _schemas_in(schema, set()):
                    if node.get("type") != "object" or "properties" in node:
                        continue
                    # inside, a map says what its values are; a whole body names its fields
                    if where == "" or node.get("additionalProperties") in (None, {}, True):
                        untyped.append(f"{method.upper()} {path} {body}{where}")
    assert untyped == []


def test_operations_list_only_the_statuses_they_can_return() -> None:
    """413 (too large) and 408 (body too slow) need a request body; a group's GET routes have no
    conflict (409) to report, but a tenant's status can (its migration record disagrees)."""
    for path, ops in openapi_document()["paths"].items():
        for method, op in ops.items():
            statuses = set(op["responses"])
            if "requestBody" not in op:
                assert not {"408", "413"} & statuses, (method, path)
            if method == "get" and path.startswith("/v1/admin/groups") and "/tenants/" not in path:
                assert "409" not in statuses, (method, path)
