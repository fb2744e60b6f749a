"""Whether a statement run with a request's Budget marks it as having written (what a refused
durable ack tells the client): only a write of `main`, or the end of a transaction holding one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from tenants.budget import Budget, Encoding, ResultMemory
from tenants.execute import Statement, run_statement
from tenants.sandbox import Sandbox
from tests.support.tenants import TEST_CONFIG


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[apsw.Connection]:
    conn = apsw.Connection(str(tmp_path / "t.db"))
    conn.execute("CREATE TABLE notes(v)")
    yield conn
    conn.close()


def wrote(conn: apsw.Connection, sandbox: Sandbox, *sql: str) -> list[bool]:
    """Each statement of `sql` run with a budget of its own (a request each): which wrote."""
    marks = []
    for text in sql:
        budget = Budget(10.0, 1 << 20, ResultMemory(1 << 30), Encoding(per_value=14, per_row=3))
        run_statement(conn, sandbox, TEST_CONFIG, Statement(text), allow_tx=True, budget=budget)
        marks.append(budget.wrote)
    return marks


def test_a_read_only_transaction_is_no_write(conn: apsw.Connection) -> None:
    sandbox = Sandbox(TEST_CONFIG.statement_timeout)
    assert wrote(conn, sandbox, "BEGIN", "SELECT count(*) FROM notes", "COMMIT") == [False] * 3


def test_a_transaction_writing_only_temp_tables_is_no_write(conn: apsw.Connection) -> None:
    sandbox = Sandbox(TEST_CONFIG.statement_timeout)
    marks = wrote(
        conn, sandbox, "BEGIN", "CREATE TEMP TABLE scratch(v)", "INSERT INTO scratch VALUES (1)", "COMMIT"
    )
    assert marks == [False] * 4


def test_the_commit_of_an_earlier_requests_write_is_a_write(conn: apsw.Connection) -> None:
    sandbox = Sandbox(TEST_CONFIG.statement_timeout)
    marks = wrote(conn, sandbox, "BEGIN", "INSERT INTO notes VALUES (1)", "SELECT 1", "COMMIT")
    assert marks == [False, True, False, True]


def test_a_write_outside_a_transaction_is_a_write(conn: apsw.Connection) -> None:
    sandbox = Sandbox(TEST_CONFIG.statement_timeout)
    assert wrote(conn, sandbox, "SELECT 1", "INSERT INTO notes VALUES (1)") == [False, True]
