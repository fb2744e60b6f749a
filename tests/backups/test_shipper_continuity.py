"""backups.continuity over real WAL files: a reopened tenant resumes the shipped position only when
the WAL provably continues it (same salts, same checksum at the last shipped frame); otherwise it
starts a new generation with a snapshot, and no commit is lost either way."""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from backups import continuity, wal
from backups.carry import Carried
from backups.catalog import Position
from backups.continuity import db_page_size, main_file_of, new_generation_id, page_size_of, resumed_log
from backups.ledger import TenantLog
from backups.segment import SNAPSHOT
from tests.support.shipper import Rig, open_tenant


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.shutdown()


def first_snapshot(entry: TenantLog) -> Carried | None:
    """The snapshot a new generation starts with, waiting (durable) for the next flush."""
    return next((c for c in entry.carried if c.kind == SNAPSHOT and c.first_lsn == 0), None)


def generations(rig: Rig, tenant: str) -> list[str]:
    return sorted({r.generation for r in rig.catalog.chunks(tenant)})


def shipped_then_closed(rig: Rig, tenant: str, *values: object) -> Position:
    """A tenant with `values` committed and shipped, then closed (its WAL stays on disk)."""
    rig.create(tenant)
    rig.insert(tenant, *values)
    assert rig.shipper.flush()
    rig.close(tenant)
    position = rig.catalog.position(tenant)
    assert position is not None and position.salts is not None
    return position


def test_a_reopened_tenant_resumes_when_salts_and_checksum_match(rig: Rig) -> None:
    position = shipped_then_closed(rig, "acme", 1, 2)
    rig.new_shipper()  # a restarted server: nothing in memory, the catalog and the WAL on disk

    rig.open("acme")
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and entry.base == position
    assert entry.pending == [] and entry.snapshot is None and not entry.broken

    rig.insert("acme", 3)
    assert rig.shipper.flush()
    assert generations(rig, "acme") == [position.generation]
    assert rig.restored("acme", time.time()) == [1, 2, 3]


def test_commits_after_the_shipped_position_are_recovered_with_their_times(rig: Rig) -> None:
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    shipped = rig.catalog.position("acme")
    assert shipped is not None
    rig.insert("acme", 2, 3)  # committed, never shipped: the process dies here
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None
    committed = [t for _, t in entry.pending]
    rig.conns.pop("acme").close()
    _, frames = wal.scan(rig.wal("acme"))
    rig.new_shipper()

    rig.open("acme")
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and entry.base == shipped
    commits = [f.index + 1 for f in frames if f.commit_size]
    assert entry.pending == list(zip(commits[-2:], committed, strict=True))  # the commit-times journal's
    assert "acme" in rig.shipper.ledger.dirty

    assert rig.shipper.flush()
    assert rig.restored("acme", time.time()) == [1, 2, 3]
    assert generations(rig, "acme") == [shipped.generation]


def test_without_the_commit_times_journal_recovered_commits_get_the_wal_mtime(rig: Rig) -> None:
    """A power loss may take the journal's tail: then the WAL's mtime is the best time known."""
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    rig.insert("acme", 2, 3)
    rig.conns.pop("acme").close()
    _, frames = wal.scan(rig.wal("acme"))
    mtime = rig.wal("acme").stat().st_mtime
    for journal in (rig.layout.system_dir / "commit-times").iterdir():
        journal.write_bytes(b"")
    rig.new_shipper()

    rig.open("acme")
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None
    commits = [f.index + 1 for f in frames if f.commit_size]
    assert entry.pending == [(n, mtime) for n in commits[-2:]]
    assert rig.shipper.flush()
    assert rig.restored("acme", time.time()) == [1, 2, 3]


def test_a_wal_with_other_salts_starts_a_new_generation(rig: Rig) -> None:
    position = shipped_then_closed(rig, "acme", 1, 2)
    # behind the server's back: checkpointed and written again, so the WAL restarted (new salts)
    conn = open_tenant(rig.path("acme"))
    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    conn.execute("INSERT INTO t(v) VALUES ('behind')")
    conn.close()
    header = wal.read_header(rig.wal("acme"))
    assert header is not None and (header.salt1, header.salt2) != position.salts
    rig.new_shipper()

    rig.open("acme")
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and first_snapshot(entry) is not None
    assert entry.base.generation != position.generation and entry.base.lsn == 0

    rig.insert("acme", 3)
    assert rig.shipper.flush()
    assert len(generations(rig, "acme")) == 2
    assert rig.restored("acme", time.time()) == [1, 2, "behind", 3]


