"""What the schema sync tests share besides fixtures (conftest.py holds those): the test
database config, fixture types, the fleet wiring, assertions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schema_sync.catch_up import SchemaHooks
from schema_sync.groups import GroupStore
from schema_sync.rollout import Rollouts
from schema_sync.session import Session
from tenants.config import DbConfig
from tenants.execute import Statement
from tenants.fleet import Fleet

TEST_CONFIG = DbConfig(synchronous="NORMAL", statement_timeout=2.0)

OpenTenant = Callable[..., Session]
MakeTemplate = Callable[[str], Path]


@dataclass
class SchemaFleet:
    """A real Fleet wired to schema groups as ops.server wires it, without HTTP."""

    fleet: Fleet
    groups: GroupStore
    hooks: SchemaHooks
    rollouts: Rollouts

    def group_of(self, tenant: str) -> str | None:
        row = self.fleet.catalog.get(tenant)
        return row.group if row is not None else None

    def query(self, tenant: str, sql: str) -> list[tuple[Any, ...]]:
        return self.fleet.execute(tenant, Statement(sql)).rows


def rows(session: Session, sql: str) -> list[tuple[Any, ...]]:
    return session.internal(sql)


def assert_clean(session: Session) -> None:
    assert rows(session, "PRAGMA foreign_key_check") == []
    assert rows(session, "PRAGMA integrity_check") == [("ok",)]
    assert rows(session, "PRAGMA foreign_keys") == [(1,)]
