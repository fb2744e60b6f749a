"""libSQL's BEGIN READONLY, and SQL text checked for length before anything parses it.
Splitting SQL into statements is tested with the lexer (tests/tenants/test_sqllex.py)."""

from __future__ import annotations

import pytest

from router.hrana.sqltext import is_begin_readonly
from tests.support.app import InProcess, bearer


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("BEGIN TRANSACTION READONLY", True),
        ("  begin readonly;", True),
        (";; BEGIN /* a */ READONLY -- b", True),
        ("BEGIN READONLY; SELECT 1", False),
        ("BEGIN READONLY x", False),
        ("BEGIN ; READONLY", False),
        ("BEGIN\xa0READONLY", False),  # not whitespace to SQLite
        ("BEGIN IMMEDIATE", False),
        ("SELECT 'BEGIN READONLY'", False),
        ("", False),
    ],
)
def test_begin_readonly(sql: str, expected: bool) -> None:
    assert is_begin_readonly(sql) is expected


def test_sql_over_the_length_limit_is_refused_before_it_is_split(app: InProcess) -> None:
    app.create("acme")
    hostile = "CREATE TRIGGER t AFTER INSERT ON x BEGIN " + ";" * 200_000  # over max_sql_length
    requests = [
        {"type": "execute", "stmt": {"sql": hostile}},
        {"type": "sequence", "sql": hostile},
        {"type": "describe", "sql": hostile},
    ]
    r = app.client.post("/v2/pipeline", json={"requests": requests}, headers=bearer(app.token("acme")))
    assert r.status_code == 200, r.text
    errors = [result["error"] for result in r.json()["results"]]
    assert [e["code"] for e in errors] == ["SQLITE_TOOBIG"] * 3
    assert all("longer than" in e["message"] for e in errors)
