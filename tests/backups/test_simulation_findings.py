"""Bugs the fault simulation (test_simulation.py) found, each as the plain test that failed
before its fix: the seed that found it, what went wrong, and the smallest run showing it."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from backups import restore, wal
from backups.commit_times import CommitTimes
from backups.ledger import TenantLog
from backups.local_replica import LocalReplica
from backups.segment import FRAMES
from ops.settings import Settings
from tenants.errors import DataDirLocked, SqlfleetError
from tenants.execute import Statement
from tenants.fleet import Fleet
from tenants.layout import DataDirLock, Layout
from tests.support.shipper import Rig, open_tenant
from tests.support.sim.clock import SimClock
from tests.support.sim.disk import SimDisk, SimFile
from tests.support.sim.process import SimProcess


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.shutdown()


def crash_and_restart(rig: Rig, tenant: str) -> None:
    """kill -9 and a new start: the connection goes without a flush or a checkpoint (its WAL and
    the commit-times journal stay), then a new shipper opens the tenant again."""
    rig.conns.pop(tenant).close()
    rig.shipper.close()
    rig.new_shipper()
    rig.open(tenant)


def test_commits_after_a_checkpoint_keep_their_times_across_a_crash(rig: Rig) -> None:
    """Seed 1: a checkpoint leaves the shipped position without a WAL (salts None); the commits
    after it began a new WAL, and the process died before the next flush. At the restart
    continuity saw "a WAL where the position has none" and began a new generation: the commits
    lost their times (a restore to a moment between them and the restart missed them)."""
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None
    rig.shipper.checkpointer.checkpoint("acme", entry, snapshot=False)
    position = rig.catalog.position("acme")
    assert position is not None and position.salts is None
    rig.insert("acme", 2, 3)
    times = [t for _, t in entry.pending]
    time.sleep(0.01)

    crash_and_restart(rig, "acme")
    assert rig.shipper.flush()

    assert len({r.generation for r in rig.catalog.chunks("acme")}) == 1
    assert rig.restored("acme", times[0]) == [1, 2]
    assert rig.restored("acme", times[1]) == [1, 2, 3]


def test_a_full_disk_does_not_stop_a_start_nor_keep_the_data_dir_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 20: the data disk was full when the server restarted. Taking the data-dir lock
    wrote the pid into LOCK, which failed (ENOSPC) after the flock was taken: the start failed,
    and the descriptor holding the lock was never closed, so every later start in that process
    found the data dir "in use by another sqlfleet process"."""
    layout = Layout(tmp_path / "data")
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") == str(layout.lock_path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    lock = DataDirLock(layout)
    lock.acquire()  # the pid is informational: the lock is what counts
    assert lock.held
    with pytest.raises(DataDirLocked):
        DataDirLock(layout).acquire()
    lock.release()
    again = DataDirLock(layout)
    again.acquire()
    again.release()


def test_a_tenant_created_just_before_a_crash_keeps_its_history(rig: Rig) -> None:
    """Seeds 9, 15, 18 (tenants made by create, or by a restore as a new tenant): a generation's
    first snapshot waited in memory for the next flush, and its position was saved only once it
    shipped. The process died before that flush: at the restart the tenant had no position, so
    its first open began another generation, and a restore to any moment from its creation to
    that open found nothing, though its creation and commits had been acknowledged."""
    rig.create("acme")
    created = time.time()
    rig.insert("acme", 1)
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None
    committed = entry.pending[-1][1]
    time.sleep(0.01)

    crash_and_restart(rig, "acme")
    assert rig.shipper.flush()

    assert len({r.generation for r in rig.catalog.chunks("acme")}) == 1
    assert rig.restored("acme", created) == []
    assert rig.restored("acme", committed) == [1]


