"""The linear stand-ins give the built-ins' answers (property-based, against a plain SQLite
connection), and take time linear in their input where the built-ins took quadratic time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenants import functions

TESTS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMIT = 8 << 20


def _connection(replaced: bool) -> apsw.Connection:
    conn = apsw.Connection(":memory:")
    conn.limit(apsw.SQLITE_LIMIT_LENGTH, LIMIT)
    if replaced:
        functions.install(conn)
    return conn


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[apsw.Connection, apsw.Connection]]:
    builtin, replaced = _connection(False), _connection(True)
    yield builtin, replaced
    builtin.close()
    replaced.close()


def _outcome(conn: apsw.Connection, sql: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return "ok", conn.execute(sql, args).fetchall()
    except apsw.Error as exc:
        return type(exc).__name__, str(exc)


# Characters that matter to these functions: wildcards, classes, escapes, case, NUL, non-ASCII.
_CHARS = st.sampled_from(list("aAbB%_*?[]^-\\x1F é\0"))
_TEXT = st.text(_CHARS, max_size=10)
_VALUE = st.one_of(
    _TEXT,
    _TEXT,
    _TEXT.map(str.encode),
    st.none(),
    st.integers(-20, 200),
    st.sampled_from([0.1, 1.5, 1e20, -0.0, 2.5e-320]),
)


def _same(pair: tuple[apsw.Connection, apsw.Connection], sql: str, *args: Any) -> None:
    builtin, replaced = pair
    assert _outcome(replaced, sql, args) == _outcome(builtin, sql, args), (sql, args)


@TESTS
@given(_VALUE, _VALUE)
def test_instr_answers_as_the_builtin(pair: tuple[apsw.Connection, apsw.Connection], x: Any, y: Any) -> None:
    _same(pair, "SELECT instr(?, ?)", x, y)


@TESTS
@given(_VALUE, _VALUE, _VALUE)
def test_replace_answers_as_the_builtin(
    pair: tuple[apsw.Connection, apsw.Connection], x: Any, y: Any, z: Any
) -> None:
    _same(pair, "SELECT replace(?, ?, ?), typeof(replace(?1, ?2, ?3))", x, y, z)


@TESTS
@given(_VALUE, _VALUE, st.sampled_from(["trim", "ltrim", "rtrim"]))
def test_trim_answers_as_the_builtin(
    pair: tuple[apsw.Connection, apsw.Connection], x: Any, y: Any, name: str
) -> None:
    _same(pair, f"SELECT {name}(?, ?)", x, y)


@TESTS
@given(st.one_of(st.text(st.sampled_from(list("0aF9 -:é\0")), max_size=12), _VALUE), _VALUE)
def test_unhex_answers_as_the_builtin(pair: tuple[apsw.Connection, apsw.Connection], x: Any, y: Any) -> None:
    _same(pair, "SELECT unhex(?, ?)", x, y)


def test_json_patch_answers_as_the_builtin_and_refuses_what_would_take_minutes(
    pair: tuple[apsw.Connection, apsw.Connection],
) -> None:
    for args in (('{"a":1,"b":{"c":2}}', '{"b":{"c":null,"d":[1]},"e":3}'), ("[1]", '{"a":1}'), ("{", "{}")):
        _same(pair, "SELECT json_patch(?, ?)", *args)
        _same(pair, "SELECT hex(jsonb_patch(?, ?))", *args)
    _, replaced = pair
    keys = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100000)"
    big = f"{keys} SELECT json_group_object('k' || i, i) FROM s"
    started = time.monotonic()
    with pytest.raises(apsw.TooBigError, match="too large to merge"):
        replaced.execute(f"SELECT json_patch(({big}), ({big}))").fetchall()
    assert time.monotonic() - started < 5  # the built-in: 73 s


def test_overrides_keep_indexes_on_expressions_and_generated_columns_working(
    pair: tuple[apsw.Connection, apsw.Connection],
) -> None:
    _, conn = pair
    conn.execute(
        "CREATE TABLE t(a TEXT, b AS (replace(a, 'x', 'y')), c AS (instr(a, 'x')) STORED);"
        "CREATE INDEX ti ON t(trim(a, 'x')) WHERE a LIKE 'x%'"
    )
    conn.execute("INSERT INTO t(a) VALUES ('xax'), ('bx')")
    assert conn.execute("SELECT b, c FROM t ORDER BY a").fetchall() == [("by", 2), ("yay", 1)]
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# The inputs that took the built-ins seconds to hours, at the largest value SQLITE_LIMIT_LENGTH
# allows here (8 MB): the stand-ins take milliseconds (bounded generously for a busy machine).
LINEAR = [
    "SELECT instr(printf('%.*c', 8000000, 'a'), printf('%.*c', 4000000, 'a') || 'b')",
    "SELECT instr(CAST(printf('%.*c', 8000000, 'a') AS BLOB), printf('%.*c', 4000000, 'a') || 'b')",
    "SELECT length(replace(printf('%.*c', 8000000, 'a'), printf('%.*c', 4000000, 'a') || 'b', 'x'))",
    "SELECT length(trim(printf('%.*c', 8000000, 'a'), printf('%.*c', 600000, 'b') || 'a'))",
    "SELECT length(rtrim(printf('%.*c', 8000000, 'a'), printf('%.*c', 600000, 'b') || 'a'))",
    "SELECT length(unhex(printf('%.*c', 8000000, ' '), printf('%.*c', 4000000, 'b') || ' '))",
]


@pytest.mark.parametrize("sql", LINEAR)
def test_the_quadratic_inputs_take_linear_time(
    pair: tuple[apsw.Connection, apsw.Connection], sql: str
) -> None:
    _, replaced = pair
    started = time.monotonic()
    replaced.execute(sql).fetchall()
    assert time.monotonic() - started < 2.0


def test_replace_never_builds_more_than_the_length_limit(
    pair: tuple[apsw.Connection, apsw.Connection],
) -> None:
    _, replaced = pair
    with pytest.raises(apsw.TooBigError):
        replaced.execute(
            "SELECT replace(printf('%.*c', 8000000, 'a'), 'a', printf('%.*c', 1000, 'b'))"
        ).fetchall()
