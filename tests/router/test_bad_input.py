"""Bad input of every kind is a 4xx in the one error shape, never a 500 (the `app` fixture
checks every response against the contract, see tests/support/http_contract.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import ADMIN, InProcess, in_process
from tests.support.http_contract import assert_error_shape, checking

QUERY = "/v1/tenants/acme/query"
BATCH = "/v1/tenants/acme/batch"


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    """One app for the whole module: these requests are refused and change nothing (the tests
    that change something use their own tenant or the fresh `app`)."""
    with in_process(tmp_path_factory.mktemp("bad-input") / "data") as app:
        checking(app.client)
        app.create("acme")
        app.query("acme", "create table t(x)")
        yield app


def _raw(app: InProcess, path: str, body: bytes | str, method: str = "POST") -> Any:
    headers = {**ADMIN, "content-type": "application/json"}
    return app.client.request(method, path, content=body, headers=headers)


def _status_code(response: Any) -> tuple[int, str]:
    assert_error_shape(response)
    return response.status_code, response.json()["error"]["code"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"{'sql': 'select 1'}",
        b'{"sql": "select 1",}',
        b"\xff\xfe\x00garbage",
        b'{"sql": "select ?", "params": [NaN]}',
        b'{"sql": "select ?", "params": [Infinity]}',
        b'{"sql": "select ?", "params": [' + b"9" * 5000 + b"]}",
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser's recursion limit
        b'{"sql": "select ?", "params": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    ],
    ids=lambda b: repr(b[:30]),
)
def test_malformed_json_is_400(acme: InProcess, body: bytes) -> None:
    for path in (QUERY, BATCH, "/v1/admin/tenants", "/v1/admin/tenants/acme/tokens"):
        assert _status_code(_raw(acme, path, body)) == (400, "bad_request"), path


@pytest.mark.parametrize("body", ["[]", '"select 1"', "null", "42", "true", '[{"sql": "select 1"}]'])
def test_json_that_is_not_an_object_is_400(acme: InProcess, body: str) -> None:
    for path in (QUERY, BATCH, "/v1/admin/tenants", "/v1/admin/tenants/acme/tokens"):
        r = _raw(acme, path, body)
        assert _status_code(r) == (400, "bad_request"), path
        assert "object" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "statement",
    [
        {},
        {"params": []},
        {"sql": None},
        {"sql": 1},
        {"sql": ["select 1"]},
        {"sql": {"text": "select 1"}},
        {"sql": "select ?", "params": "1"},
        {"sql": "select ?", "params": 1},
        {"sql": "select ?", "params": True},
        {"sql": "select ?", "params": [[1]]},
        {"sql": "select ?", "params": [{"a": 1}]},
        {"sql": "select ?", "params": [{"base64": "AA==", "more": 1}]},
        {"sql": "select ?", "params": [{"base64": 5}]},
        {"sql": "select ?", "params": [{"base64": "not base64!"}]},
        {"sql": "select ?", "params": [{"base64": "AAE"}]},
        {"sql": "select ?", "params": [{"base64": "éé=="}]},
        {"sql": "select ?", "params": [2**63]},
        {"sql": "select ?", "params": [-(2**63) - 1]},
        {"sql": "select ?", "params": [10**30]},
        {"sql": "select :a", "params": {"a": [1]}},
        {"sql": "select :a", "params": {"b": 1}},
        {"sql": "select ?", "params": {"a": 1}},
        {"sql": "select ?, ?", "params": [1]},
        {"sql": "select ?", "params": [1, 2]},
        {"sql": "select ?", "params": ["\ud800"]},
        {"sql": "select '\udfff'"},
        {"sql": "select 1\x00; drop table t"},
        {"sql": "select 1", "param": []},
        {"sql": "select 1", "params": [], "extra": True},
        {"sql": ""},
        {"sql": "   \n\t "},
        {"sql": ";;"},
        {"sql": "-- only a comment"},
        {"sql": "/* only a comment */"},
        {"sql": "select 1; select 2"},
        {"sql": "select 1; drop table t"},
        {"sql": "insert into t values (1); insert into t values (2)"},
        {"sql": "select 1;\n-- trailing comment\nselect 2"},
        {"sql": "BEGIN"},
        {"sql": "commit"},
        {"sql": "savepoint s"},
        {"sql": "selec 1"},
        {"sql": "select * from no_such_table"},
        {"sql": "insert into t values (1, 2)"},
    ],
    ids=repr,
)
def test_bad_statements_are_400_in_query_and_in_batch(acme: InProcess, statement: dict[str, Any]) -> None:
    # json.dumps escapes lone surrogates as \\udxxx, which JSON allows and clients do send
    r = _raw(acme, QUERY, json.dumps(statement))
    assert r.status_code == 400, r.text
    assert_error_shape(r)
    batch = {"statements": [{"sql": "insert into t values (99)"}, statement]}
    r = _raw(acme, BATCH, json.dumps(batch))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["index"] == 1
    assert acme.query("acme", "select count(*) from t").json()["rows"] == [[0]]  # nothing ran


@pytest.mark.parametrize("sql", ["BEGIN", "commit", "SAVEPOINT s", "release s", "select 1; select 2"])
def test_a_refused_statement_is_told_what_to_do_where_it_was_sent(acme: InProcess, sql: str) -> None:
    """/query points to /batch; /batch, already one transaction, never points to itself."""
    query = _raw(acme, QUERY, json.dumps({"sql": sql})).json()["error"]["message"]
    batch = _raw(acme, BATCH, json.dumps({"statements": [{"sql": sql}]})).json()["error"]["message"]
    assert "/batch" in query, query
    assert "/batch" not in batch, batch
    if sql == "select 1; select 2":
        assert (
            batch
            == "statement 0: exactly one statement per entry of a batch: give each statement its own entry"
        )
    else:
        assert "already run in one transaction" in batch and "Hrana" in query, (batch, query)
        keyword = sql.split()[0].upper()  # named, whichever statement of the kind it was
        assert f"{keyword} is not allowed" in batch and f"{keyword} is not allowed" in query


def test_a_statement_between_comments_and_semicolons_is_still_one(acme: InProcess) -> None:
    for sql in ("select 1;", "  select 1 ;; ", "/* a */ select 1 -- b", "select 1;\n-- done\n"):
        r = acme.query("acme", sql)
        assert r.status_code == 200, (sql, r.text)
        assert r.json()["rows"] == [[1]]


def test_stored_text_that_is_not_utf8_is_a_400_not_a_crash(acme: InProcess) -> None:
    acme.query("acme", "create table latin(x)")
    acme.query("acme", "insert into latin values (cast(x'ff80' as text))")
    r = acme.query("acme", "select x from latin")
    assert _status_code(r) == (400, "sql_error")
    assert "CAST" in r.json()["error"]["message"]
    r = acme.query("acme", "select cast(x as blob) from latin")
    assert r.json()["rows"] == [[{"base64": "/4A="}]]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"statements": None},
        {"statements": []},
        {"statements": "select 1"},
        {"statements": {"sql": "select 1"}},
        {"statements": ["select 1"]},
        {"statements": [None]},
        {"statements": [{"sql": "select 1"}], "atomic": False},
        {"sql": "select 1"},
    ],
    ids=repr,
)
def test_bad_batches_are_400(acme: InProcess, body: dict[str, Any]) -> None:
    assert _status_code(acme.client.post(BATCH, json=body, headers=ADMIN)) == (400, "bad_request")


def test_a_batch_beyond_the_statement_limit_is_400(acme: InProcess) -> None:
    limit = acme.server.settings.max_batch_statements
    body = {"statements": [{"sql": "select 1"}] * (limit + 1)}
    assert _status_code(acme.client.post(BATCH, json=body, headers=ADMIN)) == (400, "bad_request")
    body = {"statements": [{"sql": "select 1"}] * limit}
    assert acme.client.post(BATCH, json=body, headers=ADMIN).status_code == 200


def test_values_round_trip_with_blobs_as_base64(acme: InProcess) -> None:
    params = [None, 0, -(2**63), 2**63 - 1, 1.5, "héllo ✓", {"base64": ""}, {"base64": "AAH/"}, True]
    r = acme.query("acme", "select ?, ?, ?, ?, ?, ?, ?, ?, ?", params)
    assert r.json()["rows"] == [
        [None, 0, -(2**63), 2**63 - 1, 1.5, "héllo ✓", {"base64": ""}, {"base64": "AAH/"}, 1]
    ]
    r = acme.query("acme", "select :a, @b, $c", {"a": 1, "@b": "two", "$c": {"base64": "Aw=="}})
    assert r.json()["rows"] == [[1, "two", {"base64": "Aw=="}]]
    assert acme.query("acme", "select 1e999, -1e999").json()["rows"] == [["Infinity", "-Infinity"]]


# --- tenant ids ---------------------------------------------------------------------------------

BAD_IDS_IN_PATHS = [
    "%2E%2E",  # '..'
    "%2E%2E%2Fx",  # '../x', percent-encoded
    "a%2Fb",  # 'a/b', percent-encoded
    "a%252Fb",  # double-encoded: the id 'a%2Fb'
    "x" * 64,
    "%C3%A9t%C3%A9",  # 'été'
    "ACME",
    "-acme",
    "_acme",
    "a.b",
    "a%20b",
    "a%00b",
    "acme%0A",
]


@pytest.mark.parametrize("tenant", BAD_IDS_IN_PATHS)
def test_invalid_tenant_ids_in_paths_are_4xx_before_any_file_is_touched(acme: InProcess, tenant: str) -> None:
    tenants_dir = acme.server.settings.data_dir / "tenants"
    before = sorted(p.name for p in tenants_dir.rglob("*"))
    requests = [
        ("POST", f"/v1/tenants/{tenant}/query", {"sql": "select 1"}),
        ("POST", f"/v1/tenants/{tenant}/batch", {"statements": [{"sql": "select 1"}]}),
        ("GET", f"/v1/admin/tenants/{tenant}", None),
        ("DELETE", f"/v1/admin/tenants/{tenant}", None),
        ("POST", f"/v1/admin/tenants/{tenant}/tokens", {}),
    ]
    for method, path, body in requests:
        r = acme.client.request(method, path, json=body, headers=ADMIN)
        status, code = _status_code(r)
        # a decoded '/' makes it another (unknown) route; anything else is an invalid id
        assert (status, code) in ((400, "invalid_tenant_id"), (404, "not_found")), (path, r.text)
    assert sorted(p.name for p in tenants_dir.rglob("*")) == before


@pytest.mark.parametrize("path", ["/v1/tenants//query", "/v1/admin/tenants//tokens", "/v1/tenants/query"])
def test_empty_tenant_ids_in_paths_are_404(acme: InProcess, path: str) -> None:
    assert _status_code(acme.client.post(path, json={"sql": "select 1"}, headers=ADMIN)) == (404, "not_found")


@pytest.mark.parametrize(
    "tenant",
    ["../x", "a/b", "x" * 64, "été", "", " acme", "acme ", "ACME", "-a", None, 5, ["a"], {"id": "a"}],
)
def test_invalid_tenant_ids_in_bodies_are_400(acme: InProcess, tenant: Any) -> None:
    r = acme.client.post("/v1/admin/tenants", json={"id": tenant}, headers=ADMIN)
    assert _status_code(r) == (400, "invalid_tenant_id")


def test_tenant_id_bounds(acme: InProcess) -> None:
    for tenant in ("a", "0", "x" * 63, "a-b_c-9"):
        acme.create(tenant)
    r = acme.client.post("/v1/admin/tenants", json={"id": "acme"}, headers=ADMIN)
    assert _status_code(r) == (409, "tenant_exists")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"group": None},
        {"id": "ok", "extra": 1},
        {"id": "ok", "group": 5},
        {"id": "ok", "group": "Bad Group"},
        {"id": "ok", "group": ""},
        {"id": "ok", "group": "x" * 64},
    ],
    ids=repr,
)
def test_bad_create_bodies_are_400(acme: InProcess, body: dict[str, Any]) -> None:
    r = acme.client.post("/v1/admin/tenants", json=body, headers=ADMIN)
    assert r.status_code == 400, r.text
    assert acme.client.get("/v1/admin/tenants/ok", headers=ADMIN).status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=5000",
        "limit=1001",
        "limit=x",
        "limit=-1",
        "limit=1.5",
        "limit=",
        "limit=%C2%B2",  # '²', a str.isdigit() "digit"
        "limit=%D9%A1",  # Arabic-Indic one
        "limit=99999999999999999999999",
        "prefix=ACME",
        "prefix=a/b",
        "prefix=%C3%A9",
        "prefix=" + "x" * 64,
        "after=..%2Fx",
        "after=ACME",
    ],
)
def test_bad_list_params_are_400(acme: InProcess, query: str) -> None:
    r = acme.client.get(f"/v1/admin/tenants?{query}", headers=ADMIN)
    assert _status_code(r) == (400, "bad_request") or r.json()["error"]["code"] == "invalid_tenant_id"
    assert r.status_code == 400


def test_list_pages_with_prefix_and_cursor(app: InProcess) -> None:
    acme = app
    acme.create("acme")
    for i in range(5):
        acme.create(f"page-{i}")
    seen: list[str] = []
    after = ""
    for _ in range(10):  # bounded: 5 tenants in pages of 2
        r = acme.client.get(f"/v1/admin/tenants?prefix=page-&limit=2&after={after}", headers=ADMIN)
        body = r.json()
        seen += [t["id"] for t in body["tenants"]]
        if body["next"] is None:
            break
        after = body["next"]
    assert seen == [f"page-{i}" for i in range(5)]
    r = acme.client.get("/v1/admin/tenants?limit=1000", headers=ADMIN)
    assert r.status_code == 200 and len(r.json()["tenants"]) == 6


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        ({}, True),
        ({"access": "ro"}, True),
        ({"access": "rw", "expires_in": 1}, True),
        ({"expires_in": 365 * 86400}, True),
        ({"expires_in": 0}, False),
        ({"expires_in": -5}, False),
        ({"expires_in": 365 * 86400 + 1}, False),
        ({"expires_in": 10**30}, False),
        ({"expires_in": 1.5}, False),
        ({"expires_in": "3600"}, False),
        ({"expires_in": True}, False),
        ({"expires_in": None}, False),
        ({"access": "admin"}, False),
        ({"access": "RW"}, False),
        ({"access": ""}, False),
        ({"access": None}, False),
        ({"access": ["ro"]}, False),
        ({"access": "ro", "sub": "other"}, False),
    ],
    ids=repr,
)
def test_token_mint_bounds(acme: InProcess, body: dict[str, Any], ok: bool) -> None:
    r = acme.client.post("/v1/admin/tenants/acme/tokens", json=body, headers=ADMIN)
    assert r.status_code == (200 if ok else 400), r.text


def test_tokens_for_missing_tenants_are_404(acme: InProcess) -> None:
    r = acme.client.post("/v1/admin/tenants/nobody/tokens", json={}, headers=ADMIN)
    assert _status_code(r) == (404, "tenant_not_found")
    for method in ("GET", "DELETE"):
        r = acme.client.request(method, "/v1/admin/tenants/nobody", headers=ADMIN)
        assert _status_code(r) == (404, "tenant_not_found")
    assert _status_code(acme.query("nobody", "select 1")) == (404, "tenant_not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/v1"),
        ("POST", "/v1/tenants/acme/execute"),
        ("POST", "/v1/tenants/acme/query/extra"),
        ("GET", "/v1/admin/tenants/acme/tokens/1"),
        ("GET", "/v1/admin/groups/none"),
        ("GET", "/nope.json"),
    ],
)
def test_unknown_routes_are_404(acme: InProcess, method: str, path: str) -> None:
    assert _status_code(acme.client.request(method, path, headers=ADMIN)) == (404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/v1/tenants/acme/query", {"POST"}),
        ("PUT", "/v1/tenants/acme/batch", {"POST"}),
        ("DELETE", "/v1/tenants/acme/query", {"POST"}),
        ("PUT", "/v1/admin/tenants", {"GET", "HEAD", "POST"}),
        ("PATCH", "/v1/admin/tenants/acme", {"GET", "HEAD", "DELETE"}),
        ("GET", "/v1/admin/tenants/acme/tokens", {"POST"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("DELETE", "/metrics", {"GET", "HEAD"}),
        ("OPTIONS", "/v1/tenants/acme/query", {"POST"}),
    ],
)
def test_wrong_methods_are_405_with_allow(acme: InProcess, method: str, path: str, allowed: set[str]) -> None:
    r = acme.client.request(method, path, headers=ADMIN)
    assert _status_code(r) == (405, "method_not_allowed")
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed


def test_oversized_bodies_are_413_with_or_without_content_length(tmp_path: Path) -> None:
    with in_process(tmp_path / "data", max_body_bytes=1000) as app:
        checking(app.client)
        app.create("acme")
        big = {"sql": "select '" + "x" * 2000 + "'"}
        for path in (QUERY, BATCH, "/v1/admin/tenants", "/v1/admin/tenants/acme/tokens"):
            r = app.client.post(path, json=big, headers=ADMIN)
            assert _status_code(r) == (413, "too_large"), path

        def chunks() -> Any:
            for _ in range(30):
                yield b" " * 100

        r = app.client.post(QUERY, content=chunks(), headers=ADMIN)
        assert _status_code(r) == (413, "too_large")
        assert app.query("acme", "select 1").status_code == 200  # just under: fine


def test_concurrent_deletes_of_one_tenant_answer_one_204(app: InProcess) -> None:
    # one server, no cluster: the losers are told the tenant is gone, never a second 204
    for round_ in range(5):
        tenant = f"gone-{round_}"
        app.create(tenant)
        barrier = threading.Barrier(3)

        def delete(tenant: str = tenant, barrier: threading.Barrier = barrier) -> tuple[int, str | None]:
            barrier.wait(10)
            response = app.client.delete(f"/v1/admin/tenants/{tenant}", headers=ADMIN)
            return response.status_code, None if response.status_code == 204 else _status_code(response)[1]

        with ThreadPoolExecutor(3) as pool:
            answers = sorted(f.result(timeout=30) for f in [pool.submit(delete) for _ in range(3)])
        assert answers == [(204, None), (404, "tenant_not_found"), (404, "tenant_not_found")], answers
