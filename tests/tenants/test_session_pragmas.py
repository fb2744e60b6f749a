"""Connection-scoped pragmas tenant SQL may set (tenants.sandbox.SESSION_PRAGMAS): allowed, and
put back when the request lets go of the connection, however it ran (a lease, the inline path,
a cached statement run again)."""

from __future__ import annotations

import pytest

from tenants.errors import NotAuthorizedSql, SqlError
from tenants.execute import Statement, run_statement
from tenants.fleet import Fleet
from tenants.sandbox import SESSION_PRAGMAS


def _value(fleet: Fleet, name: str) -> object:
    return fleet.execute("acme", Statement(f"PRAGMA {name}")).rows[0][0]


@pytest.fixture
def acme(fleet: Fleet) -> Fleet:
    fleet.create("acme")
    fleet.execute("acme", Statement("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
    fleet.execute("acme", Statement("CREATE TABLE child (p REFERENCES parent(id))"))
    return fleet


def test_a_fresh_connection_has_the_values_resets_go_back_to(acme: Fleet) -> None:
    assert {name: _value(acme, name) for name in SESSION_PRAGMAS} == SESSION_PRAGMAS


@pytest.mark.parametrize(("name", "other"), [(n, 1 - v) for n, v in SESSION_PRAGMAS.items()])
def test_a_session_pragma_holds_for_its_lease_only(acme: Fleet, name: str, other: int) -> None:
    for _ in range(3):  # again and again: a cached statement would skip the authorizer
        with acme.lease("acme") as h:
            assert h.conn is not None and h.sandbox is not None
            run_statement(h.conn, h.sandbox, acme.config, Statement(f"PRAGMA {name}={other}"))
            seen = run_statement(h.conn, h.sandbox, acme.config, Statement(f"PRAGMA {name}"))
            assert seen.rows == [(other,)]
        assert _value(acme, name) == SESSION_PRAGMAS[name]


def test_foreign_keys_off_lets_a_migration_rebuild_a_parent_table(acme: Fleet) -> None:
    acme.execute("acme", Statement("INSERT INTO parent VALUES (1)"))
    acme.execute("acme", Statement("INSERT INTO child VALUES (1)"))
    with pytest.raises(SqlError):  # the constraint holds by default
        acme.execute("acme", Statement("DELETE FROM parent"))
    with acme.lease("acme") as h:
        assert h.conn is not None and h.sandbox is not None
        for sql in ("PRAGMA foreign_keys=off", "DELETE FROM parent", "INSERT INTO parent VALUES (1)"):
            run_statement(h.conn, h.sandbox, acme.config, Statement(sql))
    assert _value(acme, "foreign_keys") == 1


def test_the_inline_path_resets_too(acme: Fleet) -> None:
    handle = acme.pool.try_lease("acme")
    assert handle is not None and handle.conn is not None and handle.sandbox is not None
    run_statement(handle.conn, handle.sandbox, acme.config, Statement("PRAGMA recursive_triggers=1"))
    acme.pool.release(handle)
    assert _value(acme, "recursive_triggers") == 0


@pytest.mark.parametrize(
    "sql",
    [
        "PRAGMA case_sensitive_like=1",
        "PRAGMA legacy_alter_table=1",
        "PRAGMA ignore_check_constraints=1",
        "PRAGMA writable_schema=1",
        "PRAGMA trusted_schema=1",
        "PRAGMA query_only=0",
    ],
)
def test_other_connection_pragmas_stay_refused(acme: Fleet, sql: str) -> None:
    with pytest.raises(NotAuthorizedSql):
        acme.execute("acme", Statement(sql))
