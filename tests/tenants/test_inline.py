"""What may run inline, on the event loop: only statements judged (from their program) to do
nothing that can take long in one step, and only while the schema they were judged on holds."""

from __future__ import annotations

import pytest

from tenants.execute import Statement
from tenants.fleet import Fleet
from tests.support.tenants import MakeFleet


@pytest.fixture
def fleet(make_fleet: MakeFleet) -> Fleet:
    fleet = make_fleet()
    fleet.create("acme")
    fleet.execute("acme", Statement("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE, n INT)"))
    fleet.execute("acme", Statement("INSERT INTO t VALUES (1, 'a', 10), (2, 'b', 20)"))
    return fleet


def _inline_after_two_runs(fleet: Fleet, sql: str, params: tuple[object, ...] = ()) -> bool:
    stmt = Statement(sql, params)  # type: ignore[arg-type]
    assert fleet.try_inline("acme", stmt) is None  # never judged: a worker thread runs it
    for _ in range(2):  # the second run in a thread judges it (EXPLAIN)
        fleet.execute("acme", stmt)
    return fleet.try_inline("acme", stmt) is not None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT v FROM t WHERE id = ?",
        "SELECT id, n FROM t WHERE v = ?",
        "SELECT v FROM t WHERE id IN (1, 2, ?)",
        "SELECT 1",
    ],
)
def test_point_reads_run_inline_once_judged(fleet: Fleet, sql: str) -> None:
    params = (1,) if "?" in sql else ()
    assert _inline_after_two_runs(fleet, sql, params)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT instr(v, 'a') FROM t WHERE id = 1",  # a function: one call may take any time
        "SELECT v FROM t ORDER BY n",  # a sorter: one step sorts everything
        "SELECT count(*) FROM t",  # an aggregate
        "SELECT v FROM t WHERE v LIKE 'a%'",  # LIKE is a function
        "SELECT * FROM pragma_table_info('t')",  # a virtual table
        "INSERT INTO t(v) VALUES ('c')",  # a write
    ],
)
def test_statements_that_may_run_long_in_one_step_never_run_inline(fleet: Fleet, sql: str) -> None:
    stmt = Statement(sql.replace("'c'", "'c' || random()"))
    for _ in range(3):
        fleet.execute("acme", stmt)
    assert fleet.try_inline("acme", stmt) is None


def test_a_schema_change_takes_a_statement_off_the_loop(fleet: Fleet) -> None:
    sql = "SELECT v FROM u WHERE id = 1"
    fleet.execute("acme", Statement("CREATE TABLE u(id INTEGER PRIMARY KEY, v)"))
    assert _inline_after_two_runs(fleet, sql)
    fleet.execute("acme", Statement("DROP TABLE u"))  # the same text now reads a view calling a function
    fleet.execute(
        "acme", Statement("CREATE VIEW u(id, v) AS SELECT 1, replace(printf('%.*c', 10, 'x'), 'x', 'y')")
    )
    assert fleet.try_inline("acme", Statement(sql)) is None
    assert fleet.execute("acme", Statement(sql)).rows == [("y" * 10,)]


def test_other_writes_keep_the_verdicts(fleet: Fleet) -> None:
    sql = "SELECT v FROM t WHERE id = 1"
    assert _inline_after_two_runs(fleet, sql)
    fleet.execute("acme", Statement("UPDATE t SET v = 'z' WHERE id = 1"))  # data, not schema
    result = fleet.try_inline("acme", Statement(sql))
    assert result is not None and result.rows == [("z",)]


def test_an_inline_read_over_its_budget_is_handed_back(fleet: Fleet) -> None:
    fleet.execute("acme", Statement("CREATE TABLE big(id INTEGER PRIMARY KEY, v)"))
    fleet.execute(
        "acme",
        Statement(
            "INSERT INTO big(v) SELECT randomblob(50) FROM (WITH RECURSIVE c(i) AS "
            "(SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000) SELECT i FROM c)"
        ),
    )
    sql = "SELECT id FROM big WHERE v = x'00' LIMIT 1"  # a full scan: judged safe step by step
    assert not _inline_after_two_runs(fleet, sql)  # ... but too long for the loop's budget
