"""Connection pragmas a client sets (`PRAGMA foreign_keys=off`, ...) are its own: a Hrana stream
keeps what it set across its requests, and no other request or stream of the tenant sees it,
whether it ran over a stream or the REST API (issue 12, item 3)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.router.hrana.test_protocol import execute, pipe
from tests.support.app import InProcess


@pytest.fixture
def acme(app: InProcess) -> str:
    app.create("acme")
    app.query("acme", "CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    app.query("acme", "CREATE TABLE child (p REFERENCES parent(id))")
    return app.token("acme")


def _value(result: dict[str, Any]) -> Any:
    assert result["type"] == "ok", result
    return result["response"]["result"]["rows"][0][0]["value"]


def _foreign_keys(app: InProcess, token: str, baton: str | None = None) -> tuple[str, str | None]:
    body = pipe(app, token, [execute("PRAGMA foreign_keys")], baton).json()
    return _value(body["results"][0]), body["baton"]


def test_a_stream_keeps_its_pragma_and_nobody_else_sees_it(app: InProcess, acme: str) -> None:
    body = pipe(app, acme, [execute("PRAGMA foreign_keys=off")]).json()
    assert body["results"][0]["type"] == "ok", body
    mine = body["baton"]
    assert app.query("acme", "PRAGMA foreign_keys").json()["rows"] == [[1]]  # a REST request
    other, other_baton = _foreign_keys(app, acme)  # another stream
    assert other == "1"
    seen, mine = _foreign_keys(app, acme, mine)  # its own next request
    assert seen == "0"
    # with foreign keys off, the stream may leave a dangling reference
    body = pipe(app, acme, [execute("INSERT INTO child VALUES (42)"), {"type": "close"}], mine).json()
    assert body["results"][0]["type"] == "ok", body
    body = pipe(app, acme, [execute("INSERT INTO child VALUES (43)"), {"type": "close"}], other_baton).json()
    assert body["results"][0]["error"]["code"] == "SQLITE_CONSTRAINT"
    assert _foreign_keys(app, acme)[0] == "1"  # closed streams leave nothing behind


def test_a_pragma_set_in_one_pipeline_with_a_transaction_ends_with_the_stream(
    app: InProcess, acme: str
) -> None:
    body = pipe(
        app,
        acme,
        [
            execute("PRAGMA foreign_keys=off"),
            execute("BEGIN"),
            execute("INSERT INTO child VALUES (7)"),
            execute("COMMIT"),
            execute("PRAGMA foreign_keys"),
            {"type": "close"},
        ],
    ).json()
    assert [r["type"] for r in body["results"]] == ["ok"] * 6, body
    assert _value(body["results"][4]) == "0"
    r = app.query("acme", "INSERT INTO child VALUES (8)")
    assert r.status_code == 400 and "FOREIGN KEY" in r.text


def test_a_rest_request_pragma_ends_with_the_request(app: InProcess, acme: str) -> None:
    assert app.query("acme", "PRAGMA foreign_keys=off").status_code == 200
    assert app.query("acme", "PRAGMA recursive_triggers=1").status_code == 200
    assert app.query("acme", "PRAGMA foreign_keys").json()["rows"] == [[1]]
    assert app.query("acme", "PRAGMA recursive_triggers").json()["rows"] == [[0]]
    assert _foreign_keys(app, acme)[0] == "1"
