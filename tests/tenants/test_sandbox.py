"""One test per thing tenant SQL must not do: the exact refusal, and nothing on disk changed."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tenants.errors import NotAuthorizedSql, SqlError, SqlfleetError
from tenants.execute import Statement
from tenants.fleet import Fleet

Snapshot = dict[str, tuple[int, int]]


def snapshot(root: Path) -> Snapshot:
    """Every file under `root` with its size and mtime."""
    out: Snapshot = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(folder, name))
            out[os.path.join(folder, name)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def acme(fleet: Fleet) -> str:
    fleet.create("acme")
    fleet.execute("acme", Statement("CREATE TABLE t(x)"))
    fleet.execute("acme", Statement("INSERT INTO t VALUES (1)"))
    return "acme"


@pytest.fixture
def untouched(fleet: Fleet, tmp_path: Path) -> Iterator[None]:
    """Assert that the wrapped test leaves every file under tmp_path exactly as it found it."""
    before = snapshot(tmp_path)
    yield
    assert snapshot(tmp_path) == before


def refused(fleet: Fleet, sql: str, tenant: str = "acme", readonly: bool = False) -> NotAuthorizedSql:
    """Assert the sandbox refuses `sql` with 403 sql_not_allowed and no file in the data dir changes."""
    fleet.execute(tenant, Statement("SELECT 1"), readonly=readonly)  # opening is not the point
    before = snapshot(fleet.layout.root)
    with pytest.raises(NotAuthorizedSql) as info:
        fleet.execute(tenant, Statement(sql), readonly=readonly)
    assert info.value.status == 403 and info.value.code == "sql_not_allowed"
    assert snapshot(fleet.layout.root) == before, sql
    return info.value


def value(fleet: Fleet, sql: str, tenant: str = "acme") -> object:
    return fleet.execute(tenant, Statement(sql)).rows[0][0]


def test_attach_of_another_tenants_file(fleet: Fleet, acme: str, tmp_path: Path) -> None:
    fleet.create("other")
    fleet.execute("other", Statement("CREATE TABLE secret(x)"))
    other_file = fleet.layout.tenant_path("other")
    before = snapshot(tmp_path)
    refused(fleet, f"ATTACH DATABASE '{other_file}' AS o")
    refused(fleet, f"ATTACH '{tmp_path}/new.db' AS n")
    refused(fleet, "ATTACH ':memory:' AS m")
    assert snapshot(tmp_path) == before
    assert value(fleet, "SELECT count(*) FROM pragma_database_list WHERE name NOT IN ('main', 'temp')") == 0


def test_detach(fleet: Fleet, acme: str, untouched: None) -> None:
    refused(fleet, "DETACH DATABASE main")
    refused(fleet, "DETACH temp")


def test_vacuum_into_creates_nothing(fleet: Fleet, acme: str, tmp_path: Path) -> None:
    outside = Path(f"/tmp/sqlfleet-test-{uuid.uuid4().hex}.db")
    inside = tmp_path / "copy.db"
    before = snapshot(tmp_path)
    try:
        refused(fleet, f"VACUUM INTO '{outside}'")
        refused(fleet, f"VACUUM main INTO '{inside}'")
        assert not outside.exists() and not Path(f"{outside}-journal").exists()
        assert snapshot(tmp_path) == before
    finally:
        outside.unlink(missing_ok=True)


def test_plain_vacuum(fleet: Fleet, acme: str, untouched: None) -> None:
    refused(fleet, "VACUUM")
    refused(fleet, "VACUUM main")


def test_load_extension(fleet: Fleet, acme: str, untouched: None) -> None:
    err = refused(fleet, "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libc.so.6')")
    assert "load_extension" in err.message
    refused(fleet, "SELECT load_extension('x', 'y')")


def test_fts3_tokenizer_pointer_trick(fleet: Fleet, acme: str, untouched: None) -> None:
    refused(fleet, "SELECT fts3_tokenizer('simple')")


@pytest.mark.parametrize(
    "sql",
    [
        "PRAGMA journal_mode=DELETE",
        "PRAGMA journal_mode = off",
        "PRAGMA JOURNAL_MODE=memory",
        "PRAGMA main.journal_mode=truncate",
        'PRAGMA "journal_mode"=delete',
        "PRAGMA journal_mode('persist')",
    ],
)
def test_journal_mode_change(fleet: Fleet, acme: str, untouched: None, sql: str) -> None:
    refused(fleet, sql)
    assert value(fleet, "PRAGMA journal_mode") == "wal"


def test_locking_mode_change(fleet: Fleet, acme: str, untouched: None) -> None:
    refused(fleet, "PRAGMA locking_mode=NORMAL")
    refused(fleet, "PRAGMA main.locking_mode = normal")
    assert value(fleet, "PRAGMA locking_mode") == "exclusive"


def test_writable_schema(fleet: Fleet, acme: str, untouched: None) -> None:
    refused(fleet, "PRAGMA writable_schema=ON")
    refused(fleet, "PRAGMA writable_schema")
    with pytest.raises(SqlfleetError):  # DEFENSIVE keeps sqlite_schema read-only regardless
        fleet.execute("acme", Statement("UPDATE sqlite_schema SET sql = 'x'"))


@pytest.mark.parametrize("pragma", ["temp_store_directory", "data_store_directory"])
def test_directory_pragmas(fleet: Fleet, acme: str, tmp_path: Path, untouched: None, pragma: str) -> None:
    refused(fleet, f"PRAGMA {pragma} = '{tmp_path}'")
    refused(fleet, f"PRAGMA {pragma}")


def test_wal_checkpoint(fleet: Fleet, acme: str, untouched: None) -> None:
    for mode in ("", "(PASSIVE)", "(FULL)", "(RESTART)", "(TRUNCATE)"):
        refused(fleet, f"PRAGMA wal_checkpoint{mode}")


def test_mmap_size(fleet: Fleet, acme: str, untouched: None) -> None:
    refused(fleet, "PRAGMA mmap_size=268435456")


def test_cache_size_set(fleet: Fleet, acme: str, untouched: None) -> None:
    before = value(fleet, "PRAGMA cache_size")
    refused(fleet, "PRAGMA cache_size=1000000")
    refused(fleet, "PRAGMA cache_size=-1000000")
    assert value(fleet, "PRAGMA cache_size") == before


@pytest.mark.parametrize(
    "sql",
    [
        "PRAGMA temp_store=MEMORY",
        "PRAGMA synchronous=OFF",
        "PRAGMA max_page_count=99999999",
        "PRAGMA wal_autocheckpoint=1",
        "PRAGMA journal_size_limit=1",
        "PRAGMA auto_vacuum=FULL",
        "PRAGMA page_size=512",
        "PRAGMA schema_version=99",
        "PRAGMA no_such_pragma=1",
        "PRAGMA threads=4",
        "PRAGMA cell_size_check=OFF",
        "PRAGMA busy_timeout=100000",
        "PRAGMA hard_heap_limit=1",
    ],
)
def test_other_server_owned_pragmas(fleet: Fleet, acme: str, untouched: None, sql: str) -> None:
    refused(fleet, sql)


def test_query_only_cannot_be_cleared_by_tenant_sql(fleet: Fleet, acme: str, untouched: None) -> None:
    # the exact text the server itself runs to switch the lease back: never cached, so not replayable
    refused(fleet, "PRAGMA query_only=0", readonly=True)
    refused(fleet, "PRAGMA query_only=OFF", readonly=True)
    refused(fleet, "PRAGMA query_only=1")  # nor set on a read-write lease
    refused(fleet, "INSERT INTO t VALUES (2)", readonly=True)
    assert value(fleet, "SELECT count(*) FROM t") == 1


def test_foreign_keys_off(fleet: Fleet, acme: str) -> None:
    fleet.execute("acme", Statement("CREATE TABLE parent(id INTEGER PRIMARY KEY)"))
    fleet.execute("acme", Statement("CREATE TABLE child(pid REFERENCES parent(id))"))
    # allowed (the clients' migrators send it), but only for the request that sets it
    # (tests/tenants/test_session_pragmas.py): the next one enforces foreign keys again
    fleet.execute("acme", Statement("PRAGMA foreign_keys=OFF"))
    fleet.execute("acme", Statement("PRAGMA foreign_keys=0"))
    with pytest.raises(SqlError, match="FOREIGN KEY"):
        fleet.execute("acme", Statement("INSERT INTO child VALUES (42)"))
    assert value(fleet, "PRAGMA foreign_keys") == 1


def test_foreign_keys_off_via_a_trigger_body(fleet: Fleet, acme: str) -> None:
    fleet.execute("acme", Statement("CREATE TABLE parent(id INTEGER PRIMARY KEY)"))
    fleet.execute("acme", Statement("CREATE TABLE child(pid REFERENCES parent(id))"))
    # SQLite's grammar has no PRAGMA in a trigger body: refused at CREATE, nothing created
    with pytest.raises(SqlError, match="syntax error"):
        fleet.execute(
            "acme", Statement("CREATE TRIGGER tr AFTER INSERT ON t BEGIN PRAGMA foreign_keys=OFF; END")
        )
    assert value(fleet, "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'") == 0
    # the pragma table-valued function cannot set it either
    with pytest.raises(SqlError, match="too many arguments"):
        fleet.execute("acme", Statement("SELECT * FROM pragma_foreign_keys(0)"))
    # a trigger body is authorized each time it fires, with the same rules
    fleet.execute(
        "acme", Statement("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT load_extension('x'); END")
    )
    refused(fleet, "INSERT INTO t VALUES (3)")
    assert value(fleet, "SELECT count(*) FROM t") == 1
    with pytest.raises(SqlError, match="FOREIGN KEY"):
        fleet.execute("acme", Statement("INSERT INTO child VALUES (42)"))


def test_allowed_pragmas_still_work(fleet: Fleet, acme: str) -> None:
    info = fleet.execute("acme", Statement("PRAGMA table_info(t)"))
    assert info.columns[:2] == ["cid", "name"] and info.rows[0][1] == "x"
    assert fleet.execute("acme", Statement("SELECT name FROM pragma_table_info('t')")).rows == [("x",)]
    fleet.execute("acme", Statement("PRAGMA user_version = 42"))
    assert value(fleet, "PRAGMA user_version") == 42
    assert value(fleet, "PRAGMA integrity_check") == "ok"
    assert value(fleet, "PRAGMA quick_check") == "ok"
    assert value(fleet, "PRAGMA journal_mode") == "wal"  # reading a server-owned pragma is fine
    assert fleet.execute("acme", Statement("PRAGMA foreign_key_check")).rows == []
    fleet.execute("acme", Statement("PRAGMA optimize"))


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (5)",
        "UPDATE t SET x = 9",
        "DELETE FROM t",
        "CREATE TABLE u(y)",
        "DROP TABLE t",
        "CREATE INDEX tx ON t(x)",
        "PRAGMA user_version = 9",
        "REPLACE INTO t VALUES (6)",
    ],
)
def test_read_only_lease_refuses_writes_even_from_the_statement_cache(
    fleet: Fleet, acme: str, sql: str
) -> None:
    fleet.execute("acme", Statement("CREATE TABLE scratch(x)"))
    # run once read-write so the prepared statement sits in the connection's cache ...
    fleet.execute("acme", Statement(sql))
    if sql.startswith(("CREATE TABLE", "CREATE INDEX")):
        fleet.execute("acme", Statement(sql.replace("CREATE", "DROP").split("(")[0].replace(" ON t", "")))
    elif sql.startswith("DROP"):
        fleet.execute("acme", Statement("CREATE TABLE t(x)"))
    before = fleet.execute("acme", Statement("SELECT count(*), coalesce(sum(x), 0) FROM t")).rows
    schema = fleet.execute("acme", Statement("SELECT sql FROM sqlite_schema ORDER BY name")).rows
    version = value(fleet, "PRAGMA user_version")
    # ... then the same text on a read-only lease must still be refused
    err = refused(fleet, sql, readonly=True)
    assert "read-only" in err.message
    assert fleet.execute("acme", Statement("SELECT count(*), coalesce(sum(x), 0) FROM t")).rows == before
    assert fleet.execute("acme", Statement("SELECT sql FROM sqlite_schema ORDER BY name")).rows == schema
    assert value(fleet, "PRAGMA user_version") == version
    # reads are fine read-only, and the next read-write lease can write again
    assert fleet.execute("acme", Statement("SELECT count(*) FROM t"), readonly=True).rows == [before[0][:1]]
    fleet.execute("acme", Statement("INSERT INTO t VALUES (7)"))


def test_read_only_batch_refuses_writes(fleet: Fleet, acme: str) -> None:
    with pytest.raises(NotAuthorizedSql) as info:
        fleet.batch("acme", [Statement("SELECT 1"), Statement("INSERT INTO t VALUES (8)")], readonly=True)
    assert info.value.detail["index"] == 1
    assert value(fleet, "SELECT count(*) FROM t") == 1


# -- server bookkeeping (_sqlfleet_*) ----------------------------------------------------------

RECORD = "_sqlfleet_migrations"


@pytest.fixture
def booked(fleet: Fleet, acme: str) -> str:
    """acme holding a migration record, made as the server makes it (trusted)."""
    with fleet.lease("acme") as handle:
        assert handle.conn is not None and handle.sandbox is not None
        handle.sandbox.trusted = True
        try:
            handle.conn.execute(
                f"CREATE TABLE {RECORD} (name TEXT PRIMARY KEY, checksum TEXT NOT NULL,"
                f" applied_at TEXT NOT NULL) WITHOUT ROWID; INSERT INTO {RECORD} VALUES ('0001_a', 'c', 't')"
            )
        finally:
            handle.sandbox.trusted = False
    return "acme"


def record_and_schema(fleet: Fleet) -> tuple[object, object]:
    rows = fleet.execute("acme", Statement(f"SELECT * FROM main.{RECORD}")).rows
    schema = fleet.execute("acme", Statement("SELECT type, name, sql FROM sqlite_schema ORDER BY name")).rows
    return rows, schema


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        (f"DELETE FROM {RECORD}", "not delete from it"),
        (f"UPDATE {RECORD} SET checksum = 'forged'", "not update it"),
        (f"INSERT INTO {RECORD} VALUES ('0002_b', 'c', 't')", "not insert into it"),
        (f"REPLACE INTO main.{RECORD} VALUES ('0001_a', 'forged', 't')", "not insert into it"),
        ("DELETE FROM main._SQLFLEET_MIGRATIONS", "not delete from it"),
        (f"DROP TABLE {RECORD}", "not drop it"),
        (f"ALTER TABLE {RECORD} RENAME TO old_records", "not alter or rename it"),
        (f"ALTER TABLE {RECORD} ADD COLUMN extra", "not alter or rename it"),
        (f"ALTER TABLE {RECORD} RENAME COLUMN checksum TO sum", "not alter or rename it"),
        ("ALTER TABLE t RENAME TO _sqlfleet_records", "may not rename a table to it"),
        ('ALTER TABLE main.t RENAME /* to */ TO "_SQLFLEET_x"', "may not rename a table to it"),
        ("ALTER TABLE t RENAME TO '_sqlfleet_y'", "may not rename a table to it"),
        (f"CREATE TEMP VIEW {RECORD}(name, checksum, applied_at) AS SELECT 1, 2, 3", "a TEMP view"),
        (f"CREATE TEMP TABLE {RECORD}(name, checksum, applied_at)", "a TEMP table"),
        (f"CREATE TEMP TABLE {RECORD} AS SELECT * FROM main.{RECORD}", "a TEMP table"),
        ("CREATE VIEW _sqlfleet_other AS SELECT 1", "a view"),
        ("CREATE TABLE _sqlfleet_next(x)", "a table"),
        ("CREATE TABLE _sqlfleet_new_t AS SELECT * FROM t", "a table"),  # a rebuild's scratch name
        ("CREATE VIRTUAL TABLE _sqlfleet_fts USING fts5(x)", "a virtual table"),
        (f"CREATE INDEX records_by_sum ON {RECORD}(checksum)", "not index it"),
        (f"CREATE TRIGGER tr AFTER INSERT ON {RECORD} BEGIN SELECT 1; END", "not attach a trigger to it"),
        (f"CREATE TEMP TRIGGER tr AFTER INSERT ON main.{RECORD} BEGIN SELECT 1; END", "attach a trigger"),
        ("CREATE TRIGGER _sqlfleet_tr AFTER INSERT ON t BEGIN SELECT 1; END", "a trigger"),
    ],
)
def test_bookkeeping_is_read_only_and_cannot_be_replaced_or_shadowed(
    fleet: Fleet, booked: str, sql: str, said: str
) -> None:
    before = record_and_schema(fleet)
    err = refused(fleet, sql)
    assert "_sqlfleet_" in err.message.lower() and said in err.message, err.message
    assert record_and_schema(fleet) == before
    # an unqualified read still finds the server's record: nothing shadows it
    assert fleet.execute("acme", Statement(f"SELECT name FROM {RECORD}")).rows == [("0001_a",)]


def test_bookkeeping_cannot_be_written_from_a_trigger_body(fleet: Fleet, booked: str) -> None:
    fleet.execute("acme", Statement(f"CREATE TRIGGER wipe AFTER INSERT ON t BEGIN DELETE FROM {RECORD}; END"))
    err = refused(fleet, "INSERT INTO t VALUES (2)")
    assert "not delete from it" in err.message
    assert value(fleet, f"SELECT count(*) FROM {RECORD}") == 1
    assert value(fleet, "SELECT count(*) FROM t") == 1


def test_bookkeeping_reads_and_other_schema_work_stay_allowed(fleet: Fleet, booked: str) -> None:
    assert value(fleet, f"SELECT checksum FROM {RECORD}") == "c"
    assert fleet.execute("acme", Statement(f"PRAGMA table_info({RECORD})")).rows[0][1] == "name"
    fleet.execute("acme", Statement(f"CREATE VIEW history AS SELECT name FROM {RECORD}"))
    assert value(fleet, "SELECT name FROM history") == "0001_a"
    fleet.execute("acme", Statement("ALTER TABLE t RENAME TO t2"))  # renames to other names work
    fleet.execute("acme", Statement("ALTER TABLE t2 RENAME TO t"))
    fleet.execute("acme", Statement("CREATE TEMP TABLE scratch(x)"))
    fleet.execute("acme", Statement("SELECT '_sqlfleet_' || 'x' AS rename_to"))
    assert value(fleet, "SELECT count(*) FROM t") == 1


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        ("ATTACH ':memory:' AS m", "ATTACH (and VACUUM INTO) is not allowed"),
        ("VACUUM INTO '/nonexistent/x.db'", "ATTACH (and VACUUM INTO) is not allowed"),
        ("VACUUM", "VACUUM (and ATTACH) is not allowed"),
        ("DETACH temp", "DETACH is not allowed"),
        ("PRAGMA journal_mode=DELETE", "PRAGMA journal_mode may be read, not set: the server manages it"),
        ("PRAGMA query_only=0", "PRAGMA query_only may be read, not set: a read-only token sets it"),
        ("PRAGMA writable_schema=ON", "PRAGMA writable_schema is not allowed: it would let SQL rewrite"),
        ("PRAGMA temp_store_directory='/tmp'", "PRAGMA temp_store_directory is not allowed: it names a dir"),
        ("PRAGMA wal_checkpoint", "PRAGMA wal_checkpoint is not allowed: the server checkpoints"),
        ("PRAGMA mmap_size=1", "PRAGMA mmap_size is not allowed: tenant SQL may use the pragmas that"),
        ("SELECT load_extension('x')", "load_extension() is not allowed: tenant SQL may not load native"),
        ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer() is not allowed"),
        ("DELETE FROM _sqlfleet_migrations", "_sqlfleet_migrations is server bookkeeping"),
    ],
)
def test_every_refusal_says_what_was_refused_and_why(fleet: Fleet, acme: str, sql: str, said: str) -> None:
    if "_sqlfleet_" in sql:
        with fleet.lease("acme") as handle:
            assert handle.conn is not None and handle.sandbox is not None
            handle.sandbox.trusted = True
            try:
                handle.conn.execute("CREATE TABLE _sqlfleet_migrations(name TEXT)")
            finally:
                handle.sandbox.trusted = False
    message = refused(fleet, sql).message
    assert message.startswith(f"not allowed by the sandbox: {said}"), message
    assert "not authorized" not in message, message