def test_commit_times_outlive_a_journal_rotation_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 51: a flush on a full disk could not start the next commit-times file and went on
    writing to /dev/null; once the disk had room again, every commit until the next flush lost
    its time in a crash (it got the WAL's mtime: a restore to its moment missed it)."""
    times = CommitTimes(tmp_path)
    times.note("acme", (1, 2), 3, 10.0)
    real_open = os.open

    def full(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".log"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", full)
    mark = times.rotate()  # no room for the next file
    monkeypatch.setattr(os, "open", real_open)
    times.note("acme", (1, 2), 5, 20.0)  # the disk has room again
    times.prune(mark)  # the flush that cut at `mark` succeeded
    times.close()

    after_crash = CommitTimes(tmp_path)
    try:
        assert after_crash.recovered("acme") == {(1, 2, 3): 10.0, (1, 2, 5): 20.0}
    finally:
        after_crash.close()


def test_commit_times_are_kept_when_the_journal_could_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 16: the server started on a full disk and could not make its commit-times file; it
    wrote to /dev/null until the next flush, so the commits made once the disk had room again
    lost their times in a crash before that flush."""
    real_open = os.open

    def full(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".log"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", full)
    times = CommitTimes(tmp_path)  # a start on a full disk
    times.note("acme", (1, 2), 3, 10.0)  # still full: this one is lost
    monkeypatch.setattr(os, "open", real_open)
    times.note("acme", (1, 2), 5, 20.0)  # the disk has room again
    times.close()

    after_crash = CommitTimes(tmp_path)
    try:
        assert after_crash.recovered("acme") == {(1, 2, 5): 20.0}
    finally:
        after_crash.close()


def test_a_commit_whose_time_was_lost_keeps_its_stand_in_across_restarts(rig: Rig) -> None:
    """Seed 8: a power loss took a commit's time from the journal, so the restart stamped it
    with the WAL's mtime, but only in memory: the next restart before a flush stamped it with
    the WAL's mtime by then, later (other commits had written the WAL since), so a restore to a
    moment between the two missed it."""
    rig.create("acme")
    assert rig.shipper.flush()
    rig.insert("acme", 1)
    rig.conns.pop("acme").close()
    rig.shipper.close()
    for journal in (rig.layout.system_dir / "commit-times").iterdir():
        journal.unlink()  # what a power loss may do: the journal is never fsync'd
    stand_in = rig.wal("acme").stat().st_mtime
    rig.new_shipper()
    rig.open("acme")
    time.sleep(0.01)
    rig.insert("acme", 2)  # the WAL's mtime moves on
    rig.replica.fail_puts = 1
    assert not rig.shipper.flush()

    crash_and_restart(rig, "acme")
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None and entry.pending[0][1] == stand_in
    assert rig.shipper.flush()
    assert rig.restored("acme", stand_in) == [1]


def test_a_restart_finds_unshipped_commits_the_journal_lost(tmp_path: Path) -> None:
    """Seed 67: a power loss took the commit-times journal's tail, which named the tenants with
    commits past their shipped position; the restart opened only the tenants the journal named,
    so this one's acknowledged commits waited in its WAL, unshipped by every later flush that
    said "all shipped", until something opened it (never, for an idle tenant)."""
    settings = Settings.load(environ={}, data_dir=tmp_path / "data")
    replica = LocalReplica(tmp_path / "replica")
    server = SimProcess(settings.data_dir, settings, replica, None)
    server.fleet.create("acme")
    server.fleet.execute("acme", Statement("CREATE TABLE t(v)"))
    assert server.shipper.flush()
    server.fleet.execute("acme", Statement("INSERT INTO t VALUES (1)"))
    server.abandon()  # kill -9: no flush, no checkpoint
    for journal in (settings.data_dir / "system" / "commit-times").iterdir():
        journal.unlink()  # what a power loss may do: the journal is never fsync'd

    server = SimProcess(settings.data_dir, settings, replica, None)
    try:
        assert server.shipper.flush()  # nobody touched the tenant since the start
        shipped = [c for r in server.shipper.catalog.chunks("acme") if r.kind == FRAMES for c in r.commits]
        assert len(shipped) == 2
    finally:
        server.stop()


def test_a_server_starts_and_stops_on_a_full_disk(tmp_path: Path) -> None:
    """Seed 41: with the data disk full, a tenant to recover at the start (commits left in its
    WAL) could not be opened (its new generation needed room), and the error, not a
    SqlfleetError, stopped the start."""
    clock = SimClock()
    disk = SimDisk(tmp_path, random.Random(0), clock, track_power=False)
    settings = Settings.load(environ={}, data_dir=tmp_path / "data")
    replica = LocalReplica(tmp_path / "replica")
    with clock.installed(), disk.installed():
        server = SimProcess(settings.data_dir, settings, replica, None)
        server.fleet.create("acme")
        server.fleet.execute("acme", Statement("CREATE TABLE t(v)"))
        assert server.shipper.flush()
        server.fleet.execute("acme", Statement("INSERT INTO t VALUES (1)"))
        server.abandon()  # kill -9: the commit waits in the WAL
        clock.advance(1.0)
        os.utime(server.fleet.layout.tenant_path("acme"))  # its continuity needs a new generation

        disk.faults.full = True
        server = SimProcess(settings.data_dir, settings, replica, None)
        server.stop()
        disk.faults.full = False
        server = SimProcess(settings.data_dir, settings, replica, None)
        try:
            assert server.fleet.execute("acme", Statement("SELECT v FROM t")).rows == [(1,)]
        finally:
            server.stop()


def test_closing_the_fleet_on_a_full_disk_lets_go_of_the_data_dir(tmp_path: Path) -> None:
    """Seeds 41, 120, 133: closing the tenant catalog checkpoints its WAL into the catalog file,
    which a full disk refuses; the error escaped Fleet.close before it released the data-dir
    lock, so the process kept the data dir locked (a shutdown ended in a traceback, a start
    retried in the same process found the data dir in use)."""
    clock = SimClock()
    disk = SimDisk(tmp_path, random.Random(0), clock, track_power=False)
    settings = Settings.load(environ={}, data_dir=tmp_path / "data")
    with clock.installed(), disk.installed():
        fleet = Fleet(settings.data_dir, settings.db_config(), settings.pool_config())
        for i in range(30):  # the catalog's WAL holds pages past the end of its file
            fleet.create(f"t{i}")
        disk.faults.full = True
        fleet.close()
        disk.faults.full = False
        fleet = Fleet(settings.data_dir, settings.db_config(), settings.pool_config())
        try:
            assert len(fleet.catalog.all_ids()) == 30
        finally:
            fleet.close()


def test_a_disk_error_reading_a_restored_file_is_not_a_broken_backup(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 116: reading the restored file for its integrity check hit an I/O error, and the
    restore answered backup_broken ("restored database does not open"): the backup was fine,
    the local disk failed (an operator told the backup is broken looks in the wrong place)."""
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    plan = restore.plan("acme", rig.catalog.chunks("acme"), time.time())
    disk = SimDisk(tmp_path / "restores", random.Random(0), SimClock(time.time()), track_power=False)
    connect = apsw.Connection

    def failing_once_open(*args: Any, **kwargs: Any) -> apsw.Connection:
        conn = connect(*args, **kwargs)
        disk.faults.read_eio = 1.0  # the disk fails while the check reads the file
        return conn

    monkeypatch.setattr(apsw, "Connection", failing_once_open)
    with disk.installed(), pytest.raises(apsw.IOError):
        restore.materialize(plan, rig.replica.get_range, tmp_path / "restores" / "acme.db")


def test_a_checkpoint_lets_go_of_the_frames_the_commit_hook_read_ahead(rig: Rig) -> None:
    """Seed 165 (50 steps), against a read-ahead the shipping work tried (the commit hook kept
    the frames after the shipped position in memory for the next flush): a checkpoint carried
    the pending commit and truncated the WAL but kept what was read ahead; the next commit
    restarted the WAL with as many frames as that held, so it looked current, and the flush
    shipped the old frame as the new commit's (it checks out against the old header): a restore
    to the new commit's moment missed it. Whatever caches the WAL must let go at a truncation."""
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None
    rig.shipper.checkpointer.checkpoint("acme", entry, snapshot=False)  # the WAL restarts
    rig.insert("acme", 2)  # one frame, read ahead by the commit hook
    rig.shipper.checkpointer.checkpoint("acme", entry, snapshot=True)  # carries it, truncates
    rig.insert("acme", 3)  # one frame again, in a new WAL
    committed = entry.pending[-1][1]
    assert rig.shipper.flush()

    assert rig.restored("acme", committed) == [1, 2, 3]


def test_commits_of_a_tenant_that_cannot_open_at_the_start_keep_their_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 239 (32 steps): a start opens every tenant the commit-times journal names, to find
    the commits a crash left unshipped with their times. One could not be opened (a read error),
    "its unshipped commits wait for its next open", but the start then dropped every time not
    handed over, its own too: at its next open its commits got the WAL's mtime (the last one's
    time), so a restore to a moment after the first missed it."""
    settings = Settings.load(environ={}, data_dir=tmp_path / "data")
    replica = LocalReplica(tmp_path / "replica")
    server = SimProcess(settings.data_dir, settings, replica, None)
    server.fleet.create("acme")
    server.fleet.execute("acme", Statement("CREATE TABLE t(v)"))
    assert server.shipper.flush()
    server.fleet.execute("acme", Statement("INSERT INTO t VALUES (1)"))
    entry = server.shipper.ledger.get("acme")
    assert entry is not None
    first = entry.pending[-1][1]
    time.sleep(0.01)
    server.fleet.execute("acme", Statement("INSERT INTO t VALUES (2)"))
    server.abandon()  # kill -9: both commits wait in the WAL, their times in the journal

    lease = Fleet.lease

    @contextlib.contextmanager
    def failing(fleet: Fleet, tenant_id: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
        raise SqlfleetError(f"tenant {tenant_id!r} cannot be opened: disk I/O error")
        yield

    monkeypatch.setattr(Fleet, "lease", failing)
    server = SimProcess(settings.data_dir, settings, replica, None)  # the open at the start fails
    monkeypatch.setattr(Fleet, "lease", lease)
    try:
        assert server.fleet.execute("acme", Statement("SELECT count(*) FROM t")).rows == [(2,)]
        assert server.shipper.flush()
        plan = restore.plan("acme", server.shipper.catalog.chunks("acme"), first)
        restore.materialize(plan, replica.get_range, tmp_path / "restored.db")
        conn = apsw.Connection(str(tmp_path / "restored.db"))
        try:
            assert conn.execute("SELECT v FROM t").fetchall() == [(1,)]
        finally:
            conn.close()
    finally:
        server.stop()


def test_a_checkpoint_that_truncated_the_wal_says_so_whatever_fails_after(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 2004 (50 steps): a checkpoint truncated the WAL, then reading the WAL's header to
    see whether it had failed with an I/O error: the checkpoint was "skipped", its position
    still described the truncated WAL. The next commit restarted the WAL ("salts changed
    without a checkpoint"), the tenant began a new generation, and a restore to that commit's
    moment (before the new generation's snapshot) missed it."""
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    entry = rig.shipper.ledger.get("acme")
    assert entry is not None

    def failing(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error", str(path))

    with monkeypatch.context() as patched:
        patched.setattr(wal, "read_header", failing)
        with contextlib.suppress(OSError):
            rig.shipper.checkpointer.checkpoint("acme", entry, snapshot=False)
    rig.insert("acme", 2)
    committed = entry.pending[-1][1]
    time.sleep(0.01)
    assert rig.shipper.flush()
    assert rig.shipper.flush()  # the maintenance after a flush that found the WAL broken

    assert rig.restored("acme", committed) == [1, 2]


@contextlib.contextmanager
def _truncation_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Rig, TenantLog]]:
    """A rig on a simulated disk whose tenant `acme` (one shipped row, 1) has just had a TRUNCATE
    checkpoint copy its WAL into the main file and then fail to truncate the WAL; the tenant's
    ledger entry with it."""
    disk = SimDisk(tmp_path, random.Random(0), SimClock(time.time()), track_power=False)
    truncate = SimFile.xTruncate

    def failing(self: SimFile, newsize: int) -> None:
        if self.path is not None and self.path.endswith("-wal"):
            raise apsw.IOError("simulated: truncating the WAL failed")
        truncate(self, newsize)

    with disk.installed():
        rig = Rig(tmp_path)
        try:
            rig.create("acme")
            rig.insert("acme", 1)
            assert rig.shipper.flush()
            entry = rig.shipper.ledger.get("acme")
            assert entry is not None
            with monkeypatch.context() as patched:
                patched.setattr(SimFile, "xTruncate", failing)
                with contextlib.suppress(apsw.Error):
                    rig.shipper.checkpointer.checkpoint("acme", entry, snapshot=False)
            yield rig, entry
        finally:
            rig.shutdown()


