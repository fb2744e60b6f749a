"""Running statements: limits, one-statement rule, batches, params and values."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from tenants.errors import BadRequest, NotAuthorizedSql, SqlError, SqlfleetError, StatementTimeout, TooLarge
from tenants.execute import Params, Statement, Value
from tenants.fleet import Fleet
from tests.support.tenants import TEST_CONFIG, MakeFleet

LIMITS = dataclasses.replace(
    TEST_CONFIG,
    statement_timeout=0.3,
    max_result_rows=100,
    max_result_bytes=10_000,
    max_sql_length=1000,
    max_db_bytes=256 * 1024,
)
RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


@pytest.fixture
def limited(make_fleet: MakeFleet) -> Fleet:
    fleet = make_fleet(LIMITS)
    fleet.create("acme")
    fleet.execute("acme", Statement("CREATE TABLE t(x)"))
    return fleet


def q(fleet: Fleet, sql: str, params: Params = ()) -> list[tuple[Value, ...]]:
    return fleet.execute("acme", Statement(sql, params)).rows


def test_runaway_recursive_query_is_interrupted_within_the_limit(limited: Fleet) -> None:
    started = time.monotonic()
    with pytest.raises(StatementTimeout) as info:
        q(limited, RUNAWAY)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.3 + 0.7, elapsed
    assert info.value.status == 504 and info.value.code == "statement_timeout"
    assert q(limited, "SELECT 1") == [(1,)]  # the connection is still usable
    with pytest.raises(StatementTimeout):  # and the clock restarts for each statement
        q(limited, RUNAWAY)


def test_runaway_write_is_interrupted_and_rolled_back(limited: Fleet) -> None:
    with pytest.raises(StatementTimeout):
        q(
            limited,
            "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
            "SELECT x FROM c WHERE x % 100000 = 0",
        )
    assert q(limited, "SELECT count(*) FROM t") == [(0,)]


def test_slow_statements_under_the_limit_complete(limited: Fleet) -> None:
    assert q(
        limited,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 20000) SELECT count(*) FROM c",
    ) == [(20000,)]


def test_too_many_rows(limited: Fleet) -> None:
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {}) SELECT x FROM c"
    assert len(q(limited, sql.format(100))) == 100
    with pytest.raises(TooLarge) as info:
        q(limited, sql.format(101))
    assert info.value.status == 413 and info.value.code == "too_large"
    with pytest.raises(TooLarge):  # an endless result stops at the row limit, not the timeout
        q(limited, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c")


def test_too_many_bytes(limited: Fleet) -> None:
    ((blob,),) = q(limited, "SELECT zeroblob(9000)")
    assert isinstance(blob, bytes) and len(blob) == 9000
    with pytest.raises(TooLarge):
        q(limited, "SELECT zeroblob(20000)")
    with pytest.raises(TooLarge):
        q(limited, "SELECT printf('%.*c', 20000, 'x')")
    for sql in (
        "SELECT length(randomblob(20000))",
        "SELECT length(zeroblob(20000))",
        "SELECT length(group_concat(printf('%.*c', 900, 'x'))) FROM (SELECT 1 UNION ALL SELECT 2) "
        "JOIN (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 "
        "UNION ALL SELECT 6) JOIN (SELECT 1 UNION ALL SELECT 2)",
    ):
        with pytest.raises(TooLarge):  # nor may one be built inside a statement
            q(limited, sql)
    with pytest.raises(TooLarge):  # many small rows add up
        q(
            limited,
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 90) "
            "SELECT printf('%.*c', 200, 'x') FROM c",
        )


def test_sql_length_limit(limited: Fleet) -> None:
    assert q(limited, "SELECT 1" + " " * 900) == [(1,)]
    with pytest.raises(TooLarge):
        q(limited, "SELECT 1" + " " * 2000)


def test_sql_over_the_length_limit_is_refused_before_it_is_parsed(limited: Fleet) -> None:
    hostile = "CREATE TRIGGER t2 AFTER INSERT ON t BEGIN " + ";" * 200_000
    with pytest.raises(TooLarge, match="longer than 1000 characters"):
        q(limited, hostile)


def test_database_size_limit(limited: Fleet) -> None:
    with pytest.raises(TooLarge) as info:
        for _ in range(100):  # 100 x 8 KiB is well past 256 KiB
            q(limited, "INSERT INTO t VALUES (randomblob(8192))")
    assert "size limit" in info.value.message
    count = q(limited, "SELECT count(*) FROM t")[0][0]
    assert isinstance(count, int) and 10 < count < 40
    size = limited.layout.tenant_path("acme").stat().st_size
    assert size <= 256 * 1024
    assert q(limited, "PRAGMA integrity_check") == [("ok",)]
    q(limited, "DELETE FROM t")  # freeing space makes room again
    q(limited, "INSERT INTO t VALUES (randomblob(8192))")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; SELECT 2",
        "SELECT 1;SELECT 2;",
        "INSERT INTO t VALUES (1); DROP TABLE t",
        "SELECT 1; -- comment\n SELECT 2",
        "SELECT 1 /* c */ ; /* c */ DELETE FROM t",
    ],
)
def test_multiple_statements_are_rejected(limited: Fleet, sql: str) -> None:
    with pytest.raises(BadRequest, match="exactly one statement"):
        q(limited, sql)
    assert q(limited, "SELECT count(*) FROM t") == [(0,)]  # nothing ran, not even the first
    assert q(limited, "SELECT count(*) FROM sqlite_schema WHERE name = 't'") == [(1,)]


@pytest.mark.parametrize("sql", ["", " ", ";", " ;; ", "-- only a comment", "/* c */", "\n\t"])
def test_empty_sql_is_rejected(limited: Fleet, sql: str) -> None:
    with pytest.raises(BadRequest, match="empty"):
        q(limited, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1;",
        "  SELECT 1",
        "/* c */ SELECT 1 -- tail",
        "SELECT 1;;  ",
        "\nSELECT 1\n;\n",
        ";SELECT 1",
        "SELECT 1; -- trailing comment",
        "SELECT 1; -- comment\n",
        "SELECT 1; /* c */",
        "SELECT 1; /* open",
        "SELECT 1 -- c\n; -- d\n;",
    ],
)
def test_one_statement_with_trivia_is_fine(limited: Fleet, sql: str) -> None:
    assert q(limited, sql) == [(1,)]


TRANSACTION_CONTROL = ["BEGIN", "begin immediate", "COMMIT", "END", "ROLLBACK", "SAVEPOINT s", "RELEASE s"]


@pytest.mark.parametrize("sql", [*TRANSACTION_CONTROL, "  /* c */ BEGIN TRANSACTION"])
def test_transaction_control_is_rejected_in_a_query(limited: Fleet, sql: str) -> None:
    with pytest.raises(BadRequest, match="is not allowed in /query"):
        q(limited, sql)
    q(limited, "INSERT INTO t VALUES (1)")  # autocommit: not left inside a transaction
    assert limited.execute("acme", Statement("SELECT count(*) FROM t")).rows == [(1,)]


def test_batch_is_atomic_and_names_the_failing_index(limited: Fleet) -> None:
    stmts = [
        Statement("INSERT INTO t VALUES (1)"),
        Statement("INSERT INTO t VALUES (2)"),
        Statement("INSERT INTO nope VALUES (3)"),
        Statement("INSERT INTO t VALUES (4)"),
    ]
    with pytest.raises(SqlError) as info:
        limited.batch("acme", stmts)
    assert info.value.detail["index"] == 2
    assert "statement 2" in info.value.message and "nope" in info.value.message
    assert q(limited, "SELECT count(*) FROM t") == [(0,)]
    results = limited.batch("acme", [stmts[0], stmts[1], Statement("SELECT sum(x) FROM t")])
    assert [r.rows_affected for r in results] == [1, 1, 0]
    assert results[2].rows == [(3,)]


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (Statement(RUNAWAY), StatementTimeout),
        (Statement("SELECT zeroblob(20000)"), TooLarge),
        (Statement("COMMIT"), BadRequest),
        (Statement("SELECT 1; SELECT 2"), BadRequest),
        (Statement("ATTACH 'x.db' AS x"), NotAuthorizedSql),
        (Statement("SELECT ?", (1, 2)), BadRequest),
        (Statement(""), BadRequest),
    ],
)
def test_any_failure_rolls_a_batch_back(limited: Fleet, bad: Statement, error: type[SqlfleetError]) -> None:
    with pytest.raises(error) as info:
        limited.batch("acme", [Statement("INSERT INTO t VALUES (1)"), bad, Statement("SELECT 1")])
    assert info.value.detail["index"] == 1
    assert q(limited, "SELECT count(*) FROM t") == [(0,)]
    q(limited, "INSERT INTO t VALUES (1)")  # the connection is back in autocommit
    assert q(limited, "SELECT count(*) FROM t") == [(1,)]


def test_empty_batch(limited: Fleet) -> None:
    assert limited.batch("acme", []) == []


def test_params_by_position_and_by_name(limited: Fleet) -> None:
    assert q(limited, "SELECT ?, ?", [1, "a"]) == [(1, "a")]
    assert q(limited, "SELECT ?2, ?1", (1, 2)) == [(2, 1)]
    assert q(limited, "SELECT :a, @b, $c", {"a": 1, "b": 2, "c": 3}) == [(1, 2, 3)]
    assert q(limited, "SELECT :a, @b, $c", {":a": 1, "@b": 2, "$c": 3}) == [(1, 2, 3)]
    assert q(limited, "SELECT :a + :a", {"a": 20}) == [(40,)]


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT ?", ()),
        ("SELECT ?", (1, 2)),
        ("SELECT :a", {"b": 1}),
        ("SELECT :a", {}),
        ("SELECT ?", ([1],)),
        ("SELECT ?", ({"x": 1},)),
        ("SELECT ?", (2**63,)),
        ("SELECT ?", (-(2**63) - 1,)),
    ],
)
def test_bad_params_are_a_bad_request(limited: Fleet, sql: str, params: Params) -> None:
    with pytest.raises(BadRequest) as info:  # wrong types too: callers other than the router
        q(limited, sql, params)
    assert info.value.status == 400


def test_values_round_trip(limited: Fleet) -> None:
    numbers: list[Value] = [None, 0, -1, 2**63 - 1, -(2**63), 1.5, -0.0, 1e308]
    values = [*numbers, "", "héllo ✓", "a\x00b", b"", b"\x00\x01\xff" * 1000]
    q(limited, "CREATE TABLE v(i INTEGER PRIMARY KEY, x)")
    for i, v in enumerate(values):
        q(limited, "INSERT INTO v VALUES (?, ?)", (i, v))
    got = [r[0] for r in q(limited, "SELECT x FROM v ORDER BY i")]
    assert got == values
    assert [type(g) for g in got] == [type(v) for v in values]
    assert q(limited, "SELECT typeof(x) FROM v WHERE i = 3") == [("integer",)]
    assert q(limited, "SELECT ? + 0", (2**62,)) == [(2**62,)]


def test_result_shape(limited: Fleet) -> None:
    r = limited.execute("acme", Statement("INSERT INTO t VALUES (1), (2)"))
    assert (r.columns, r.rows, r.rows_affected, r.last_insert_rowid) == ([], [], 2, 2)
    r = limited.execute("acme", Statement("SELECT x AS col, x + 1 FROM t ORDER BY x"))
    assert r.columns == ["col", "x + 1"] and r.rows == [(1, 2), (2, 3)] and r.rows_affected == 0
    assert r.last_insert_rowid is None
    r = limited.execute("acme", Statement("UPDATE t SET x = x WHERE x > 100"))
    assert r.rows_affected == 0
    r = limited.execute("acme", Statement("DELETE FROM t"))
    assert r.rows_affected == 2


def test_sql_errors_are_a_bad_request(limited: Fleet, tmp_path: Path) -> None:
    for sql in ("SELEC 1", "SELECT * FROM nope", "INSERT INTO t VALUES (1, 2)", "SELECT 'a\x00b'"):
        with pytest.raises(SqlError) as info:
            q(limited, sql)
        assert info.value.status == 400 and info.value.code == "sql_error"


def test_a_batch_failing_at_commit_rolls_back_cleanly(limited: Fleet) -> None:
    q(limited, "CREATE TABLE parent(id INTEGER PRIMARY KEY)")
    q(limited, "CREATE TABLE child(pid REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(SqlError) as info:  # the deferred check only fails at COMMIT
        limited.batch(
            "acme", [Statement("INSERT INTO t VALUES (1)"), Statement("INSERT INTO child VALUES (7)")]
        )
    assert "commit failed" in info.value.message and "FOREIGN KEY" in info.value.message
    assert q(limited, "SELECT count(*) FROM t") == [(0,)]
    assert q(limited, "SELECT count(*) FROM child") == [(0,)]
    limited.batch(
        "acme", [Statement("INSERT INTO parent VALUES (7)"), Statement("INSERT INTO child VALUES (7)")]
    )
    assert q(limited, "SELECT count(*) FROM child") == [(1,)]


def test_temp_tables_are_bounded_too(limited: Fleet) -> None:
    # a TEMP table lives as long as its request (tenants.sandbox): one batch fills it
    fill = [Statement("INSERT INTO scratch VALUES (randomblob(8192))")] * 100  # 800 KiB > 256 KiB
    with pytest.raises(TooLarge):
        limited.batch("acme", [Statement("CREATE TEMP TABLE scratch(x)"), *fill])
    counted = [
        Statement("CREATE TEMP TABLE scratch(x)"),
        *fill[:20],
        Statement("SELECT count(*) FROM scratch"),
    ]
    assert limited.batch("acme", counted)[-1].rows == [(20,)]  # what fits, fits
