"""What a tenant file looks like on disk, and the pragmas every tenant connection runs with."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import apsw
import pytest

from ops.settings import Settings
from tenants.connection import open_database
from tenants.execute import Statement
from tenants.fleet import Fleet
from tests.support.tenants import TEST_CONFIG, MakeFleet

SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"


def side_files(fleet: Fleet, suffix: str) -> list[Path]:
    return sorted(fleet.layout.tenants_dir.rglob(f"*{suffix}"))


def test_pragmas_of_a_tenant_connection(tmp_path: Path) -> None:
    settings = Settings.load(environ={}, synchronous="FULL", cache_size_kib=512, max_db_bytes=1 << 20)
    config = settings.db_config()
    conn, sandbox = open_database(tmp_path / "a.db", config, create=True)
    sandbox.trusted = True  # the server's own reads, past the tenant's allow-list
    try:

        def pragma(name: str) -> object:
            return conn.execute(f"PRAGMA {name}").fetchall()[0][0]

        assert pragma("journal_mode") == "wal"
        assert pragma("locking_mode") == "exclusive"
        assert pragma("synchronous") == 2
        assert pragma("foreign_keys") == 1
        assert pragma("cache_size") == -512
        assert pragma("max_page_count") == (1 << 20) // 4096
        assert pragma("wal_autocheckpoint") == 0
        assert pragma("trusted_schema") == 0
        assert conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, -1) == 1
        assert conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, -1) == 1
        assert conn.limit(apsw.SQLITE_LIMIT_ATTACHED, -1) == 0
        assert conn.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, -1) == config.max_sql_length
        assert conn.limit(apsw.SQLITE_LIMIT_LENGTH, -1) == config.max_result_bytes
        assert pragma("temp.max_page_count") == (1 << 20) // 4096
    finally:
        conn.close()


def test_an_open_connection_keeps_none_of_its_setup_statements(tmp_path: Path) -> None:
    """They run once: kept in APSW's statement cache, they would hold SQLite memory in every
    idle connection of the pool."""
    conn, _ = open_database(tmp_path / "a.db", TEST_CONFIG, create=True)
    try:
        assert conn.status(apsw.SQLITE_DBSTATUS_STMT_USED) == (0, 0)
    finally:
        conn.close()


def test_configure_sqlite_turns_the_lookaside_arena_off(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import apsw
        from pathlib import Path
        from tenants.connection import configure_sqlite, open_database
        from tests.support.tenants import TEST_CONFIG
        configure_sqlite()
        conn, _ = open_database(Path({str(tmp_path / "a.db")!r}), TEST_CONFIG, create=True)
        conn.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        print(conn.status(apsw.SQLITE_DBSTATUS_LOOKASIDE_USED), conn.execute("SELECT x FROM t").fetchall())
        conn.close()
        """
    )
    root = Path(__file__).resolve().parents[2]  # where `tests` and `tenants` import from
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(0,", "0)", "[(1,)]"]


def test_open_refuses_a_missing_file_unless_creating(tmp_path: Path) -> None:
    with pytest.raises(apsw.CantOpenError):
        open_database(tmp_path / "nope.db", TEST_CONFIG)
    assert not (tmp_path / "nope.db").exists()