def test_a_checkpoint_whose_truncation_failed_still_restarted_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 909 (120 steps): the TRUNCATE checkpoint copied the WAL into the main file and
    restarted the WAL (new salts in SQLite's WAL index), then truncating the file failed with an
    I/O error. The checkpoint counted as not done, so the position still described the old WAL;
    the next commit wrote the restarted WAL ("salts changed without a checkpoint"), the tenant
    began a new generation, and a restore to that commit's moment missed it."""
    with _truncation_failed(tmp_path, monkeypatch) as (rig, entry):
        rig.insert("acme", 2)
        committed = entry.pending[-1][1]
        time.sleep(0.01)
        assert rig.shipper.flush()
        assert rig.shipper.flush()  # the maintenance after a flush that found the WAL broken
        assert rig.restored("acme", committed) == [1, 2]


def test_a_commit_refused_at_its_wal_sync_but_found_at_reopen_is_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 2548 (50 steps): syncing the WAL failed at a commit, so its client was told it
    failed and no wal hook reported it, yet its frames were on disk, whole; the tenant was
    reopened (kept log: it had pending commits), SQLite's recovery counted the commit, and the
    live database held it while no flush ever shipped it (a checkpoint would then have moved it
    into the main file for good). A restore to after the reopen lacked it."""
    disk = SimDisk(tmp_path, random.Random(0), SimClock(time.time()), track_power=False)
    sync = SimFile.xSync

    def failing(self: SimFile, flags: int) -> None:
        if self.path is not None and self.path.endswith("-wal"):
            raise apsw.IOError("simulated: syncing the WAL failed")
        sync(self, flags)

    with disk.installed():
        rig = Rig(tmp_path)
        try:
            rig.create("acme")
            rig.insert("acme", 1)
            assert rig.shipper.flush()
            rig.insert("acme", 2)  # pending: the log is kept across the reopen
            with monkeypatch.context() as patched:
                patched.setattr(SimFile, "xSync", failing)
                with pytest.raises(apsw.IOError):
                    rig.insert("acme", 3)
            rig.conns.pop("acme").close()  # the pool drops a handle that failed so
            rig.open("acme")
            assert rig.live("acme") == [1, 2, 3]  # recovery found it committed
            time.sleep(0.01)
            assert rig.shipper.flush()
            assert rig.restored("acme", time.time()) == [1, 2, 3]
        finally:
            rig.shutdown()


def test_a_wal_restarted_after_a_failed_checkpoint_continues_across_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 909 again, with a crash: the checkpoint copied the WAL and failed to truncate it, the
    next commit restarted the WAL (salt-1 + 1), and the process died before a flush. The restart
    found "the WAL has other salts" and began a new generation: that commit lost its moment
    (a restore to it returned the state before it). The main file is still the one recorded
    after the checkpoint, so the restarted WAL provably continues the position."""
    with _truncation_failed(tmp_path, monkeypatch) as (rig, entry):
        generation = rig.catalog.position("acme")
        assert generation is not None
        rig.insert("acme", 2)
        committed = entry.pending[-1][1]
        header = wal.read_header(rig.wal("acme"))
        assert header is not None and generation.salts is not None
        assert header.salt1 == generation.salts[0] + 1  # SQLite restarted the WAL
        crash_and_restart(rig, "acme")
        time.sleep(0.01)
        assert rig.shipper.flush()
        position = rig.catalog.position("acme")
        assert position is not None and position.generation == generation.generation
        assert rig.restored("acme", committed) == [1, 2]


def test_a_wal_with_the_next_salt_is_not_taken_on_trust_when_the_main_file_changed(rig: Rig) -> None:
    """The restarted-WAL rule rests on the main file: a WAL whose salt-1 follows the position's
    but behind which the main file changed (another program checkpointed and wrote) starts a
    new generation."""
    rig.create("acme")
    rig.insert("acme", 1)
    assert rig.shipper.flush()
    before = rig.catalog.position("acme")
    assert before is not None
    rig.conns.pop("acme").close()
    rig.shipper.close()
    conn = open_tenant(rig.path("acme"))  # another program, which commits unseen
    conn.execute("INSERT INTO t(v) VALUES (98)")
    conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)  # copies the WAL: the next commit restarts it
    conn.execute("INSERT INTO t(v) VALUES (99)")
    conn.close()
    header = wal.read_header(rig.wal("acme"))
    assert header is not None and before.salts is not None
    assert header.salt1 == before.salts[0] + 1
    rig.new_shipper()
    rig.open("acme")
    rig.insert("acme", 2)
    assert rig.shipper.flush()
    after = rig.catalog.position("acme")
    assert after is not None and after.generation != before.generation
    assert rig.restored("acme", time.time()) == [1, 98, 99, 2]