def test_a_wal_with_another_checksum_at_the_shipped_frame_starts_a_new_generation(rig: Rig) -> None:
    position = shipped_then_closed(rig, "acme", 1, 2)
    # same salts, but the last shipped frame no longer carries the checksum recorded for it
    header = wal.read_header(rig.wal("acme"))
    assert header is not None
    with open(rig.wal("acme"), "r+b") as f:
        f.seek(header.frame_offset(position.wal_frames - 1) + 16)
        f.write(struct.pack(">I", position.seed[0] ^ 1))
    rig.new_shipper()

    rig.open("acme")
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and first_snapshot(entry) is not None
    assert entry.base.generation != position.generation


def test_resumed_log_checks_salts_and_the_seed_at_the_shipped_frame(rig: Rig) -> None:
    position = shipped_then_closed(rig, "acme", 1, 2)
    conn = open_tenant(rig.path("acme"))
    try:
        path = rig.wal("acme")
        resumed = resumed_log(position, path, conn)
        assert resumed is not None and resumed.base == position and resumed.pending == []
        wrong_seed = dataclasses.replace(position, seed=(position.seed[0] ^ 1, position.seed[1]))
        earlier_frame = dataclasses.replace(position, wal_frames=position.wal_frames - 1)
        assert position.salts is not None
        other_salts = dataclasses.replace(position, salts=(position.salts[0] + 1, position.salts[1]))
        beyond = dataclasses.replace(position, wal_frames=position.wal_frames + 5)
        for stale in (wrong_seed, earlier_frame, other_salts, beyond):
            assert resumed_log(stale, path, conn) is None, stale
        assert resumed_log(None, path, conn) is None  # never shipped: nothing to continue
    finally:
        conn.close()


def test_a_checkpointed_position_resumes_with_no_wal_or_one_begun_after_it(rig: Rig) -> None:
    position = shipped_then_closed(rig, "acme", 1)
    conn = open_tenant(rig.path("acme"))
    try:
        checkpointed = dataclasses.replace(
            position, salts=None, wal_frames=0, seed=(0, 0), retired=position.salts
        )
        # the WAL the checkpoint truncated, back (a power loss may undo the truncation)
        assert resumed_log(checkpointed, rig.wal("acme"), conn) is None
        conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
        assert wal.read_header(rig.wal("acme")) is None
        # the checkpoint wrote the main file: the position must say so (the shipper's checkpoint
        # records it), else nothing proves the file is the one the position describes
        assert resumed_log(checkpointed, rig.wal("acme"), conn) is None
        checkpointed = dataclasses.replace(checkpointed, main=main_file_of(conn))
        resumed = resumed_log(checkpointed, rig.wal("acme"), conn)
        assert resumed is not None and resumed.base == checkpointed
        assert resumed.page_size == db_page_size(conn) == 4096
        # commits after the checkpoint, in a WAL begun after it: they follow that main file
        conn.execute("INSERT INTO t(v) VALUES (2)")
        header = wal.read_header(rig.wal("acme"))
        assert header is not None and (header.salt1, header.salt2) != position.salts
        resumed = resumed_log(checkpointed, rig.wal("acme"), conn, {(header.salt1, header.salt2, 1): 42.0})
        assert resumed is not None and resumed.base == checkpointed and resumed.pending == [(1, 42.0)]
    finally:
        conn.close()


def test_a_new_tenant_starts_a_generation_with_its_file_as_snapshot(rig: Rig) -> None:
    rig.create("acme")
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None
    snapshot = first_snapshot(entry)  # durable on local disk until the next flush ships it
    assert snapshot is not None and snapshot.path.exists()
    assert entry.base.lsn == 0 and entry.base.salts is None
    assert rig.catalog.position("acme") == entry.base  # saved at once: a crash keeps the generation
    image = b"".join(snapshot.body())
    assert image == rig.path("acme").read_bytes()[: len(image)]
    assert page_size_of(image) == entry.page_size == 4096


def test_a_first_open_without_a_position_starts_a_generation(rig: Rig) -> None:
    """A tenant file the shipper never saw (backups turned on later): its current state is
    the snapshot, at the WAL's current end."""
    path = rig.path("old")
    path.parent.mkdir(parents=True)
    conn = open_tenant(path)
    conn.execute("CREATE TABLE t(v); INSERT INTO t VALUES ('before')")
    conn.close()

    rig.open("old")
    entry = rig.shipper.ledger.get("old")
    assert entry is not None and first_snapshot(entry) is not None
    header, frames = wal.scan(rig.wal("old"))
    assert header is not None
    assert entry.base.salts == (header.salt1, header.salt2)
    assert entry.base.wal_frames == len(frames) and entry.base.seed == frames[-1].checksum

    rig.insert("old", "after")
    assert rig.shipper.flush()
    assert rig.restored("old", time.time()) == ["before", "after"]


