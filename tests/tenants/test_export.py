"""tenants.export: a consistent copy in steps, restarting (boundedly) when the tenant's
connection goes away between steps."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tenants.execute import Statement
from tenants.export import Exporter
from tenants.fleet import Fleet


def _fill(fleet: Fleet, tenant: str, rows: int) -> None:
    fleet.create(tenant)
    fleet.execute(tenant, Statement("CREATE TABLE t(k INTEGER PRIMARY KEY, b BLOB)"))
    numbers = f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})"
    fleet.execute(tenant, Statement(numbers + " INSERT INTO t SELECT i, randomblob(1000) FROM n"))


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        (count,) = db.execute("SELECT count(*) FROM t").fetchone()
    db.close()
    return int(count)


def test_commits_between_steps_are_in_the_copy_without_a_restart(fleet: Fleet, tmp_path: Path) -> None:
    _fill(fleet, "a", 2000)
    exporter = Exporter(fleet, "a", tmp_path / "a.db", step_pages=8, max_restarts=3)
    steps = 0
    try:
        while not exporter.step():
            steps += 1
            fleet.execute("a", Statement("INSERT INTO t(b) VALUES (zeroblob(10))"))
    finally:
        exporter.close()
    assert exporter.result is not None and exporter.result.restarts == 0
    assert steps > 10
    assert _rows(tmp_path / "a.db") == 2000 + steps


def test_a_closed_connection_restarts_the_copy_and_restarts_are_bounded(fleet: Fleet, tmp_path: Path) -> None:
    _fill(fleet, "a", 2000)
    exporter = Exporter(fleet, "a", tmp_path / "a.db", step_pages=8, max_restarts=2)
    try:
        for _ in range(3):  # the connection goes away after every step: two restarts
            assert not exporter.step()
            fleet.pool.discard("a")
        assert exporter.step()  # past max_restarts: the rest in one step
    finally:
        exporter.close()
    assert exporter.result is not None and exporter.result.restarts == 3
    assert _rows(tmp_path / "a.db") == 2000
