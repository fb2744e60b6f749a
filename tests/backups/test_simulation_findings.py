"""Bugs the fault simulation (test_simulation.py) found, each as the plain test that failed
before its fix: the seed that found it, what went wrong, and the smallest run showing it."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backups.commit_times import CommitTimes
from tenants.errors import DataDirLocked
from tenants.layout import DataDirLock, Layout
from tests.support.shipper import Rig


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