def test_restart_of_a_broken_tenant(rig: Rig) -> None:
    """Open: a new generation now. Closed: its log goes, so the next open decides."""
    rig.create("open")
    rig.create("closed")
    assert rig.shipper.flush()
    continuity, ledger = rig.shipper.continuity, rig.shipper.ledger
    entry = ledger.get("open")
    assert entry is not None
    entry.broken = True
    continuity.restart("open", entry, rig.conns["open"])
    restarted = ledger.get("open")
    assert restarted is not None and restarted is not entry and first_snapshot(restarted) is not None
    assert restarted.base.generation != entry.base.generation

    closed = ledger.get("closed")
    assert closed is not None
    closed.broken = True
    continuity.restart("closed", closed, None)
    assert ledger.get("closed") is None


def test_generation_ids_sort_by_creation_time() -> None:
    first = new_generation_id()
    time.sleep(0.002)
    second = new_generation_id()
    assert first < second and len(first) == len(second) == 21


def settled_then_closed(rig: Rig, tenant: str) -> None:
    """Close the tenant once its files are old enough for the close to remember them."""
    time.sleep(continuity.SETTLE_NS / 1e9)
    rig.close(tenant)


def no_file_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("read a file the close remembered")

    monkeypatch.setattr(continuity, "_resume", fail)
    monkeypatch.setattr(continuity, "main_file_of", fail)


@pytest.mark.parametrize("checkpointed", [False, True], ids=["shipped-wal", "checkpointed"])
def test_a_tenant_closed_idle_reopens_without_reading_its_files(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, checkpointed: bool
) -> None:
    rig.create("acme")
    rig.insert("acme", 1, 2)
    assert rig.shipper.flush()
    if checkpointed:
        assert rig.shipper.checkpoint_shipped(time.monotonic() + 30) == 1
    position = rig.catalog.position("acme")
    assert position is not None and (position.salts is None) == checkpointed
    settled_then_closed(rig, "acme")
    no_file_reads(monkeypatch)

    rig.open("acme")
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and entry.base == position and entry.idle and entry.page_size == 4096
    assert "acme" not in rig.shipper.ledger.left  # used once: the next close decides again

    rig.insert("acme", 3)
    assert rig.shipper.flush()
    assert generations(rig, "acme") == [position.generation]
    assert rig.restored("acme", time.time()) == [1, 2, 3]


def test_a_close_remembers_only_files_that_are_exactly_the_shipped_position(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.create("acme")
    rig.insert("acme", 1, 2)
    assert rig.shipper.flush()
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and entry.base.salts is not None
    monkeypatch.setattr(continuity, "SETTLE_NS", 3600 * 10**9)  # "written a moment ago"
    assert continuity._leaving(entry) is None, "a write after the close could keep the mtime"
    monkeypatch.setattr(continuity, "SETTLE_NS", 0)
    assert continuity._leaving(entry) is not None
    # frames on disk past the position (a commit whose WAL sync failed is on disk, unreported)
    behind = dataclasses.replace(entry.base, wal_frames=entry.base.wal_frames - 1)
    assert continuity._leaving(TenantLog(behind, entry.wal_path, entry.page_size)) is None
    # at the reopen: a main file written since the position recorded it, or another position
    left = continuity._leaving(entry)
    assert left is not None and entry.base.main is not None
    assert continuity._as_left(entry.base, entry.wal_path, left) == entry.page_size
    other_main = dataclasses.replace(entry.base, main=dataclasses.replace(entry.base.main, mtime_ns=1))
    assert continuity._as_left(other_main, entry.wal_path, left) is None
    assert continuity._as_left(dataclasses.replace(entry.base, lsn=9), entry.wal_path, left) is None
    # not idle (a commit not shipped yet): the log stays, nothing to remember
    rig.insert("acme", 3)
    rig.close("acme")
    assert "acme" not in rig.shipper.ledger.left and rig.shipper.ledger.get("acme") is not None


def test_a_position_changed_while_closed_is_read_from_the_files(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the close remembered holds only for the position it left: another one in the
    catalog (a restore in place saves one) goes the whole way, through the files."""
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    settled_then_closed(rig, "acme")
    assert "acme" in rig.shipper.ledger.left
    position = rig.catalog.position("acme")
    assert position is not None
    changed = dataclasses.replace(position, snapshot_time=position.snapshot_time + 1)
    rig.catalog.save_positions({"acme": changed})
    checked: list[str] = []
    resume = continuity._resume

    def spied(position: Position | None, path: Path, conn: apsw.Connection, times: Any) -> object:
        checked.append("read the files")
        return resume(position, path, conn, times)

    monkeypatch.setattr(continuity, "_resume", spied)

    rig.open("acme")
    entry = rig.shipper.ledger.get("acme")
    assert checked and entry is not None and entry.base == changed
    settled_then_closed(rig, "acme")
    rig.shipper.forget("acme")
    assert "acme" not in rig.shipper.ledger.left
