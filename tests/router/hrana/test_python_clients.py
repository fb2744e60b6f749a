"""The Python clients from PyPI against a real server, at both base URLs.

- `libsql` (the Rust libSQL crate behind a DB-API module) speaks Hrana 3 over HTTP:
  `v3/pipeline` and `v3/cursor`, with batons for its implicit transactions.
- `libsql-client` (the legacy pure-Python client) speaks the HTTP v1 routes, `v1/execute` and
  `v1/batch`; over HTTP it has no interactive transactions nor `sequence` (its own limits).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import libsql  # type: ignore[import-untyped]  # ships no type hints (a Rust extension)
import libsql_client  # type: ignore[import-untyped]  # ships no type hints
import pytest

from tests.support.hrana import Served, Tenant

FORMS = ("path", "root")
BIG = (1 << 63) - 1
VALUES = (BIG, -(1 << 63), 2.5, "héllo ✓", b"\x00\x01\xfe\xff", None)


@pytest.fixture(scope="module")
def tenants(served: Served) -> dict[str, Tenant]:
    return {
        f"{kind}-{form}": served.tenant(f"py-{kind}-{form}") for kind in ("rs", "legacy") for form in FORMS
    }


def _url(served: Served, tenant: Tenant, form: str) -> str:
    return f"{served.server.url}/v1/tenants/{tenant.id}/" if form == "path" else served.server.url


@pytest.fixture(params=FORMS)
def rs(request: pytest.FixtureRequest, served: Served, tenants: dict[str, Tenant]) -> Iterator[Any]:
    tenant = tenants[f"rs-{request.param}"]
    conn = libsql.connect(_url(served, tenant, request.param), auth_token=tenant.rw)
    yield conn
    conn.close()


@pytest.fixture(params=FORMS)
def legacy(request: pytest.FixtureRequest, served: Served, tenants: dict[str, Tenant]) -> Iterator[Any]:
    tenant = tenants[f"legacy-{request.param}"]
    with libsql_client.create_client_sync(
        _url(served, tenant, request.param), auth_token=tenant.rw
    ) as client:
        yield client


def test_libsql_round_trips_values_with_positional_and_named_args(rs: Any) -> None:
    # libsql 0.1.11 itself sends int parameters beyond 32 bits as floats (seen on the wire), so
    # 64-bit integers are checked as results here; the JS tests send them as parameters too.
    small = (7, *VALUES[2:])
    assert rs.execute("SELECT ?, ?, ?, ?, ?", small).fetchall() == [small]
    # it takes parameters only as a sequence, so named placeholders are bound by position
    assert rs.execute("SELECT :a, @b", (7, b"\x00")).fetchall() == [(7, b"\x00")]
    assert rs.execute(f"SELECT {BIG}, -{BIG} - 1, typeof({BIG})").fetchall() == [(BIG, -BIG - 1, "integer")]


def test_libsql_transactions_commit_and_roll_back(rs: Any) -> None:
    rs.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    rs.execute("DELETE FROM t")
    rs.commit()
    rs.execute("INSERT INTO t VALUES (1)")  # opens a transaction (DB-API), carried by a baton
    rs.execute("INSERT INTO t VALUES (2)")
    assert rs.execute("SELECT count(*) FROM t").fetchall() == [(2,)]
    rs.rollback()
    assert rs.execute("SELECT count(*) FROM t").fetchall() == [(0,)]
    rs.execute("INSERT INTO t VALUES (3)")
    rs.commit()
    assert rs.execute("SELECT x FROM t").fetchall() == [(3,)]


def test_libsql_reads_many_rows_through_the_cursor(rs: Any) -> None:
    rows = rs.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) SELECT i FROM n"
    )
    assert [r[0] for r in rows.fetchall()] == list(range(1, 501))


def test_libsql_read_only_token_is_refused_writes(served: Served, tenants: dict[str, Tenant]) -> None:
    tenant = tenants["rs-root"]
    conn = libsql.connect(served.server.url, auth_token=tenant.ro)
    try:
        assert conn.execute("SELECT 1").fetchall() == [(1,)]
        with pytest.raises(Exception, match=r"SQLITE_READONLY|readonly"):
            conn.execute("CREATE TABLE refused (x)")
    finally:
        conn.close()


def test_legacy_client_round_trips_values(legacy: Any) -> None:
    assert tuple(legacy.execute("SELECT ?, ?, ?, ?, ?, ?", list(VALUES)).rows[0]) == VALUES
    assert tuple(legacy.execute("SELECT :a", {"a": BIG}).rows[0]) == (BIG,)


def test_legacy_client_batch_is_atomic(legacy: Any) -> None:
    legacy.execute("CREATE TABLE IF NOT EXISTS b (x INTEGER PRIMARY KEY)")
    legacy.batch(["DELETE FROM b", "INSERT INTO b VALUES (1)"])
    with pytest.raises(libsql_client.LibsqlError) as failed:
        legacy.batch(["INSERT INTO b VALUES (2)", "INSERT INTO b VALUES (1)"])
    assert failed.value.code == "SQLITE_CONSTRAINT"
    assert [tuple(r) for r in legacy.execute("SELECT x FROM b").rows] == [(1,)]


def test_legacy_client_read_only_token_is_refused_writes(served: Served, tenants: dict[str, Tenant]) -> None:
    tenant = tenants["legacy-path"]
    url = _url(served, tenant, "path")
    with (
        libsql_client.create_client_sync(url, auth_token=tenant.ro) as client,
        pytest.raises(libsql_client.LibsqlError) as refused,
    ):
        client.execute("CREATE TABLE refused (x)")
    assert refused.value.code == "SQLITE_READONLY"
