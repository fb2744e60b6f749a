"""TEMP tables, views and triggers belong to the request (or stream transaction) that made them.

A tenant's connection is shared by all its requests, streams and tokens: a TEMP trigger made in
one request changed what a later request by another client inserted, and a read-only token read
a TEMP table another client filled (found by a newcomer trying issue 12). They are dropped when
their request lets go of the connection, like the session pragmas."""

from __future__ import annotations

from typing import Any

import pytest

from tests.router.hrana.test_protocol import execute, pipe
from tests.support.app import InProcess


@pytest.fixture
def acme(app: InProcess) -> str:
    app.create("acme")
    app.query("acme", "CREATE TABLE main_t (x)")
    return app.token("acme")


def _rows(r: Any) -> Any:
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_a_temp_trigger_does_not_outlive_its_request(app: InProcess, acme: str) -> None:
    assert _rows(app.query("acme", "CREATE TEMP TABLE audit (x)")) == []
    sneaky = (
        "CREATE TEMP TRIGGER sneaky AFTER INSERT ON main_t BEGIN "
        "INSERT INTO main_t SELECT NULL WHERE new.x IS NOT NULL; INSERT INTO audit VALUES (new.x); END"
    )
    assert app.query("acme", sneaky).status_code in (200, 400)  # audit is gone already: either way
    body = pipe(
        app, acme, [execute("INSERT INTO main_t VALUES (42)"), execute("SELECT count(*) FROM main_t")]
    )
    results = body.json()["results"]
    assert results[1]["response"]["result"]["rows"][0][0]["value"] == "1"  # no hidden extra row
    ro = app.token("acme", "ro")
    r = app.client.post(
        "/v1/tenants/acme/query",
        json={"sql": "SELECT * FROM audit"},
        headers={"Authorization": f"Bearer {ro}"},
    )
    assert r.status_code == 400 and "no such table" in r.json()["error"]["message"]
    assert _rows(app.query("acme", "SELECT count(*) FROM temp.sqlite_schema")) == [[0]]


def test_temp_objects_work_within_their_batch_and_transaction(app: InProcess, acme: str) -> None:
    r = app.client.post(
        "/v1/tenants/acme/batch",
        json={
            "statements": [
                {"sql": "CREATE TEMP TABLE scratch (x)"},
                {"sql": "INSERT INTO scratch VALUES (1), (2)"},
                {"sql": "CREATE TEMP VIEW doubled AS SELECT x * 2 AS y FROM scratch"},
                {"sql": "INSERT INTO main_t SELECT y FROM doubled"},
            ]
        },
        headers={"Authorization": f"Bearer {acme}"},
    )
    assert r.status_code == 200, r.text
    assert _rows(app.query("acme", "SELECT x FROM main_t ORDER BY x")) == [[2], [4]]
    assert _rows(app.query("acme", "SELECT count(*) FROM temp.sqlite_schema")) == [[0]]
    # a stream's transaction keeps them across its requests, until it lets go
    body = pipe(app, acme, [execute("BEGIN"), execute("CREATE TEMP TABLE t2 (x)")]).json()
    baton = body["baton"]
    body = pipe(app, acme, [execute("INSERT INTO t2 VALUES (5)"), execute("SELECT x FROM t2")], baton).json()
    assert body["results"][1]["response"]["result"]["rows"][0][0]["value"] == "5"
    body = pipe(app, acme, [execute("COMMIT"), {"type": "close"}], body["baton"]).json()
    assert body["results"][0]["type"] == "ok", body
    assert _rows(app.query("acme", "SELECT count(*) FROM temp.sqlite_schema")) == [[0]]


def test_a_cached_create_temp_is_dropped_every_time(app: InProcess, acme: str) -> None:
    for _ in range(3):  # the same text each time: SQLite's statement cache must not skip the note
        assert _rows(app.query("acme", "CREATE TEMP TABLE again (x)")) == []
        assert _rows(app.query("acme", "SELECT count(*) FROM temp.sqlite_schema")) == [[0]]
