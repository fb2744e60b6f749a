"""Issue 11, item 1: a tenant file changed while the server was stopped. Shipping goes on from
the catalog's position only when the file's own content proves the change never happened (the
main file as of the last checkpoint, the WAL's salts and the checksum at the shipped frame);
otherwise the tenant starts a new generation with a snapshot, and a restore of `latest` always
equals the live database, whatever was done to its files. The same holds for a file changed
behind a running server while the tenant was closed, which the server reopens from what it
remembers of the files it left (issue 14)."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from backups import continuity, restore, wal
from tests.support.app import ADMIN, in_process
from tests.support.backups import dump, query, restore_ok
from tests.support.shipper import Rig, open_tenant


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.shutdown()


def content(conn: apsw.Connection) -> dict[str, list[Any]]:
    """Every table's schema and rows."""
    tables = [str(r[0]) for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table' ORDER BY 1")]
    return {t: [tuple(r) for r in conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid')] for t in tables}


def restored_content(rig: Rig, tenant: str) -> dict[str, list[Any]]:
    plan = restore.plan(tenant, rig.catalog.chunks(tenant), time.time())
    target = rig.root / f"restored-{tenant}-{len(list(rig.root.glob('restored-*')))}.db"
    restore.materialize(plan, rig.replica.get_range, target)
    conn = apsw.Connection(str(target))
    try:
        return content(conn)
    finally:
        conn.close()


def generations(rig: Rig, tenant: str) -> set[str]:
    return {r.generation for r in rig.catalog.chunks(tenant)}


def external_write(path: Path, *sql: str) -> None:
    """What an operator does with the server stopped: Python's sqlite3 (WAL mode, as the file
    says), which checkpoints and removes its WAL on close."""
    conn = sqlite3.connect(path)
    try:
        for statement in sql:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def shipped_and_stopped(rig: Rig, tenant: str, checkpointed: bool) -> None:
    """A tenant with tables t and u and rows committed, shipped and checkpointed; unless
    `checkpointed`, more rows of t committed and shipped after that (its WAL holds them). Then a
    clean stop (its last checkpoint is the shutdown's, when `checkpointed`)."""
    conn = rig.create(tenant)
    conn.execute("CREATE TABLE u(a); INSERT INTO u VALUES ('original')")
    rig.insert(tenant, *range(5))
    assert rig.shipper.flush()
    rig.shipper.checkpoint_shipped(time.monotonic() + 30)
    assert wal.read_header(rig.wal(tenant)) is None
    if not checkpointed:
        rig.insert(tenant, *range(5, 10))
        assert rig.shipper.flush()
        assert wal.read_header(rig.wal(tenant)) is not None
    time.sleep(continuity.SETTLE_NS / 1e9)  # files this fresh at a close are not remembered
    rig.close(tenant)
    assert tenant in rig.shipper.ledger.left, "closed idle: its files remembered"


def restart_and_write(rig: Rig, tenant: str, restarted: bool = True) -> None:
    """A restarted server (or, `restarted` False, the one that closed it) opens the tenant and
    writes (a new table, rows, a 3 KB blob)."""
    if restarted:
        rig.new_shipper()
    conn = rig.open(tenant)
    rig.insert(tenant, "after")
    conn.execute("CREATE TABLE y(b)")
    conn.execute("INSERT INTO y VALUES (randomblob(3000))")
    assert rig.shipper.flush()
    assert rig.shipper.flush()  # a new generation's snapshot, if one was started


def in_another_copy(rig: Rig, tenant: str) -> Path:
    """The tenant's main file and WAL copied aside; returns the copy's main file."""
    copy = rig.root / "copy.db"
    shutil.copyfile(rig.path(tenant), copy)
    shutil.copyfile(rig.wal(tenant), f"{copy}-wal")
    return copy


EDGES = [
    "main file changed, no WAL",
    "main file changed, shipped WAL kept",
    "file replaced by another database",
    "WAL replaced by a diverging one",
    "WAL deleted",
    "WAL truncated",
]


@pytest.mark.parametrize("restarted", [True, False], ids=["restarted", "same-process"])
@pytest.mark.parametrize("edge", EDGES)
def test_a_file_changed_while_stopped_never_breaks_its_backups(rig: Rig, edge: str, restarted: bool) -> None:
    tenant = "acme"
    shipped_and_stopped(rig, tenant, checkpointed=edge.endswith("no WAL") or "replaced by another" in edge)
    before = generations(rig, tenant)
    path, wal_path = rig.path(tenant), rig.wal(tenant)
    if edge == "main file changed, no WAL":
        external_write(path, "CREATE TABLE x(a)", "INSERT INTO x VALUES (42)")
    elif edge == "main file changed, shipped WAL kept":
        # the WAL put aside while the main file is changed where the WAL does not write (u's
        # page): the live database is sound, and reads u's new row from the main file
        kept = rig.root / "kept-wal"
        shutil.move(wal_path, kept)
        external_write(path, "UPDATE u SET a = 'changed'")
        shutil.move(kept, wal_path)
    elif edge == "file replaced by another database":
        other = rig.root / "other.db"
        external_write(
            other, "PRAGMA journal_mode=WAL", "CREATE TABLE t(v)", "INSERT INTO t VALUES ('other')"
        )
        shutil.copyfile(other, path)
    elif edge == "WAL replaced by a diverging one":
        # same salts, same first frames; from the shipped frame on, other commits
        header, frames = wal.scan(wal_path)
        assert header is not None
        copy = in_another_copy(rig, tenant)
        with open(f"{copy}-wal", "r+b") as f:
            f.truncate(header.frame_offset(len(frames) - 2))
        conn = open_tenant(copy)
        conn.execute("INSERT INTO t(v) VALUES ('diverged'), ('more'), ('still more')")
        conn.close()
        diverged = wal.read_header(Path(f"{copy}-wal"))
        assert diverged is not None and (diverged.salt1, diverged.salt2) == (header.salt1, header.salt2)
        shutil.copyfile(f"{copy}-wal", wal_path)
    elif edge == "WAL deleted":
        wal_path.unlink()
    elif edge == "WAL truncated":
        header = wal.read_header(wal_path)
        assert header is not None
        with open(wal_path, "r+b") as f:
            f.truncate(header.frame_offset(2))

    restart_and_write(rig, tenant, restarted)

    assert len(generations(rig, tenant) - before) == 1, "a new generation"
    assert restored_content(rig, tenant) == content(rig.conns[tenant])


@pytest.mark.parametrize("restarted", [True, False], ids=["restarted", "same-process"])
def test_an_untouched_file_resumes_after_a_clean_stop(rig: Rig, restarted: bool) -> None:
    """No false alarm: stopped and started again (or closed and reopened) with nothing done to
    the files, the tenant goes on in the generation it had, with or without a WAL."""
    for tenant, checkpointed in (("truncated", True), ("walled", False)):
        shipped_and_stopped(rig, tenant, checkpointed)
        before = generations(rig, tenant)
        restart_and_write(rig, tenant, restarted)
        assert generations(rig, tenant) == before
        assert restored_content(rig, tenant) == content(rig.conns[tenant])


def test_the_issue_repro_through_the_app(tmp_path: Path) -> None:
    """The issue's steps: 5 rows, shipped, a clean stop; Python's sqlite3 adds a table; the
    server starts, writes, and `restore latest --as copy` equals the live tenant."""
    data = tmp_path / "data"
    settings = {"replica_url": str(tmp_path / "replica"), "backup_flush_interval": 3600.0}
    with in_process(data, **settings) as app:
        app.create("acme")
        query(app.client, "acme", "CREATE TABLE t(v)")
        for i in range(5):
            query(app.client, "acme", "INSERT INTO t VALUES (?)", [i])
        assert app.server.backups is not None
        app.server.backups.flush()
        path = app.server.fleet.layout.tenant_path("acme")
    external_write(path, "CREATE TABLE x(a)", "INSERT INTO x VALUES (42)")
    with in_process(data, **settings) as app:
        query(app.client, "acme", "INSERT INTO t VALUES (5)")
        query(app.client, "acme", "CREATE TABLE y(b)")
        query(app.client, "acme", "INSERT INTO y VALUES (randomblob(3000))")
        restore_ok(app.client, "acme", "latest", "copy")
        assert dump(app.client, "copy") == dump(app.client, "acme")
        verified = app.client.post("/v1/admin/tenants/acme/backups/verify", headers=ADMIN)
        assert verified.status_code == 200 and verified.json()["ok"] is True, verified.text
