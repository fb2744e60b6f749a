"""The protocol over HTTP, request by request, including what a broken or hostile client sends:
every answer is the spec's (a result, or an Error with a code), never a 500."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from tests.support.app import ADMIN, InProcess, bearer, in_process


def pipe(
    app: InProcess, token: str, requests: list[Any], baton: object = None, path: str = "/v2/pipeline"
) -> httpx2.Response:
    r = app.client.post(path, json={"baton": baton, "requests": requests}, headers=bearer(token))
    assert r.status_code != 500, r.text
    return r


def execute(sql: str, *args: dict[str, Any]) -> dict[str, Any]:
    return {"type": "execute", "stmt": {"sql": sql, "args": list(args)}}


def error_of(result: dict[str, Any]) -> str:
    assert result["type"] == "error", result
    assert isinstance(result["error"]["message"], str) and result["error"]["message"]
    code: str = result["error"]["code"]
    return code


def http_error(r: httpx2.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"  # what the clients look for
    body = r.json()
    assert isinstance(body["message"], str) and body["message"], body
    code: str = body["code"]
    return code


@pytest.fixture
def acme(app: InProcess) -> str:
    app.create("acme")
    return app.token("acme")


def test_version_checks_answer_without_credentials(app: InProcess) -> None:
    for version in ("v2", "v3", "v3-protobuf"):  # hrana-client probes v3-protobuf first
        for path in (f"/{version}", f"/v1/tenants/acme/{version}"):
            assert app.client.get(path).status_code == 200, path


def test_pipeline_runs_every_request_and_returns_results_in_order(app: InProcess, acme: str) -> None:
    r = pipe(
        app,
        acme,
        [execute("SELECT 1"), execute("SELECT * FROM nowhere"), execute("SELECT 2"), {"type": "close"}],
    )
    body = r.json()
    assert r.status_code == 200 and body["baton"] is None and body["base_url"] is None
    one, failed, two, closed = body["results"]
    assert one["response"]["result"]["rows"] == [[{"type": "integer", "value": "1"}]]
    assert error_of(failed) == "SQLITE_ERROR"
    assert two["response"]["result"]["rows"] == [[{"type": "integer", "value": "2"}]]
    assert closed == {"type": "ok", "response": {"type": "close"}}


def test_statement_results_carry_columns_counts_and_rowid(app: InProcess, acme: str) -> None:
    pipe(app, acme, [execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")])
    results = pipe(
        app,
        acme,
        [
            execute("INSERT INTO t (name) VALUES (?), (?)", {"type": "text", "value": "a"}, {"type": "null"}),
            execute("SELECT id, name, id * 1.5 AS f FROM t ORDER BY id"),
        ],
    ).json()["results"]
    inserted = results[0]["response"]["result"]
    assert (inserted["affected_row_count"], inserted["last_insert_rowid"], inserted["rows_written"]) == (
        2,
        "2",
        2,
    )
    selected = results[1]["response"]["result"]
    assert selected["cols"] == [
        {"name": "id", "decltype": "INTEGER"},
        {"name": "name", "decltype": "TEXT"},
        {"name": "f", "decltype": None},
    ]
    assert selected["rows"][1] == [
        {"type": "integer", "value": "2"},
        {"type": "null"},
        {"type": "float", "value": 3.0},
    ]
    assert selected["rows_read"] == 2


def test_reused_baton_is_refused_and_the_stream_survives(app: InProcess, acme: str) -> None:
    first = pipe(app, acme, [{"type": "get_autocommit"}]).json()["baton"]
    second = pipe(app, acme, [{"type": "get_autocommit"}], first).json()["baton"]
    assert second != first
    assert http_error(pipe(app, acme, [], first), 400) == "BATON_REUSED"
    assert pipe(app, acme, [{"type": "close"}], second).json()["baton"] is None


@pytest.mark.parametrize("forge", ["flip", "garbage", "empty", "non-ascii"])
def test_forged_baton_is_refused(app: InProcess, acme: str, forge: str) -> None:
    baton = pipe(app, acme, []).json()["baton"]
    forged = {
        "flip": baton[:-2] + ("A" if baton[-2] != "A" else "B") + baton[-1],
        "garbage": "not a baton at all",
        "empty": "",
        "non-ascii": "bâton",
    }[forge]
    assert http_error(pipe(app, acme, [], forged), 400) == "BATON_INVALID"


def test_baton_must_be_a_string(app: InProcess, acme: str) -> None:
    assert http_error(pipe(app, acme, [], 12345), 400) == "PROTOCOL_ERROR"


def test_baton_of_one_tenant_is_refused_for_another(app: InProcess, acme: str) -> None:
    app.create("beta")
    beta = app.token("beta")
    baton = pipe(app, acme, [execute("BEGIN"), execute("CREATE TABLE secret (x)")]).json()["baton"]
    assert http_error(pipe(app, beta, [execute("SELECT * FROM secret")], baton), 400) == "BATON_INVALID"
    path = "/v1/tenants/beta/v2/pipeline"
    r = app.client.post(path, json={"baton": baton, "requests": []}, headers=ADMIN)
    assert http_error(r, 400) == "BATON_INVALID"
    # the owner's stream is untouched
    assert pipe(app, acme, [execute("ROLLBACK"), {"type": "close"}], baton).status_code == 200


def test_unknown_request_type_is_answered_in_its_slot(app: InProcess, acme: str) -> None:
    results = pipe(app, acme, [{"type": "open_sesame"}, {"nope": 1}, "text", execute("SELECT 1")]).json()[
        "results"
    ]
    assert [error_of(r) for r in results[:3]] == ["PROTOCOL_ERROR"] * 3
    assert results[3]["type"] == "ok"


@pytest.mark.parametrize(
    "value",
    [
        {"type": "integer", "value": "1.5"},
        {"type": "integer", "value": "9223372036854775808"},
        {"type": "integer", "value": " 1"},
        {"type": "integer"},
        {"type": "float", "value": "1.5"},
        {"type": "float", "value": True},
        {"type": "text", "value": 1},
        {"type": "blob", "base64": "not base64!"},
        {"type": "blob"},
        {"type": "bigint", "value": "1"},
        {"value": "1"},
        5,
        None,
    ],
)
def test_malformed_values_are_protocol_errors(app: InProcess, acme: str, value: Any) -> None:
    results = pipe(app, acme, [{"type": "execute", "stmt": {"sql": "SELECT ?", "args": [value]}}]).json()[
        "results"
    ]
    assert error_of(results[0]) == "PROTOCOL_ERROR"


@pytest.mark.parametrize(
    "request_",
    [
        {"type": "execute"},
        {"type": "execute", "stmt": {}},
        {"type": "execute", "stmt": {"sql": "SELECT 1", "sql_id": 1}},
        {"type": "execute", "stmt": {"sql": 1}},
        {"type": "execute", "stmt": {"sql": "SELECT 1", "args": {}}},
        {"type": "execute", "stmt": {"sql": "SELECT :a", "named_args": [{"value": {"type": "null"}}]}},
        {"type": "execute", "stmt": {"sql": "SELECT 1", "want_rows": "yes"}},
        {"type": "batch"},
        {"type": "batch", "batch": {}},
        {
            "type": "batch",
            "batch": {"steps": [{"stmt": {"sql": "SELECT 1"}, "condition": {"type": "ok", "step": 0}}]},
        },
        {
            "type": "batch",
            "batch": {"steps": [{"stmt": {"sql": "SELECT 1"}, "condition": {"type": "maybe"}}]},
        },
        {"type": "sequence"},
        {"type": "describe", "sql_id": "1"},
        {"type": "store_sql", "sql": "SELECT 1"},
        {"type": "store_sql", "sql_id": 1 << 40, "sql": "SELECT 1"},
        {"type": "close_sql"},
    ],
)
def test_missing_or_mistyped_fields_are_protocol_errors(app: InProcess, acme: str, request_: Any) -> None:
    results = pipe(app, acme, [request_]).json()["results"]
    assert error_of(results[0]) == "PROTOCOL_ERROR"


@pytest.mark.parametrize(
    "body", [b"{", b"[]", b'{"baton": null}', b'{"baton": null, "requests": {}}', b'{"requests": [NaN]}']
)
def test_malformed_bodies_fail_the_http_request(app: InProcess, acme: str, body: bytes) -> None:
    r = app.client.post("/v2/pipeline", content=body, headers=bearer(acme))
    assert http_error(r, 400) in ("BAD_REQUEST", "PROTOCOL_ERROR")


def test_deeply_nested_conditions_are_refused(app: InProcess, acme: str) -> None:
    cond: dict[str, Any] = {"type": "is_autocommit"}
    for _ in range(200):
        cond = {"type": "not", "cond": cond}
    steps = [{"stmt": {"sql": "SELECT 1"}}, {"stmt": {"sql": "SELECT 2"}, "condition": cond}]
    results = pipe(app, acme, [{"type": "batch", "batch": {"steps": steps}}]).json()["results"]
    assert error_of(results[0]) == "PROTOCOL_ERROR"


def test_batch_conditions(app: InProcess, acme: str) -> None:
    def step(sql: str, cond: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"stmt": {"sql": sql}, "condition": cond}

    ok = {"type": "ok", "step": 0}
    failed = {"type": "error", "step": 1}
    steps = [
        step("SELECT 0"),
        step("SELECT * FROM nowhere", ok),
        step("SELECT 2", failed),
        step("SELECT 3", {"type": "not", "cond": failed}),
        step("SELECT 4", {"type": "and", "conds": [ok, failed, {"type": "is_autocommit"}]}),
        step("SELECT 5", {"type": "or", "conds": [{"type": "not", "cond": ok}, {"type": "ok", "step": 3}]}),
        step("SELECT 6", {"type": "and", "conds": []}),
        step("SELECT 7", {"type": "or", "conds": []}),
        step("BEGIN"),
        step("SELECT 9", {"type": "is_autocommit"}),
        step("ROLLBACK"),
    ]
    result = pipe(app, acme, [{"type": "batch", "batch": {"steps": steps}}]).json()["results"][0]["response"][
        "result"
    ]
    ran = [i for i, r in enumerate(result["step_results"]) if r is not None]
    errored = [i for i, e in enumerate(result["step_errors"]) if e is not None]
    assert ran == [0, 2, 4, 6, 8, 10]
    assert errored == [1]
    assert result["step_errors"][1]["code"] == "SQLITE_ERROR"


def test_stored_sql_is_scoped_to_its_stream(app: InProcess, acme: str) -> None:
    r = pipe(
        app,
        acme,
        [
            {"type": "store_sql", "sql_id": 7, "sql": "SELECT 'stored'"},
            {"type": "execute", "stmt": {"sql_id": 7}},
            {"type": "store_sql", "sql_id": 7, "sql": "SELECT 'again'"},
            {"type": "describe", "sql_id": 7},
        ],
    ).json()
    stored, executed, again, described = r["results"]
    assert stored["type"] == "ok"
    assert executed["response"]["result"]["rows"] == [[{"type": "text", "value": "stored"}]]
    assert error_of(again) == "SQL_EXISTS"
    assert described["response"]["result"]["is_readonly"] is True
    rest = pipe(
        app,
        acme,
        [{"type": "close_sql", "sql_id": 7}, {"type": "execute", "stmt": {"sql_id": 7}}],
        r["baton"],
    )
    assert rest.json()["results"][0]["type"] == "ok"
    assert error_of(rest.json()["results"][1]) == "SQL_NOT_FOUND"
    other = pipe(app, acme, [{"type": "execute", "stmt": {"sql_id": 7}}]).json()["results"][0]
    assert error_of(other) == "SQL_NOT_FOUND"


def test_describe_reports_params_columns_and_kind(app: InProcess, acme: str) -> None:
    pipe(app, acme, [execute("CREATE TABLE d (a INTEGER, b TEXT)")])
    requests = [
        {
            "type": "describe",
            "sql": "SELECT a, b AS bee, 1 FROM d WHERE a = :x AND b = ? OR a = ?5 OR b = @y",
        },
        {"type": "describe", "sql": "EXPLAIN SELECT 1"},
        {"type": "describe", "sql": "INSERT INTO d VALUES (1, 'x')"},
        {"type": "describe", "sql": "SELECT * FROM nowhere"},
    ]
    select, explain, insert, missing = pipe(app, acme, requests).json()["results"]
    result = select["response"]["result"]
    assert [p["name"] for p in result["params"]] == [":x", None, None, None, "?5", "@y"]
    assert result["cols"] == [
        {"name": "a", "decltype": "INTEGER"},
        {"name": "bee", "decltype": "TEXT"},
        {"name": "1", "decltype": None},
    ]
    assert (result["is_explain"], result["is_readonly"]) == (False, True)
    assert explain["response"]["result"]["is_explain"] is True
    assert insert["response"]["result"]["is_readonly"] is False
    assert pipe(app, acme, [execute("SELECT count(*) FROM d")]).json()["results"][0]["response"]["result"][
        "rows"
    ] == [[{"type": "integer", "value": "0"}]]
    assert error_of(missing) == "SQLITE_ERROR"


def test_statement_count_is_checked(app: InProcess, acme: str) -> None:
    many, empty, comment_only, trailing = pipe(
        app,
        acme,
        [execute("SELECT 1; SELECT 2"), execute(""), execute("-- nothing;"), execute("SELECT 1; -- done")],
    ).json()["results"]
    assert error_of(many) == "SQL_MANY_STATEMENTS"
    assert error_of(empty) == error_of(comment_only) == "SQL_NO_STATEMENT"
    assert trailing["type"] == "ok"


def test_args_both_positional_and_named_are_refused(app: InProcess, acme: str) -> None:
    stmt = {
        "sql": "SELECT ?, :a",
        "args": [{"type": "null"}],
        "named_args": [{"name": "a", "value": {"type": "null"}}],
    }
    results = pipe(app, acme, [{"type": "execute", "stmt": stmt}, execute("SELECT ?, ?", {"type": "null"})])
    too_many, too_few = results.json()["results"]
    assert error_of(too_many) == "ARGS_BOTH_POSITIONAL_AND_NAMED"
    assert error_of(too_few) == "ARGS_INVALID"


def test_sequence_runs_statements_until_the_first_error(app: InProcess, acme: str) -> None:
    script = (
        "CREATE TABLE s (x); INSERT INTO s VALUES ('a;b');"
        " INSERT INTO nowhere VALUES (1); INSERT INTO s VALUES (2)"
    )
    results = pipe(
        app, acme, [{"type": "sequence", "sql": script}, execute("SELECT count(*) FROM s")]
    ).json()["results"]
    assert error_of(results[0]) == "SQLITE_ERROR"
    assert results[1]["response"]["result"]["rows"] == [[{"type": "integer", "value": "1"}]]


def test_requests_after_close_are_errors(app: InProcess, acme: str) -> None:
    body = pipe(app, acme, [{"type": "close"}, execute("SELECT 1")]).json()
    assert body["baton"] is None
    assert error_of(body["results"][1]) == "STREAM_CLOSED"


def test_sandbox_holds_on_streams(app: InProcess, acme: str) -> None:
    results = pipe(
        app,
        acme,
        [
            execute("ATTACH 'x.db' AS x"),
            execute("PRAGMA journal_mode=DELETE"),
            execute("VACUUM INTO 'copy.db'"),
        ],
    ).json()["results"]
    assert [error_of(r) for r in results] == ["SQLITE_AUTH"] * 3


def test_cursor_streams_entries_as_json_lines(app: InProcess, acme: str) -> None:
    steps = [
        {"stmt": {"sql": "SELECT 1 AS one UNION ALL SELECT 2"}},
        {"stmt": {"sql": "SELECT * FROM nowhere"}},
        {"stmt": {"sql": "SELECT 3"}, "condition": {"type": "ok", "step": 1}},
    ]
    r = app.client.post("/v3/cursor", json={"baton": None, "batch": {"steps": steps}}, headers=bearer(acme))
    assert r.status_code == 200, r.text
    head, *entries = [json.loads(line) for line in r.text.splitlines()]
    assert set(head) == {"baton", "base_url"} and head["baton"]
    assert [e["type"] for e in entries] == ["step_begin", "row", "row", "step_end", "step_error"]
    assert entries[0] == {"type": "step_begin", "step": 0, "cols": [{"name": "one", "decltype": None}]}
    assert entries[2]["row"] == [{"type": "integer", "value": "2"}]
    assert entries[4]["step"] == 1 and entries[4]["error"]["code"] == "SQLITE_ERROR"
    assert pipe(app, acme, [{"type": "close"}], head["baton"], "/v3/pipeline").json()["baton"] is None


def test_legacy_v1_execute_and_batch(app: InProcess, acme: str) -> None:
    post = app.client.post
    r = post(
        "/v1/execute",
        json={"stmt": {"sql": "SELECT ? + 1", "args": [{"type": "integer", "value": "41"}]}},
        headers=bearer(acme),
    )
    assert r.json()["result"]["rows"] == [[{"type": "integer", "value": "42"}]]
    failed = post("/v1/tenants/acme/v1/execute", json={"stmt": {"sql": "SELEC 1"}}, headers=ADMIN)
    assert http_error(failed, 400) == "SQLITE_ERROR"
    steps = [{"stmt": {"sql": "BEGIN"}}, {"stmt": {"sql": "CREATE TABLE v1 (x)"}}]  # left open: rolled back
    assert post("/v1/batch", json={"batch": {"steps": steps}}, headers=bearer(acme)).status_code == 200
    r = post(
        "/v1/execute",
        json={"stmt": {"sql": "SELECT count(*) FROM sqlite_schema WHERE name = 'v1'"}},
        headers=bearer(acme),
    )
    assert r.json()["result"]["rows"] == [[{"type": "integer", "value": "0"}]]


def test_who_may_call_the_root_and_path_forms(app: InProcess, acme: str) -> None:
    app.create("beta")
    ping = {"baton": None, "requests": [{"type": "close"}]}
    assert http_error(app.client.post("/v2/pipeline", json=ping), 401) == "UNAUTHORIZED"
    assert http_error(app.client.post("/v2/pipeline", json=ping, headers=ADMIN), 400) == "TENANT_REQUIRED"
    assert app.client.post("/v1/tenants/beta/v2/pipeline", json=ping, headers=ADMIN).status_code == 200
    assert (
        http_error(app.client.post("/v1/tenants/beta/v2/pipeline", json=ping, headers=bearer(acme)), 403)
        == "FORBIDDEN"
    )
    assert (
        http_error(app.client.post("/v1/tenants/Bad!/v2/pipeline", json=ping, headers=ADMIN), 400)
        == "INVALID_TENANT_ID"
    )
    assert (
        http_error(app.client.post("/v1/tenants/ghost/v2/pipeline", json=ping, headers=ADMIN), 404)
        == "TENANT_NOT_FOUND"
    )


def test_host_subdomain_form(tmp_path: Any) -> None:
    with in_process(tmp_path / "data", base_domain="db.example.com") as app:
        app.create("acme")
        app.create("beta")
        ping = {"baton": None, "requests": [execute("SELECT 1")]}
        host = {"Host": "acme.db.example.com:8080"}
        r = app.client.post("/v2/pipeline", json=ping, headers={**ADMIN, **host})
        assert r.status_code == 200 and r.json()["results"][0]["type"] == "ok", r.text
        r = app.client.post("/v2/pipeline", json=ping, headers={**bearer(app.token("beta")), **host})
        assert http_error(r, 403) == "FORBIDDEN"
        other = {"Host": "x.y.db.example.com"}  # not a direct subdomain: the token decides
        r = app.client.post("/v2/pipeline", json=ping, headers={**bearer(app.token("beta")), **other})
        assert r.status_code == 200


def test_oversized_body_is_413(tmp_path: Any) -> None:
    with in_process(tmp_path / "data", max_body_bytes=1000) as app:
        app.create("acme")
        big = [execute("SELECT '" + "x" * 2000 + "'")]
        r = app.client.post(
            "/v2/pipeline", json={"baton": None, "requests": big}, headers=bearer(app.token("acme"))
        )
        assert http_error(r, 413) == "REQUEST_TOO_LARGE"
