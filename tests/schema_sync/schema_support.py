"""Assertions shared by the schema sync tests."""

from __future__ import annotations

from typing import Any

from schema_sync.session import Session


def rows(session: Session, sql: str) -> list[tuple[Any, ...]]:
    return session.internal(sql)


def assert_clean(session: Session) -> None:
    assert rows(session, "PRAGMA foreign_key_check") == []
    assert rows(session, "PRAGMA integrity_check") == [("ok",)]
    assert rows(session, "PRAGMA foreign_keys") == [(1,)]
