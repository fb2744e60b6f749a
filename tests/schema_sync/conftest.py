"""Fixtures for schema sync: real tenant connections (pragmas and sandbox as served), template
files, and a fleet wired to schema groups; all closed after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from schema_sync.catch_up import SchemaHooks
from schema_sync.groups import GroupStore
from schema_sync.rollouts import Rollouts
from schema_sync.session import SchemaSession
from tenants.connection import open_database
from tenants.fleet import Fleet
from tests.support.schema import TEST_CONFIG, TEST_POOL, MakeTemplate, OpenTenant, SchemaFleet


@pytest.fixture
def open_tenant(tmp_path: Path) -> Iterator[OpenTenant]:
    """Open (creating) a tenant database as the server does, with `sql` run as the tenant."""
    conns: list[apsw.Connection] = []

    def make(sql: str = "", name: str = "tenant") -> SchemaSession:
        conn, sandbox = open_database(tmp_path / f"{name}.db", TEST_CONFIG, create=True)
        conns.append(conn)
        if sql:
            with conn:
                conn.execute(sql).fetchall()
        return SchemaSession(conn, sandbox, timeout=5.0)

    yield make
    for conn in conns:
        conn.close()


@pytest.fixture
def make_template(tmp_path: Path) -> MakeTemplate:
    counter = iter(range(1_000_000))

    def make(sql: str) -> Path:
        path = tmp_path / f"template{next(counter)}.db"
        conn = apsw.Connection(str(path))
        try:
            conn.execute(sql).fetchall()
        finally:
            conn.close()
        return path

    return make


@pytest.fixture
def schema_fleet(tmp_path: Path) -> Iterator[SchemaFleet]:
    groups = GroupStore(tmp_path / "data", timeout=5.0)
    made: list[SchemaHooks] = []

    def hooks(fleet: Fleet) -> list[SchemaHooks]:
        made.append(SchemaHooks(groups, fleet.group_of, lazy_catch_up=True, timeout=5.0))
        return made

    fleet = Fleet(tmp_path / "data", TEST_CONFIG, TEST_POOL, hooks)
    wired = SchemaFleet(fleet, groups, made[0], Rollouts(groups, fleet, concurrency=4))
    yield wired
    wired.rollouts.close()
    fleet.close()
