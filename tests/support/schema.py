"""What the schema sync tests share besides fixtures (conftest.py holds those): the test
database config, fixture types, the fleet wiring, assertions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.settings import Settings
from schema_sync.catch_up import SchemaHooks
from schema_sync.groups import GroupStore
from schema_sync.rollouts import Rollouts
from schema_sync.session import SchemaSession
from tenants.execute import Statement
from tenants.fleet import Fleet

TEST_SETTINGS = Settings.load(environ={}, synchronous="NORMAL", statement_timeout=2.0, pool_capacity=64)
TEST_CONFIG = TEST_SETTINGS.db_config()
TEST_POOL = TEST_SETTINGS.pool_config()

OpenTenant = Callable[..., SchemaSession]
MakeTemplate = Callable[[str], Path]


@dataclass
class SchemaFleet:
    """A real Fleet wired to schema groups as ops.server wires it, without HTTP."""

    fleet: Fleet
    groups: GroupStore
    hooks: SchemaHooks
    rollouts: Rollouts

    def query(self, tenant: str, sql: str) -> list[tuple[Any, ...]]:
        return self.fleet.execute(tenant, Statement(sql)).rows


def rows(session: SchemaSession, sql: str) -> list[tuple[Any, ...]]:
    return session.internal(sql)


def assert_clean(session: SchemaSession) -> None:
    assert rows(session, "PRAGMA foreign_key_check") == []
    assert rows(session, "PRAGMA integrity_check") == [("ok",)]
    assert rows(session, "PRAGMA foreign_keys") == [(1,)]
