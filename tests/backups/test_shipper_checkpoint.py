"""backups.checkpoint over real WAL files: a WAL is checkpointed only once every frame in it is
durable in the replica, never while its tenant is busy or closed; snapshots come due by bytes
shipped or by age; at shutdown only fully shipped WALs are truncated."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backups import wal
from backups.catalog import Position
from backups.checkpoint import Policy
from backups.ledger import TenantLog
from backups.segment import SNAPSHOT
from tests.support.shipper import Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path, checkpoint_frames=4)
    yield rig
    rig.shutdown()


def wal_frames(rig: Rig, tenant: str) -> int:
    return len(wal.scan(rig.wal(tenant))[1])


def snapshots(rig: Rig, tenant: str) -> list[int]:
    return [r.first_lsn for r in rig.catalog.chunks(tenant) if r.kind == SNAPSHOT]


def test_a_wal_is_checkpointed_only_when_everything_in_it_is_durable(rig: Rig) -> None:
    rig.create("acme")
    rig.insert("acme", *range(6))
    rig.replica.fail_puts = 1
    assert not rig.shipper.flush()
    assert wal_frames(rig, "acme") >= 6  # the upload failed: the WAL is the only copy

    assert rig.shipper.flush()

    assert rig.wal("acme").stat().st_size == 0
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and entry.base.salts is None and entry.base.wal_frames == 0
    assert rig.catalog.position("acme") == entry.base
    rig.insert("acme", "after")  # the next WAL continues the LSNs
    assert rig.shipper.flush()
    assert rig.restored("acme", time.time()) == [*range(6), "after"]


def test_commits_made_since_the_flush_began_are_carried_by_the_checkpoint(rig: Rig) -> None:
    """The checkpoint does not upload them (no PUT with the tenant held): it carries them, durable
    on local disk, and the next regular flush ships them."""
    rig.create("acme")
    rig.insert("acme", *range(6))
    tenants = rig.shipper.flusher.run()
    rig.insert("acme", "late")  # between the upload and the checkpoint
    puts = len(rig.replica.puts)

    rig.shipper.checkpointer.maintain(tenants)

    assert rig.wal("acme").stat().st_size == 0
    assert len(rig.replica.puts) == puts
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and entry.pending == [] and len(entry.carried) == 1
    assert entry.carried[0].path.exists()
    assert rig.restored("acme", time.time()) == list(range(6))  # not in the replica yet
    assert rig.shipper.flush()
    assert entry.carried == [] and not list((rig.layout.system_dir / "carry").iterdir())
    assert rig.restored("acme", time.time()) == [*range(6), "late"]


def test_carried_commits_wait_for_the_replica(rig: Rig) -> None:
    rig.create("acme")
    rig.insert("acme", *range(6))
    tenants = rig.shipper.flusher.run()
    rig.insert("acme", "late")
    rig.replica.fail_puts = 1

    rig.shipper.checkpointer.maintain(tenants)  # needs no replica
    assert wal_frames(rig, "acme") == 0
    assert not rig.shipper.flush()  # the replica refuses: the carried chunk waits

    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and len(entry.carried) == 1 and "acme" in rig.shipper.ledger.dirty
    assert rig.shipper.backlog_bytes("acme") == entry.carried[0].frame_bytes > 0
    assert rig.shipper.flush()
    assert rig.shipper.backlog_bytes("acme") == 0
    assert rig.restored("acme", time.time()) == [*range(6), "late"]


def test_a_busy_or_closed_tenant_is_skipped(rig: Rig) -> None:
    rig.create("busy")
    rig.create("closed")
    rig.insert("busy", *range(6))
    rig.insert("closed", *range(6))
    rig.busy.add("busy")  # a client holds its transaction open: the lease times out
    rig.conns.pop("closed").close()  # closed by the pool, log kept (frames to ship)

    assert rig.shipper.flush()

    assert wal_frames(rig, "busy") >= 6 and wal_frames(rig, "closed") >= 6
    rig.busy.clear()
    rig.insert("busy", "more")
    assert rig.shipper.flush()
    assert rig.wal("busy").stat().st_size == 0
    assert rig.restored("busy", time.time()) == [*range(6), "more"]
    assert rig.restored("closed", time.time()) == list(range(6))


def test_a_snapshot_comes_after_enough_shipped_bytes(tmp_path: Path) -> None:
    rig = Rig(tmp_path, checkpoint_frames=10_000, snapshot_bytes=8 * 4096)
    try:
        rig.create("acme")
        rig.insert("acme", 1)
        assert rig.shipper.flush()
        assert snapshots(rig, "acme") == [0]  # a few frames shipped: not due yet
        rig.conns["acme"].execute("INSERT INTO t(v) VALUES (randomblob(40000))")

        assert rig.shipper.flush()  # ships the frames, checkpoints, takes the snapshot
        entry = rig.shipper.ledger.get("acme")
        assert entry is not None and entry.snapshot is not None
        assert rig.wal("acme").stat().st_size == 0
        assert rig.shipper.flush()  # ships it

        assert snapshots(rig, "acme") == [0, entry.base.lsn] and entry.base.snapshot_lsn == entry.base.lsn
        assert entry.shipped_bytes == 0
        assert len(rig.restored("acme", time.time())) == 2
    finally:
        rig.shutdown()


def test_a_snapshot_comes_due_by_bytes_or_by_age() -> None:
    policy = Policy(checkpoint_frames=100, snapshot_bytes=1000, snapshot_interval=60.0)

    def log(shipped: int, snapshot_time: float, wal_frames: int = 1) -> TenantLog:
        base = Position("g", 5, (1, 2), wal_frames, (0, 0), 0, snapshot_time)
        return TenantLog(base, Path("x-wal"), 4096, shipped_bytes=shipped)

    now = 10_000.0
    assert not policy.snapshot_due(log(999, now - 59), now)
    assert policy.snapshot_due(log(1000, now), now)  # by bytes
    assert policy.snapshot_due(log(1, now - 60), now)  # by age, once it changed
    assert not policy.snapshot_due(log(0, now - 3600), now)  # unchanged: the old one still holds
    assert policy.checkpoint_due(log(0, now, wal_frames=100))
    assert not policy.checkpoint_due(log(0, now, wal_frames=99))


def test_shutdown_checkpoints_only_fully_shipped_wals(rig: Rig) -> None:
    rig.create("shipped")
    rig.create("unshipped")
    rig.insert("shipped", 1)
    rig.insert("unshipped", 1)
    assert rig.shipper.flush()
    rig.replica.fail_puts = 1
    rig.insert("unshipped", 2)
    assert not rig.shipper.flush()

    assert rig.shipper.checkpoint_shipped(time.monotonic() - 1) == 0  # past the deadline
    assert rig.wal("shipped").stat().st_size > 0

    assert rig.shipper.checkpoint_shipped(time.monotonic() + 30) == 1

    assert rig.wal("shipped").stat().st_size == 0
    assert wal_frames(rig, "unshipped") > 0
    position = rig.catalog.position("shipped")
    assert position is not None and position.salts is None
    # a restart finds the truncated WAL and resumes
    rig.close("shipped")
    rig.new_shipper()
    rig.open("shipped")
    entry = rig.shipper.ledger.get("shipped")
    assert entry is not None and entry.base == position and entry.snapshot is None