def test_no_shm_file_ever_appears(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(capacity=4)
    for i in range(12):
        tenant = f"t{i}"
        fleet.create(tenant)
        fleet.execute(tenant, Statement("CREATE TABLE t(x)"))
        fleet.batch(tenant, [Statement("INSERT INTO t VALUES (?)", (n,)) for n in range(50)])
        fleet.execute(tenant, Statement("SELECT count(*) FROM t"), readonly=True)
        assert side_files(fleet, "-shm") == []  # while open (exclusive locking: WAL index in heap)
    assert side_files(fleet, "-wal")  # and WAL mode really is on
    fleet.close()
    assert side_files(fleet, "-shm") == []


def test_the_wal_survives_closing_a_connection(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    fleet.create("acme")
    fleet.execute("acme", Statement("CREATE TABLE t(x)"))
    fleet.execute("acme", Statement("INSERT INTO t VALUES (1)"))
    wal = Path(f"{fleet.layout.tenant_path('acme')}-wal")
    size = wal.stat().st_size
    assert size > 0
    fleet.pool.discard("acme")  # closes the connection: no checkpoint, the WAL stays as it was
    assert not fleet.pool.is_open("acme")
    assert wal.stat().st_size == size
    assert fleet.execute("acme", Statement("SELECT x FROM t")).rows == [(1,)]
    fleet.close()
    assert wal.stat().st_size == size  # nor at shutdown


def test_closing_a_connection_leaves_its_files_as_they_were(make_fleet: MakeFleet) -> None:
    """Not a byte, not an mtime: backups.continuity reopens a tenant from what they were then."""
    fleet = make_fleet()
    fleet.create("acme")
    fleet.execute("acme", Statement("CREATE TABLE t(x)"))
    fleet.execute("acme", Statement("INSERT INTO t VALUES (1)"))
    main = fleet.layout.tenant_path("acme")
    files = [main, Path(f"{main}-wal")]

    def identities() -> list[tuple[int, int, int]]:
        return [(s.st_size, s.st_ino, s.st_mtime_ns) for s in map(os.stat, files)]

    before = identities()
    fleet.pool.discard("acme")
    assert identities() == before
    assert fleet.execute("acme", Statement("SELECT x FROM t")).rows == [(1,)]
    assert identities() == before  # nor does opening it again
    fleet.close()


def test_a_created_tenant_starts_without_a_wal_or_temp_file(fleet: Fleet) -> None:
    fleet.create("acme")
    folder = fleet.layout.tenant_path("acme").parent
    assert sorted(p.name for p in folder.iterdir()) == ["acme.db"]
    header = fleet.layout.tenant_path("acme").read_bytes()[:20]
    assert header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"  # WAL in the header


def test_every_tenant_file_opens_in_the_sqlite3_cli(make_fleet: MakeFleet, tmp_path: Path) -> None:
    if not Path(SQLITE3).exists():
        pytest.fail(f"the sqlite3 CLI is needed at {SQLITE3}")
    fleet = make_fleet(dataclasses.replace(TEST_CONFIG, synchronous="FULL"), capacity=3)
    tenants = [f"t{i}" for i in range(8)]
    for n, tenant in enumerate(tenants):
        fleet.create(tenant)
        fleet.execute(tenant, Statement("CREATE TABLE t(x, y BLOB)"))
        for i in range(n + 1):
            fleet.execute(tenant, Statement("INSERT INTO t VALUES (?, randomblob(3000))", (i,)))
    fleet.create("empty")
    fleet.close()
    for n, tenant in enumerate([*tenants, "empty"]):
        path = fleet.layout.tenant_path(tenant)
        sql = "pragma integrity_check; select count(*) from sqlite_schema where name = 't';"
        if tenant != "empty":
            sql += " select count(*) from t;"
        out = subprocess.run([SQLITE3, str(path), sql], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.split()
        assert lines[0] == "ok", out.stdout
        if tenant != "empty":
            assert lines[1:] == ["1", str(n + 1)], (tenant, out.stdout)  # rows still in the WAL too


@pytest.mark.parametrize("synchronous,level", [("NORMAL", 1), ("FULL", 2), ("EXTRA", 3)])
def test_a_reopened_wal_file_gets_the_configured_pragmas(
    tmp_path: Path, synchronous: str, level: int
) -> None:
    """An open reads the file's page size, journal mode and synchronous level in one statement
    and sets only what differs (tenants.connection._configure): reopening a WAL file, whose
    header already says WAL, must still end with every configured value."""
    config = Settings.load(environ={}, synchronous=synchronous, max_db_bytes=1 << 20).db_config()
    path = tmp_path / "a.db"
    conn, _ = open_database(path, config, create=True)
    conn.execute("CREATE TABLE t(x)")
    conn.close()
    for _ in range(2):
        conn, sandbox = open_database(path, config)
        sandbox.trusted = True
        try:
            got = [conn.execute(f"PRAGMA {n}").fetchall()[0][0] for n in ("journal_mode", "synchronous")]
            assert got == ["wal", level]
            assert conn.execute("PRAGMA max_page_count").fetchall()[0][0] == (1 << 20) // 4096
            assert conn.execute("PRAGMA foreign_keys").fetchall()[0][0] == 1
        finally:
            conn.close()


@pytest.mark.parametrize(
    "create",
    [
        "CREATE TEMP TABLE big(x)",
        "CREATE TEMPORARY TABLE big(x)",
        "CREATE TABLE temp.big(x)",
        'CREATE TABLE "Temp".big(x)',
        "CREATE TABLE [TEMP].big(x)",
        "create table `temp`.big(x)",
    ],
)
def test_the_temp_database_is_bounded_before_a_statement_can_reach_it(tmp_path: Path, create: str) -> None:
    """The TEMP database's bounds are set by the first statement whose text can reach it (every
    spelling of it says "temp"), not at open: a TEMP table cannot outgrow max_db_bytes."""
    config = Settings.load(environ={}, max_db_bytes=64 << 10).db_config()
    conn, _ = open_database(tmp_path / "a.db", config, create=True)
    try:
        conn.execute(create)
        fill = (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 64)"
            " INSERT INTO big SELECT randomblob(4000) FROM n"
        )
        with pytest.raises(apsw.FullError):
            conn.execute(fill)
    finally:
        conn.close()


def test_temp_bounds_that_fail_stay_pending_and_the_statement_does_not_run(tmp_path: Path) -> None:
    """A failed run of the TEMP bounds (an interrupt at the deadline, say) fails the statement
    that needed them, before it runs, and leaves them for the next such statement."""
    conn, sandbox = open_database(tmp_path / "a.db", TEST_CONFIG, create=True)
    try:
        bounds = sandbox.temp_bounds
        assert bounds is not None
        sandbox.temp_bounds = bounds + "; SELECT no_such_function()"
        with pytest.raises(apsw.SQLError):
            conn.execute("CREATE TEMP TABLE t(x)")
        assert sandbox.temp_bounds is not None and not sandbox.trusted
        sandbox.temp_bounds = bounds
        conn.execute("CREATE TEMP TABLE t(x)")  # the first one never ran: no "already exists"
        assert sandbox.temp_bounds is None
    finally:
        conn.close()
