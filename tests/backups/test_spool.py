"""backups.spool over real tenant files: a snapshot copy made with the backup API is the database
byte for byte (what `serialize` gives, without holding it in memory), the live file keeps its
locks, and copies stay in memory only within the spool's budget."""

from __future__ import annotations

import gc
from pathlib import Path

import apsw
import pytest

from backups.spool import Spool
from tests.support.shipper import open_tenant


def written_tenant(path: Path, page_size: int = 4096) -> apsw.Connection:
    """A tenant connection whose last commits are still only in its WAL."""
    conn = apsw.Connection(str(path))
    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    conn.execute(f"PRAGMA page_size={page_size}").fetchall()
    conn.close()
    conn = open_tenant(path)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); CREATE INDEX t_v ON t(v)")
    conn.execute(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200) "
        "INSERT INTO t(v) SELECT randomblob(3000) FROM c"
    )
    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    conn.execute("DELETE FROM t WHERE id % 3 = 0; CREATE TABLE u(x); ALTER TABLE u ADD COLUMN y")
    conn.execute("INSERT INTO t(v) VALUES (randomblob(50000))")
    return conn


@pytest.mark.parametrize(("page_size", "budget"), [(4096, 64 << 20), (8192, 1), (65536, 1)])
def test_a_database_copy_is_the_database_byte_for_byte(tmp_path: Path, page_size: int, budget: int) -> None:
    conn = written_tenant(tmp_path / "t.db", page_size)
    try:
        spool = Spool(tmp_path / "spool", budget)
        with spool.copy_database(conn) as image:
            copied = b"".join(image.pieces())
            assert image.in_memory == (budget > 1)
        assert copied == conn.serialize("main")
        assert list(spool.directory.iterdir()) == []  # the named copy is gone
    finally:
        conn.close()


def test_copying_a_live_tenant_keeps_its_locks(tmp_path: Path) -> None:
    """DESIGN 9: closing any descriptor of the file would drop SQLite's POSIX locks on it."""
    path = tmp_path / "t.db"
    conn = written_tenant(path)
    try:
        Spool(tmp_path / "spool", 1).copy_database(conn).close()
        conn.execute("INSERT INTO t(v) VALUES (1)")  # still ours, still in exclusive mode
        other = apsw.Connection(str(path))
        try:
            other.set_busy_timeout(0)
            with pytest.raises(apsw.BusyError):
                other.execute("SELECT count(*) FROM t").fetchall()
        finally:
            other.close()
    finally:
        conn.close()


def test_copies_stay_in_memory_only_within_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = written_tenant(path)
    conn.close()
    size = path.stat().st_size
    spool = Spool(tmp_path / "spool", size + size // 2)

    first = spool.copy_file(path)
    second = spool.copy_file(path)  # would pass the budget: a file
    assert first.in_memory and not second.in_memory
    assert b"".join(first.pieces()) == b"".join(second.pieces()) == path.read_bytes()

    first.close()
    third = spool.copy_file(path)
    assert third.in_memory  # the closed copy gave its share back
    del third
    gc.collect()  # not closed, only dropped: the same
    assert spool.copy_file(path).in_memory
    second.close()


def test_clear_removes_what_a_crash_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1)
    spool.directory.mkdir()
    (spool.directory / "copy-123.db").write_bytes(b"half a copy")
    (spool.directory / "copy-123.db-wal").write_bytes(b"")

    spool.clear()

    assert not spool.directory.exists()
    with spool.file() as f:  # and it is usable again
        f.write(b"x")
